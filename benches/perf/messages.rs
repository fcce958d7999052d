//! The messages the bench writes.

/// Size of every message the bench writes (its JSON as sent), in bytes.
pub const MESSAGE_BYTES: usize = 1024;

/// A message of [`MESSAGE_BYTES`] bytes of JSON with the id `<tag>-<n>`.
pub fn message(tag: &str, n: u64) -> String {
    pub const TEXT: &str = "Reading src/follow.rs to see how the follower waits on the feed. ";
    let head = format!(
        r#"{{"id":"{tag}-{n}","type":"AssistantMessage","turn":{n},"agent":"CLAUDE_CODE","model":"claude-sonnet-4-5-20250929","payload":{{"content":[{{"type":"text","text":""#
    );
    let tail = r#""}]}}"#;
    let mut out = String::with_capacity(MESSAGE_BYTES + 16);
    out.push_str(&head);
    let pad = MESSAGE_BYTES.saturating_sub(head.len() + tail.len());
    out.extend(TEXT.chars().cycle().take(pad));
    out.push_str(tail);
    out
}

/// A JSON array of `count` messages, n = first, first + 1, …
pub fn batch(tag: &str, first: u64, count: usize) -> String {
    let mut out = String::with_capacity(count * (MESSAGE_BYTES + 1) + 2);
    out.push('[');
    for i in 0..count as u64 {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&message(tag, first + i));
    }
    out.push(']');
    out
}

/// The message with `"stream_id":"<seq>-0"` added, as the server renders it.
pub fn with_stream_id(message: &str, seq: u64) -> String {
    let open = message.strip_suffix('}').unwrap_or(message);
    format!("{open},\"stream_id\":\"{seq}-0\"}}")
}

/// A small message (~110 bytes of JSON, one token of an answer) with the id `<tag>-<n>`:
/// the peer scenario's event.
pub fn small_message(tag: &str, n: u64) -> String {
    format!(
        r#"{{"id":"{tag}-{n}","type":"AssistantMessage","payload":{{"content":[{{"type":"text","text":"token {n} of the answer"}}]}}}}"#
    )
}
