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
use std::fmt::Write as _;
use std::io::Write as _;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ijson, DomainError, ProcessId, StreamId};

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

/// A message as a writer sends it, validated, and rendered as far as it can be before
/// it is stored: its wire JSON up to the fields the store adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The writer's id, or a generated UUID when it sent none.
    pub id: String,
    /// Its `type`.
    pub kind: String,
    /// `{"id":…,"type":…,"turn":…,"agent":…,"model":…,"payload":{…}` without the closing
    /// brace: `agent`, `model` and `payload` as sent (any JSON value for the first two:
    /// the existing worker sends `model` as an object) but for insignificant whitespace,
    /// `null` for an absent field. Made once, as the message is parsed, with room for the
    /// store's `stream_id` and `created_at`.
    head: String,
}

/// A message as the writer's JSON holds it, its fields borrowed from the body where
/// they can be.
#[derive(Deserialize)]
struct WriterMessage<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    turn: Option<i64>,
    #[serde(default, borrow)]
    agent: Option<&'a RawValue>,
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Room in a message's head for what the JSON as sent may lack (a generated id, the
/// field names, `null` for absent fields) and for the tail the store adds (`stream_id`
/// and `created_at`), so that neither reallocates it.
const HEAD_ROOM: usize = 256;

/// The existing worker's notification (`POST /webhooks/messages`), in snake or camel
/// case.
#[derive(Deserialize)]
struct Notification<'a> {
    #[serde(alias = "processId")]
    process_id: String,
    #[serde(alias = "agentMessage", borrow)]
    agent_message: &'a RawValue,
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
        let is_batch = first == Some(&b'[');
        ijson::check(body, usize::from(is_batch)).map_err(invalid)?;
        if is_batch {
            let body = utf8(body)?;
            let overflowed = Cell::new(false);
            let mut deserializer = serde_json::Deserializer::from_str(body);
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
                    let raw = raw.get();
                    // The I-JSON rules were checked on the whole array.
                    within(raw.as_bytes(), max_message_bytes)
                        .and_then(|()| Self::parse_checked(raw))
                        .map_err(|e| match e {
                            DomainError::InvalidMessage(why) => DomainError::InvalidMessage(
                                format!("message {i} of the array: {why}"),
                            ),
                            other => other,
                        })
                })
                .collect::<Result<_, _>>()?;
            Ok((messages, true))
        } else {
            let raw = body.trim_ascii();
            within(raw, max_message_bytes)?;
            Ok((vec![Self::parse_checked(utf8(raw)?)?], false))
        }
    }

    /// Parses one message object of at most `max_bytes` bytes.
    pub fn parse(raw: &[u8], max_bytes: usize) -> Result<Self, DomainError> {
        within(raw, max_bytes)?;
        ijson::check(raw, 0).map_err(invalid)?;
        Self::parse_checked(utf8(raw)?)
    }

    /// Parses one message object whose size and I-JSON rules were checked.
    fn parse_checked(raw: &str) -> Result<Self, DomainError> {
        let message: WriterMessage = serde_json::from_str(raw).map_err(|e| {
            DomainError::InvalidMessage(format!(
                "{e}; a message is an object with \"type\" (string) and \"payload\" (object), and \
                    optionally \"id\", \"turn\" (integer), \"agent\" and \"model\""
            ))
        })?;
        let id = match message.id {
            None => uuid::Uuid::new_v4().to_string(),
            Some(id)
                if id.is_empty()
                    || id.len() > MAX_MESSAGE_ID_BYTES
                    || id.chars().any(char::is_control) =>
            {
                return Err(DomainError::InvalidMessage(format!(
                    "\"id\" must be 1 to {MAX_MESSAGE_ID_BYTES} bytes without control characters \
                        (a UUID fits), or absent"
                )))
            }
            Some(id) => id.into_owned(),
        };
        let payload = message.payload.get();
        if !payload.starts_with('{') {
            return Err(DomainError::InvalidMessage(
                "\"payload\" must be a JSON object".into(),
            ));
        }
        let mut head = String::with_capacity(raw.len() + id.len() + HEAD_ROOM);
        let push_json_string = |head: &mut String, s: &str| {
            // Serialising a &str cannot fail.
            head.push_str(&serde_json::to_string(s).unwrap_or_default());
        };
        head.push_str("{\"id\":");
        push_json_string(&mut head, &id);
        head.push_str(",\"type\":");
        push_json_string(&mut head, &message.kind);
        head.push_str(",\"turn\":");
        match message.turn {
            Some(turn) => {
                let _ = write!(head, "{turn}");
            }
            None => head.push_str("null"),
        }
        for (field, value) in [
            (",\"agent\":", message.agent),
            (",\"model\":", message.model),
        ] {
            head.push_str(field);
            push_minified(&mut head, value.map_or("null", RawValue::get));
        }
        head.push_str(",\"payload\":");
        push_minified(&mut head, payload);
        Ok(Self {
            id,
            kind: message.kind.into_owned(),
            head,
        })
    }

    /// Parses the existing worker's notification, `{"process_id": "…", "agent_message":
    /// {AgentMessage}}` (or `processId` / `agentMessage`), into the process it names and
    /// its one message.
    pub fn parse_notification(
        body: &[u8],
        max_message_bytes: usize,
    ) -> Result<(ProcessId, Self), DomainError> {
        ijson::check(body, 1).map_err(invalid)?;
        let notification: Notification = serde_json::from_str(utf8(body)?).map_err(|e| {
            DomainError::InvalidMessage(format!(
                "{e}; a notification is {{\"process_id\": \"…\", \"agent_message\": {{\"id\", \
                    \"type\", \"turn\", \"agent\", \"model\", \"payload\"}}}}"
            ))
        })?;
        let process = ProcessId::parse(&notification.process_id)?;
        let message = notification.agent_message.get();
        within(message.as_bytes(), max_message_bytes)?;
        let message = Self::parse_checked(message)?;
        Ok((process, message))
    }

    /// Renders the wire JSON of this message stored at `seq`.
    pub fn render(&self, seq: u64, created_at: DateTime<Utc>) -> StoredMessage {
        StoredMessage::from_head(self.head(), seq, &wire_timestamp(created_at))
    }

    /// The wire JSON up to the service's fields: `{"id":…,"payload":{…}` with no
    /// closing brace. [`StoredMessage::from_head`] completes it once the seq is known.
    pub fn head(&self) -> &str {
        &self.head
    }
}

