//! Messages: what a writer sends ([`NewMessage`]) and what is stored and sent to readers
//! ([`StoredMessage`], the wire JSON rendered once at append time).
//!
//! The wire JSON keeps the existing API's `AgentMessage` fields first, unchanged
//! (`id`, `type`, `turn`, `agent`, `model`, `payload`), then adds the service's
//! `stream_id` and `created_at`. The payload's bytes are kept as sent, but for
//! insignificant whitespace, so that no number, key order or escape is ever rewritten.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{DomainError, StreamId};

/// A writer's message id can be any string up to this size (UUIDs are 36).
pub const MAX_MESSAGE_ID_BYTES: usize = 256;

/// Reads a JSON array of at most `max` raw values, and stops at the first one past it
/// rather than holding a huge array in memory.
struct BoundedArray<'f> {
    max: usize,
    overflowed: &'f Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BoundedArray<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedArray<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of at most {} messages", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&RawValue>()? {
            if items.len() == self.max {
                self.overflowed.set(true);
                return Err(de::Error::custom("too many messages"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// A message as a writer sends it, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The writer's id, or a generated UUID when it sent none.
    pub id: String,
    pub kind: String,
    pub turn: Option<i64>,
    pub agent: Option<String>,
    pub model: Option<String>,
    /// The payload object, as sent but without insignificant whitespace.
    pub payload: String,
}

#[derive(Deserialize)]
struct WriterMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    turn: Option<i64>,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    model: Option<String>,
    payload: Box<RawValue>,
}

impl NewMessage {
    /// Parses a request body: one message object, or a JSON array of them in order.
    /// Returns the messages and whether the body was an array.
    /// An array holds at most `max_messages`.
    pub fn parse_body(
        body: &[u8],
        max_message_bytes: usize,
        max_messages: usize,
    ) -> Result<(Vec<Self>, bool), DomainError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            let overflowed = Cell::new(false);
            let mut deserializer = serde_json::Deserializer::from_slice(body);
            let items = BoundedArray {
                max: max_messages,
                overflowed: &overflowed,
            }
            .deserialize(&mut deserializer)
            .and_then(|items| deserializer.end().map(|()| items))
            .map_err(|e| match overflowed.get() {
                true => DomainError::TooManyMessages {
                    limit: max_messages,
                },
                false => DomainError::InvalidMessage(format!(
                    "body is not a JSON array of messages: {e}"
                )),
            })?;
            if items.is_empty() {
                return Err(DomainError::InvalidMessage(
                    "the array is empty: send at least one message".into(),
                ));
            }
            let messages = items
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    Self::parse(raw.get().as_bytes(), max_message_bytes).map_err(|e| match e {
                        DomainError::InvalidMessage(why) => {
                            DomainError::InvalidMessage(format!("message {i} of the array: {why}"))
                        }
                        other => other,
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok((messages, true))
        } else {
            Ok((
                vec![Self::parse(body.trim_ascii(), max_message_bytes)?],
                false,
            ))
        }
    }

    /// Parses one message object of at most `max_bytes` bytes.
    pub fn parse(raw: &[u8], max_bytes: usize) -> Result<Self, DomainError> {
        if raw.len() > max_bytes {
            return Err(DomainError::MessageTooLarge {
                size: raw.len(),
                limit: max_bytes,
            });
        }
        let message: WriterMessage = serde_json::from_slice(raw).map_err(|e| {
            DomainError::InvalidMessage(format!(
                "{e}; a message is an object with \"type\" (string) and \"payload\" (object), and optionally \"id\", \"turn\" (integer), \"agent\" and \"model\""
            ))
        })?;
        let id = match message.id {
            None => uuid::Uuid::new_v4().to_string(),
            Some(id) if id.is_empty() || id.len() > MAX_MESSAGE_ID_BYTES || id.chars().any(char::is_control) => {
                return Err(DomainError::InvalidMessage(format!(
                    "\"id\" must be 1 to {MAX_MESSAGE_ID_BYTES} bytes without control characters (a UUID fits), or absent"
                )))
            }
            Some(id) => id,
        };
        let payload = message.payload.get();
        if !payload.starts_with('{') {
            return Err(DomainError::InvalidMessage(
                "\"payload\" must be a JSON object".into(),
            ));
        }
        Ok(Self {
            id,
            kind: message.kind,
            turn: message.turn,
            agent: message.agent,
            model: message.model,
            payload: minify_json(payload).into_owned(),
        })
    }

    /// Renders the wire JSON of this message stored at `seq`.
    pub fn render(&self, seq: u64, created_at: DateTime<Utc>) -> StoredMessage {
        let mut out = Vec::with_capacity(self.payload.len() + self.id.len() + 160);
        let push_str = |out: &mut Vec<u8>, s: &str| {
            // Serialising a &str into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        };
        out.extend_from_slice(b"{\"id\":");
        push_str(&mut out, &self.id);
        out.extend_from_slice(b",\"type\":");
        push_str(&mut out, &self.kind);
        out.extend_from_slice(b",\"turn\":");
        match self.turn {
            Some(turn) => out.extend_from_slice(turn.to_string().as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        for (field, value) in [
            (&b",\"agent\":"[..], &self.agent),
            (&b",\"model\":"[..], &self.model),
        ] {
            out.extend_from_slice(field);
            match value {
                Some(value) => push_str(&mut out, value),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(self.payload.as_bytes());
        out.extend_from_slice(
            format!(
                ",\"stream_id\":\"{}\",\"created_at\":\"",
                StreamId::message(seq)
            )
            .as_bytes(),
        );
        out.extend_from_slice(
            created_at
                .to_rfc3339_opts(SecondsFormat::Micros, true)
                .as_bytes(),
        );
        out.extend_from_slice(b"\"}");
        StoredMessage {
            seq,
            json: Bytes::from(out),
        }
    }
}

/// A stored message: its seq and its wire JSON, rendered once, shared by every reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub json: Bytes,
}

impl StoredMessage {
    pub fn stream_id(&self) -> StreamId {
        StreamId::message(self.seq)
    }
}

/// Drops JSON's insignificant whitespace (outside strings) from valid JSON, and nothing
/// else: the result is on one line, fit for NDJSON and an SSE `data:` line.
pub fn minify_json(json: &str) -> Cow<'_, str> {
    let is_space = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t');
    let bytes = json.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut out: Option<Vec<u8>> = None;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_space(b) {
            out.get_or_insert_with(|| bytes[..i].to_vec());
            continue;
        }
        if let Some(out) = out.as_mut() {
            out.push(b);
        }
    }
    match out {
        // Only ASCII bytes were dropped, so the rest is still UTF-8.
        Some(out) => String::from_utf8(out).map_or(Cow::Borrowed(json), Cow::Owned),
        None => Cow::Borrowed(json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    #[test]
    fn a_message_renders_with_the_existing_fields_first_and_the_payload_untouched() {
        let body = br#"{"id":"m1","type":"AssistantMessage","turn":7,"agent":"CLAUDE_CODE","model":"m","payload":{"z":1.50,"a":"x y","n":1e400}}"#;
        let (messages, batch) = NewMessage::parse_body(body, LIMIT, 1000).unwrap();
        assert!(!batch);
        let created = DateTime::parse_from_rfc3339("2026-11-27T10:15:03.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let stored = messages[0].render(42, created);
        assert_eq!(
            std::str::from_utf8(&stored.json).unwrap(),
            r#"{"id":"m1","type":"AssistantMessage","turn":7,"agent":"CLAUDE_CODE","model":"m","payload":{"z":1.50,"a":"x y","n":1e400},"stream_id":"42-0","created_at":"2026-11-27T10:15:03.123456Z"}"#
        );
    }

    #[test]
    fn whitespace_outside_strings_goes_and_inside_strings_stays() {
        assert_eq!(
            minify_json("{ \"a b\" :\n [1, \"x\\\" y\"]\t}"),
            "{\"a b\":[1,\"x\\\" y\"]}"
        );
        assert!(matches!(minify_json("{\"a\":1}"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_missing_id_is_generated_and_absent_fields_are_null() {
        let (messages, _) =
            NewMessage::parse_body(br#"{"type":"T","payload":{}}"#, LIMIT, 1000).unwrap();
        assert_eq!(messages[0].id.len(), 36);
        let json = messages[0].render(1, Utc::now()).json;
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["turn"], serde_json::Value::Null);
        assert_eq!(value["agent"], serde_json::Value::Null);
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        for bad in [
            &br#"{"type":"T"}"#[..],
            br#"{"payload":{}}"#,
            br#"{"type":"T","payload":[1]}"#,
            br#"{"type":"T","payload":"x"}"#,
            br#"{"type":"T","payload":{},"turn":"7"}"#,
            br#"{"type":"T","payload":{},"id":""}"#,
            br#"{"type":"T","payload":{},"id":7}"#,
            br#"[]"#,
            br#"[{"type":"T","payload":{}}, 5]"#,
            b"not json",
            b"",
        ] {
            assert!(
                matches!(
                    NewMessage::parse_body(bad, LIMIT, 1000),
                    Err(DomainError::InvalidMessage(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_message_over_the_limit_is_too_large() {
        let body = format!(r#"{{"type":"T","payload":{{"x":"{}"}}}}"#, "y".repeat(100));
        assert!(matches!(
            NewMessage::parse_body(body.as_bytes(), 50, 1000),
            Err(DomainError::MessageTooLarge { .. })
        ));
        let batch = format!("[{body}]");
        assert!(matches!(
            NewMessage::parse_body(batch.as_bytes(), 50, 1000),
            Err(DomainError::MessageTooLarge { .. })
        ));
    }

    #[test]
    fn an_array_over_the_message_count_limit_is_refused_as_such() {
        let one = r#"{"type":"T","payload":{}}"#;
        let three = format!("[{one},{one},{one}]");
        assert_eq!(
            NewMessage::parse_body(three.as_bytes(), LIMIT, 3)
                .unwrap()
                .0
                .len(),
            3
        );
        assert_eq!(
            NewMessage::parse_body(three.as_bytes(), LIMIT, 2),
            Err(DomainError::TooManyMessages { limit: 2 })
        );
        assert!(matches!(
            NewMessage::parse_body(b"[1, 2", LIMIT, 2),
            Err(DomainError::InvalidMessage(_))
        ));
    }
}
