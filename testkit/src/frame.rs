//! The one reader of the follow wire formats: cutting a response body into frames (SSE
//! events end with a blank line, NDJSON lines with a newline) and parsing each frame
//! into a message, the end event, a heartbeat or an SSE `retry:` hint.
//!
//! Parsing never panics: a frame that breaks the contract is an `Err` with a sentence
//! saying how, and each client decides what that means (the contract suite's `Follow`
//! panics, the drills' `Follower` records a violation).

use serde_json::Value;

/// The end event: the process's final status and the stream ID of the last message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub status: String,
    pub stream_id: String,
}

/// One frame of a follow response.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Message {
        stream_id: String,
        value: Value,
    },
    End(End),
    /// A comment-only SSE event, an empty NDJSON line, or an SSE event that only
    /// carries a `retry:` hint.
    Heartbeat,
}

/// A parsed SSE event: its frame and the `retry:` field it carried, if any.
pub type SseEvent = (Frame, Option<String>);

/// What ends a frame of each wire format.
pub const SSE_SEPARATOR: &[u8] = b"\n\n";
pub const NDJSON_SEPARATOR: &[u8] = b"\n";

/// Cuts the first complete frame (without its separator) off `buffer`, if there is one.
pub fn take_frame(buffer: &mut Vec<u8>, separator: &[u8]) -> Option<Vec<u8>> {
    let at = buffer
        .windows(separator.len())
        .position(|w| w == separator)?;
    Some(buffer.drain(..at + separator.len()).take(at).collect())
}

/// Parses one SSE event (the text between two blank lines).
pub fn parse_sse(frame: &str) -> Result<SseEvent, String> {
    let (mut id, mut event, mut data, mut retry) = (None, None, Vec::new(), None);
    for line in frame.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line
            .split_once(':')
            .map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)))
            .unwrap_or((line, ""));
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            "data" => data.push(value.to_owned()),
            "retry" => retry = Some(value.to_owned()),
            other => return Err(format!("unexpected SSE field {other:?} in {frame:?}")),
        }
    }
    let data = data.join("\n");
    let frame = match event.as_deref() {
        None if data.is_empty() && id.is_none() => Frame::Heartbeat,
        Some("message") => {
            let value: Value = serde_json::from_str(&data)
                .map_err(|e| format!("SSE data is not JSON ({e}): {data}"))?;
            let stream_id = value["stream_id"].as_str().unwrap_or_default().to_owned();
            if id.as_deref() != Some(stream_id.as_str()) {
                return Err(format!("SSE id {id:?} is not the stream_id {stream_id:?}"));
            }
            Frame::Message { stream_id, value }
        }
        Some("end") => {
            let end: Value = serde_json::from_str(&data)
                .map_err(|e| format!("SSE end data is not JSON ({e}): {data}"))?;
            Frame::End(End {
                status: end["status"].as_str().unwrap_or_default().to_owned(),
                stream_id: id.ok_or("the SSE end has no id")?,
            })
        }
        other => return Err(format!("unexpected SSE event {other:?}: {frame:?}")),
    };
    Ok((frame, retry))
}

/// Parses one NDJSON line.
pub fn parse_ndjson(line: &str) -> Result<Frame, String> {
    if line.is_empty() {
        return Ok(Frame::Heartbeat);
    }
    let value: Value =
        serde_json::from_str(line).map_err(|e| format!("NDJSON line is not JSON ({e}): {line}"))?;
    if value.get("event").and_then(Value::as_str) == Some("end") {
        return Ok(Frame::End(End {
            status: value["status"].as_str().unwrap_or_default().to_owned(),
            stream_id: value["stream_id"].as_str().unwrap_or_default().to_owned(),
        }));
    }
    let stream_id = value["stream_id"].as_str().unwrap_or_default().to_owned();
    Ok(Frame::Message { stream_id, value })
}