/// Refuses a message over `max_bytes` bytes of JSON.
fn within(raw: &[u8], max_bytes: usize) -> Result<(), DomainError> {
    if raw.len() > max_bytes {
        return Err(DomainError::MessageTooLarge {
            size: raw.len(),
            limit: max_bytes,
        });
    }
    Ok(())
}

/// The body as text, as JSON is; checked once, so that the parses that follow need not.
fn utf8(body: &[u8]) -> Result<&str, DomainError> {
    std::str::from_utf8(body).map_err(|e| {
        DomainError::InvalidMessage(format!("the body is not UTF-8 text, as JSON must be: {e}"))
    })
}

fn invalid(violation: ijson::Violation) -> DomainError {
    DomainError::InvalidMessage(violation.to_string())
}

/// `created_at` as the wire JSON writes it: RFC 3339, UTC, microseconds
/// (`2026-11-27T10:15:03.123456Z`). PostgreSQL's append function writes the same with
/// `to_char(…, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`.
pub fn wire_timestamp(created_at: DateTime<Utc>) -> String {
    created_at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The end event's JSON, `{"status":"…"}`: the `data` of SSE's `event: end`, and the
/// end entry of a Redis stream. [`end_line`] is NDJSON's.
pub fn end_json(status: &str) -> String {
    serde_json::json!({ "status": status }).to_string()
}

/// The end event as NDJSON's last line (without its newline):
/// `{"event":"end","status":"…","stream_id":"<last seq>-1"}`.
pub fn end_line(status: &str, stream_id: StreamId) -> String {
    serde_json::json!({ "event": "end", "status": status, "stream_id": stream_id.to_string() })
        .to_string()
}

/// A stored message: its seq and its wire JSON, rendered once, shared by every reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub json: Bytes,
}

impl StoredMessage {
    /// Completes a [`NewMessage::head`] with the service's fields:
    /// `,"stream_id":"<seq>-0","created_at":"<timestamp>"}`.
    pub fn from_head(head: &str, seq: u64, timestamp: &str) -> Self {
        const STREAM_ID: &str = ",\"stream_id\":\"";
        const CREATED_AT: &str = "\",\"created_at\":\"";
        let mut json = Vec::with_capacity(
            head.len() + STREAM_ID.len() + 24 + CREATED_AT.len() + timestamp.len() + 2,
        );
        json.extend_from_slice(head.as_bytes());
        json.extend_from_slice(STREAM_ID.as_bytes());
        // Writing into a Vec cannot fail.
        let _ = write!(json, "{}", StreamId::message(seq));
        json.extend_from_slice(CREATED_AT.as_bytes());
        json.extend_from_slice(timestamp.as_bytes());
        json.extend_from_slice(b"\"}");
        Self {
            seq,
            json: Bytes::from(json),
        }
    }

