//! Messages to append: the recorded Claude Code session (the demo's), small numbered
//! messages, and the helpers that read seqs back out of stream IDs.

use std::sync::OnceLock;

use serde_json::Value;

/// The recorded Claude Code session, parsed once.
fn recorded_session() -> &'static [Value] {
    static SESSION: OnceLock<Vec<Value>> = OnceLock::new();
    SESSION.get_or_init(|| {
        agent_stream::demo::SESSION
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).expect("fixture line"))
            .collect()
    })
}

/// The recorded Claude Code session, one message per line.
pub fn session() -> Vec<Value> {
    recorded_session().to_vec()
}

/// The `n`th message of a run: a message of the recorded session (cycling), with the
/// id `<tag>-<n>` so every append of a process is distinct.
pub fn message(tag: &str, n: usize) -> Value {
    let session = recorded_session();
    let mut message = session[n % session.len()].clone();
    message["id"] = Value::from(format!("{tag}-{n}"));
    message
}

/// `n` small messages with ids `<prefix>-<i>`.
pub fn messages(prefix: &str, n: usize) -> Vec<Value> {
    (1..=n)
        .map(|i| {
            serde_json::json!({
                "id": format!("{prefix}-{i}"), "type": "AssistantMessage", "turn": i, "agent": "CLAUDE_CODE",
                "model": "claude-sonnet-4-5-20250929", "payload": { "content": [{ "text": format!("message {i}") }] }
            })
        })
        .collect()
}

/// `n` messages of about 1 KiB each (a text payload), with ids `<prefix>-<i>`: a history
/// long in bytes, for catch-ups and snapshots that stream.
pub fn kib_messages(prefix: &str, n: usize) -> Vec<Value> {
    let text = "a line of an agent's answer, ".repeat(34);
    (1..=n)
        .map(|i| serde_json::json!({ "id": format!("{prefix}-{i}"), "type": "AssistantMessage", "payload": { "text": text } }))
        .collect()
}

/// A process id no other test uses.
pub fn process_id() -> String {
    format!("p-{}", uuid::Uuid::new_v4().simple())
}

/// `42-0` → 42.
pub fn seq_of(stream_id: &str) -> Option<u64> {
    stream_id.strip_suffix("-0")?.parse().ok()
}

/// The seqs of followed messages.
pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            m["stream_id"]
                .as_str()
                .and_then(seq_of)
                .expect("a message stream ID")
        })
        .collect()
}