    pub fn stream_id(&self) -> StreamId {
        StreamId::message(self.seq)
    }
}

/// Appends `json`, one JSON value, to `out` without its insignificant whitespace: the
/// whitespace outside strings. Nothing else is rewritten.
fn push_minified(out: &mut String, json: &str) {
    let bytes = json.as_bytes();
    // `json[..kept]` is in `out` already. Whitespace and quotes are ASCII, so every
    // index below is on a character boundary.
    let (mut i, mut kept) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = after_string(bytes, i + 1),
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.push_str(&json[kept..i]);
                i += 1;
                kept = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&json[kept..]);
}

/// The index after the string whose contents start at `i` (past its closing quote;
/// the text's length if it has none). Its characters are skipped a word at a time up
/// to each quote or escape (`memchr`): most of an agent's message is text in strings.
fn after_string(bytes: &[u8], mut i: usize) -> usize {
    while let Some(n) = bytes
        .get(i..)
        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
    {
        i += n;
        if bytes[i] == b'"' {
            return i + 1;
        }
        i += 2;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    fn minified(json: &str) -> String {
        let mut out = String::new();
        push_minified(&mut out, json);
        out
    }

    #[test]
    fn a_message_renders_with_the_existing_fields_first_and_the_payload_untouched() {
        let body = br#"{"id":"m1","type":"AssistantMessage","turn":7,"agent":"CLAUDE_CODE","model":"m","payload":{"z":1.50,"a":"x y","n":1e300}}"#;
        let (messages, batch) = NewMessage::parse_body(body, LIMIT, 1000).unwrap();
        assert!(!batch);
        let created = DateTime::parse_from_rfc3339("2026-11-27T10:15:03.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let stored = messages[0].render(42, created);
        assert_eq!(
            std::str::from_utf8(&stored.json).unwrap(),
            r#"{"id":"m1","type":"AssistantMessage","turn":7,"agent":"CLAUDE_CODE","model":"m","payload":{"z":1.50,"a":"x y","n":1e300},"stream_id":"42-0","created_at":"2026-11-27T10:15:03.123456Z"}"#
        );
    }

    #[test]
    fn whitespace_outside_strings_goes_and_inside_strings_stays() {
        assert_eq!(
            minified("{ \"a b\" :\n [1, \"x\\\" y\"]\t}"),
            "{\"a b\":[1,\"x\\\" y\"]}"
        );
        assert_eq!(minified("{\"a\":1}"), "{\"a\":1}");
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
    fn agent_and_model_may_be_any_json_value_and_are_stored_as_sent() {
        let body = br#"{"type":"T","agent":"CLAUDE_CODE","model":{ "ai_model": "claude-sonnet-4-5", "version": null },"payload":{}}"#;
        let (messages, _) = NewMessage::parse_body(body, LIMIT, 1000).unwrap();
        let json = messages[0].render(1, Utc::now()).json;
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["agent"], "CLAUDE_CODE");
        assert_eq!(
            value["model"],
            serde_json::json!({"ai_model": "claude-sonnet-4-5", "version": null})
        );
        assert!(std::str::from_utf8(&json)
            .unwrap()
            .contains(r#""model":{"ai_model":"claude-sonnet-4-5","version":null}"#));
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
            b"{\"type\":\"T\",\"payload\":{\"x\":\"\xff\"}}",
            b"[{\"type\":\"T\",\"payload\":{\"x\":\"\xc3\"}}]",
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

    mod properties {
        use proptest::prelude::*;
        use serde::Serialize;
        use serde_json::{json, Map, Value};

        use super::*;

        /// Strings that are hard on a JSON scanner: quotes, backslashes, whitespace,
        /// brackets, control and non-ASCII characters.
        fn tricky_string() -> BoxedStrategy<String> {
            prop_oneof![
                any::<String>(),
                "[ \t\r\n\"\\\\{}\\[\\]:,/\u{0}\u{1f}\u{7f}\u{85}\u{2028}é😀a-]{0,12}",
            ]
            .boxed()
        }

        fn json_value() -> BoxedStrategy<Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
                    .map(Value::Number)),
                tricky_string().prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(tricky_string(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
            .boxed()
        }

        fn json_object() -> BoxedStrategy<Value> {
            prop::collection::btree_map(tricky_string(), json_value(), 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
                .boxed()
        }

        /// How a writer may lay its JSON out.
        #[derive(Debug, Clone, Copy)]
        enum Layout {
            Compact,
            Pretty(&'static str),
        }

        fn layout() -> impl Strategy<Value = Layout> {
            prop_oneof![
                Just(Layout::Compact),
                Just(Layout::Pretty("  ")),
                Just(Layout::Pretty("\t")),
                Just(Layout::Pretty("\r\n \t")),
            ]
        }

        fn write(value: &Value, layout: Layout) -> String {
            match layout {
                Layout::Compact => serde_json::to_string(value).unwrap(),
                Layout::Pretty(indent) => {
                    let mut out = Vec::new();
                    let formatter =
                        serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
                    let mut serializer =
                        serde_json::Serializer::with_formatter(&mut out, formatter);
                    value.serialize(&mut serializer).unwrap();
                    String::from_utf8(out).unwrap()
                }
            }
        }

        /// A writer's id as the contract allows it: 1 to 256 bytes without control characters.
        fn valid_id() -> BoxedStrategy<String> {
            prop_oneof![
                "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                any::<String>().prop_filter("1 to 256 bytes, no control character", |id| {
                    !id.is_empty()
                        && id.len() <= MAX_MESSAGE_ID_BYTES
                        && !id.chars().any(char::is_control)
                }),
                "x{250,256}",
            ]
            .boxed()
        }

        /// A valid message: `type` and `payload`, and any of `id`, `turn`, `agent`, `model`
        /// (those two a string or any JSON value).
        fn valid_message() -> BoxedStrategy<Value> {
            (
                proptest::option::of(valid_id()),
                tricky_string(),
                proptest::option::of(any::<i64>()),
                proptest::option::of(prop_oneof![
                    tricky_string().prop_map(Value::from),
                    json_value()
                ]),
                proptest::option::of(prop_oneof![
                    tricky_string().prop_map(Value::from),
                    json_value()
                ]),
                json_object(),
            )
                .prop_map(|(id, kind, turn, agent, model, payload)| {
                    let mut message = Map::new();
                    if let Some(id) = id {
                        message.insert("id".into(), id.into());
                    }
                    message.insert("type".into(), kind.into());
                    if let Some(turn) = turn {
                        message.insert("turn".into(), turn.into());
                    }
                    for (field, value) in [("agent", agent), ("model", model)] {
                        if let Some(value) = value {
                            message.insert(field.into(), value);
                        }
                    }
                    message.insert("payload".into(), payload);
                    Value::Object(message)
                })
                .boxed()
        }

        /// A valid message with at most one field removed, replaced or added.
        fn near_valid_message() -> BoxedStrategy<Value> {
            let field = prop_oneof![
                Just("id"),
                Just("type"),
                Just("turn"),
                Just("agent"),
                Just("model"),
                Just("payload"),
                Just("extra"),
            ];
            let mutated_value = prop_oneof![
                json_value(),
                Just(json!("")),
                Just(json!(null)),
                Just(json!(1.5)),
                Just(json!(u64::MAX)),
                Just(json!("x".repeat(257))),
                Just(json!("a\u{1}b")),
                Just(json!([1])),
            ];
            prop_oneof![
                1 => valid_message(),
                2 => (valid_message(), field.clone()).prop_map(|(mut message, field)| {
                    message.as_object_mut().unwrap().remove(field);
                    message
                }),
                4 => (valid_message(), field, mutated_value).prop_map(|(mut message, field,
                    value)| {
                    message.as_object_mut().unwrap().insert(field.into(), value);
                    message
                }),
            ]
            .boxed()
        }

        /// The contract's rule for one message, restated from the error table of docs/contract.md.
        fn is_valid_message(value: &Value) -> bool {
            let Some(message) = value.as_object() else {
                return false;
            };
            let id_ok = match message.get("id") {
                None | Some(Value::Null) => true,
                Some(Value::String(id)) => {
                    !id.is_empty()
                        && id.len() <= MAX_MESSAGE_ID_BYTES
                        && !id.chars().any(char::is_control)
                }
                Some(_) => false,
            };
            let turn_ok = match message.get("turn") {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => n.as_i64().is_some(),
                Some(_) => false,
            };
            message.get("type").is_some_and(Value::is_string)
                && message.get("payload").is_some_and(Value::is_object)
                && id_ok
                && turn_ok
        }

        fn is_valid_body(value: &Value) -> bool {
            match value {
                Value::Array(items) => !items.is_empty() && items.iter().all(is_valid_message),
                other => is_valid_message(other),
            }
        }

        fn any_body() -> BoxedStrategy<Value> {
            prop_oneof![
                2 => json_value(),
                4 => near_valid_message(),
                2 => prop::collection::vec(near_valid_message(), 0..4).prop_map(Value::Array),
                1 => prop::collection::vec(valid_message(), 1..4).prop_map(Value::Array),
            ]
            .boxed()
        }

        /// Checks one accepted message against the JSON it came from.
        /// `sent` is the generated JSON; `reparsed`, the same as serde_json reads its text.
        fn check_accepted(
            parsed: &NewMessage,
            sent: &Value,
            reparsed: &Value,
        ) -> Result<(), TestCaseError> {
            match sent.get("id").and_then(Value::as_str) {
                Some(id) => prop_assert_eq!(&parsed.id, id),
                None => prop_assert!(uuid::Uuid::parse_str(&parsed.id).is_ok(), "{:?}", parsed.id),
            }
            prop_assert_eq!(Some(parsed.kind.as_str()), sent["type"].as_str());
            // `agent`, `model` and `payload` are kept as sent, any JSON value, but for
            // whitespace (serde's compact form of what was sent); absent is null.
            let as_sent = |field: &str| match sent.get(field) {
                None => "null".to_owned(),
                Some(value) => serde_json::to_string(value).unwrap(),
            };
            let head = format!(
                r#"{{"id":{},"type":{},"turn":{},"agent":{},"model":{},"payload":{}"#,
                json!(parsed.id),
                sent["type"],
                sent.get("turn").unwrap_or(&Value::Null),
                as_sent("agent"),
                as_sent("model"),
                as_sent("payload")
            );
            prop_assert_eq!(parsed.head(), head.as_str());
            prop_assert!(!parsed.head().contains('\n'));

            let created = DateTime::parse_from_rfc3339("2026-11-27T10:15:03.123456Z")
                .unwrap()
                .with_timezone(&Utc);
            let stored = parsed.render(42, created);
            prop_assert!(!stored.json.contains(&b'\n'), "the wire JSON is one line");
            let rendered: Value = serde_json::from_slice(&stored.json).unwrap();
            prop_assert_eq!(&rendered["id"], &json!(parsed.id));
            prop_assert_eq!(&rendered["type"], &sent["type"]);
            prop_assert_eq!(
                &rendered["agent"],
                &reparsed.get("agent").cloned().unwrap_or(Value::Null)
            );
            prop_assert_eq!(
                &rendered["model"],
                &reparsed.get("model").cloned().unwrap_or(Value::Null)
            );
            prop_assert_eq!(rendered["turn"].as_i64(), sent["turn"].as_i64());
            prop_assert_eq!(&rendered["payload"], &reparsed["payload"]);
            prop_assert_eq!(&rendered["stream_id"], &json!("42-0"));
            prop_assert_eq!(
                &rendered["created_at"],
                &json!("2026-11-27T10:15:03.123456Z")
            );
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { failure_persistence: None,
                ..ProptestConfig::default() })]

            #[test]
            fn minifying_any_json_keeps_its_value_and_puts_it_on_one_line(value in json_value(),
                layout in layout()) {
                // Invariant: push_minified of any serialised Value parses to the same Value, holds no
                // newline, CR or tab, and is idempotent.
                let text = write(&value, layout);
                let minified = minified(&text);
                let reparsed: Value = serde_json::from_str(&minified).unwrap();
                prop_assert_eq!(&reparsed, &serde_json::from_str::<Value>(&text).unwrap());
                prop_assert!(!minified.contains(['\n', '\r', '\t']), "{:?}", minified);
                prop_assert_eq!(super::minified(&minified), minified.clone());
                let compact = serde_json::to_string(&value).unwrap();
                prop_assert_eq!(minified.as_str(), compact.as_str(),
                    "minified is serde's compact form");
            }

            #[test]
            fn parsing_arbitrary_bytes_never_panics_and_refuses_as_a_client_error(body in prop_oneof![
                any::<Vec<u8>>(),
                any::<String>().prop_map(String::into_bytes),
                (any_body(), any::<Vec<u8>>(), any::<prop::sample::Index>()).prop_map(|(value,
                    noise, at)| {
                    // Valid-looking JSON with arbitrary bytes spliced in.
                    let mut bytes = serde_json::to_vec(&value).unwrap();
                    let at = at.index(bytes.len() + 1);
                    bytes.splice(at..at, noise);
                    bytes
                }),
                (any_body(), any::<prop::sample::Index>()).prop_map(|(value, at)| {
                    // Valid-looking JSON cut short.
                    let bytes = serde_json::to_vec(&value).unwrap();
                    bytes[..at.index(bytes.len() + 1)].to_vec()
                }),
            ]) {
                // Invariant: NewMessage::parse_body never panics; what it refuses is
                // InvalidMessage, MessageTooLarge or TooManyMessages.
                match NewMessage::parse_body(&body, 256, 1000) {
                    Ok((messages, _)) => prop_assert!(!messages.is_empty()),
                    Err(error) => prop_assert!(
                        matches!(error,
                            DomainError::InvalidMessage(_) | DomainError::MessageTooLarge { .. } | DomainError::TooManyMessages { .. }),
                        "{:?}", error
                    ),
                }
            }

            #[test]
            fn a_body_is_accepted_exactly_when_every_message_follows_the_contract(body in any_body(), layout in layout()) {
                // Invariant: parse_body accepts iff the body is a valid message or a non-empty
                // array of them, and accepted ones keep every field.
                let text = write(&body, layout);
                // Values are compared with the text as parsed again: serde_json's float
                // parsing may differ from the generated f64 in its last digit.
                let reparsed: Value = serde_json::from_str(&text).unwrap();
                match NewMessage::parse_body(text.as_bytes(), LIMIT, 1000) {
                    Ok((messages, batch)) => {
                        prop_assert!(is_valid_body(&body), "accepted: {}", text);
                        prop_assert_eq!(batch, body.is_array());
                        let items = |body: &Value| match body {
                            Value::Array(items) => items.clone(),
                            one => vec![one.clone()],
                        };
                        let (sent, reparsed) = (items(&body), items(&reparsed));
                        prop_assert_eq!(messages.len(), sent.len());
                        for ((parsed, sent),
                            reparsed) in messages.iter().zip(&sent).zip(&reparsed) {
                            check_accepted(parsed, sent, reparsed)?;
                        }
                    }
                    Err(error) => {
                        prop_assert!(!is_valid_body(&body), "refused ({:?}): {}", error, text);
                        prop_assert!(matches!(error, DomainError::InvalidMessage(_)), "{:?}",
                            error);
                    }
                }
            }

            #[test]
            fn an_array_is_refused_as_too_many_exactly_when_it_holds_more_than_the_limit(items in prop::collection::vec(valid_message(), 1..8), max in 1usize..6, layout in layout()) {
                // Invariant: an array of n valid messages is accepted whole iff n <= the limit,
                // else it is TooManyMessages.
                let text = write(&Value::Array(items.clone()), layout);
                match NewMessage::parse_body(text.as_bytes(), LIMIT, max) {
                    Ok((messages, true)) => {
                        prop_assert!(items.len() <= max);
                        prop_assert_eq!(messages.len(), items.len());
                    }
                    other => {
                        prop_assert!(items.len() > max, "{:?}", other);
                        prop_assert_eq!(other, Err(DomainError::TooManyMessages { limit: max }));
                    }
                }
            }

            #[test]
            fn a_message_is_too_large_exactly_when_its_json_is_over_the_limit(message in valid_message(), layout in layout(), batch in any::<bool>(), slack in 0usize..3) {
                // Invariant: a message of s bytes (as sent, surrounding whitespace aside) passes a
                // limit of s and is a 413 under it, alone or in an array.
                let text = write(&message, layout);
                let size = text.trim().len();
                let body = if batch { format!("[ {text} ]") } else { format!(" {text}\n") };
                prop_assert!(NewMessage::parse_body(body.as_bytes(), size + slack, 1).is_ok());
                let under = size - 1 - slack.min(size - 1);
                prop_assert_eq!(
                    NewMessage::parse_body(body.as_bytes(), under, 1),
                    Err(DomainError::MessageTooLarge { size, limit: under })
                );
            }
        }
    }
}
