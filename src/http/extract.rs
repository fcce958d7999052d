//! Request parts read the way the contract wants: every malformed value is a 400 with
//! the contract's JSON body, never a plain-text rejection or a panic.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use serde::Deserialize;

use super::error::ApiError;
use crate::domain::{Cursor, ProcessId};

/// The `{id}` of a `/processes/{id}…` path, validated.
pub struct ProcessPath(pub ProcessId);

impl<S: Send + Sync> FromRequestParts<S> for ProcessPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_process_id", e.body_text()))?;
        Ok(Self(ProcessId::parse(&raw)?))
    }
}

/// The query parameters of a messages read.
#[derive(Debug, Default, Deserialize)]
pub struct MessagesQuery {
    pub after: Option<String>,
    pub limit: Option<String>,
    pub follow: Option<String>,
}

impl MessagesQuery {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| {
            ApiError::bad_request("invalid_query", format!("malformed query string: {e}"))
        })
    }

    /// The cursor: `?after=` wins over `Last-Event-ID`.
    pub fn cursor(&self, headers: &HeaderMap) -> Result<Cursor, ApiError> {
        let last_event_id = match headers.get("last-event-id") {
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::bad_request("invalid_cursor", "Last-Event-ID is not valid text")
            })?),
            None => None,
        };
        Ok(Cursor::from_request(self.after.as_deref(), last_event_id)?)
    }

    /// `follow=false` asks for a snapshot; `None` when not given.
    pub fn follow(&self) -> Result<Option<bool>, ApiError> {
        match self.follow.as_deref() {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(other) => Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "follow must be true or false, not {:?}",
                    other.chars().take(32).collect::<String>()
                ),
            )),
        }
    }

    /// `limit`, from 1 to `max`; `None` when not given.
    pub fn limit(&self, max: usize) -> Result<Option<usize>, ApiError> {
        let Some(raw) = self.limit.as_deref() else {
            return Ok(None);
        };
        match raw.parse::<usize>() {
            Ok(limit) if (1..=max).contains(&limit) && raw.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Some(limit))
            }
            _ => Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be a whole number from 1 to {max}"),
            )),
        }
    }
}

/// How a messages read answers, by `Accept` and `follow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Sse,
    Ndjson,
    Snapshot,
}

impl Format {
    /// The contract's rule. A follow is asked for by name: `text/event-stream` (SSE),
    /// `application/x-ndjson`, or `follow=true` (SSE if accepted, else NDJSON). Anything
    /// else (no `Accept`, `*/*`, `application/json`, …) gets the JSON array, because
    /// that is what the existing API answers there and what its UI's poller (`fetch`,
    /// then `response.json()`) needs. `follow=false` is always the array.
    pub fn negotiate(headers: &HeaderMap, follow: Option<bool>) -> Self {
        let accepts = |wanted: &str| {
            headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|range| {
                    range
                        .split(';')
                        .next()
                        .is_some_and(|media| media.trim().eq_ignore_ascii_case(wanted))
                })
        };
        match follow {
            Some(false) => Self::Snapshot,
            _ if accepts("text/event-stream") => Self::Sse,
            Some(true) => Self::Ndjson,
            None if accepts("application/x-ndjson") => Self::Ndjson,
            None => Self::Snapshot,
        }
    }
}

/// Past the limit, the rest of a body is read and thrown away, up to this much, so a
/// client still sending gets its 413 instead of a broken pipe; beyond it, the
/// connection is closed.
const DRAIN_LIMIT: usize = 64 << 20;

/// Reads a request body up to `limit` bytes: past it, a 413 in the contract's shape.
/// Memory stays bounded by `limit` whatever the client sends.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let mut body = body.into_data_stream();
    let mut buffer = bytes::BytesMut::new();
    let mut drained = 0usize;
    while let Some(chunk) = futures::StreamExt::next(&mut body).await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("the request body could not be read: {e}"),
            )
        })?;
        if drained > 0 || buffer.len() + chunk.len() > limit {
            drained += chunk.len();
            if drained > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        buffer.extend_from_slice(&chunk);
    }
    if drained > 0 {
        return Err(ApiError::payload_too_large(limit));
    }
    Ok(buffer.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiate(accept: Option<&str>, follow: Option<bool>) -> Format {
        let mut headers = HeaderMap::new();
        if let Some(accept) = accept {
            headers.insert(header::ACCEPT, accept.parse().unwrap());
        }
        Format::negotiate(&headers, follow)
    }

    #[test]
    fn a_follow_is_asked_for_by_name_and_anything_else_gets_the_array() {
        for (accept, follow, expected) in [
            (None, None, Format::Snapshot),
            (Some("*/*"), None, Format::Snapshot),
            (Some("application/json"), None, Format::Snapshot),
            (Some("text/html, */*;q=0.8"), None, Format::Snapshot),
            (Some("text/event-stream"), None, Format::Sse),
            (
                Some("application/json, text/event-stream"),
                None,
                Format::Sse,
            ),
            (Some("Application/X-NDJSON"), None, Format::Ndjson),
            (None, Some(true), Format::Ndjson),
            (Some("*/*"), Some(true), Format::Ndjson),
            (Some("application/json"), Some(true), Format::Ndjson),
            (Some("text/event-stream"), Some(true), Format::Sse),
            (Some("text/event-stream"), Some(false), Format::Snapshot),
            (Some("application/x-ndjson"), Some(false), Format::Snapshot),
        ] {
            assert_eq!(
                negotiate(accept, follow),
                expected,
                "{accept:?} follow={follow:?}"
            );
        }
    }
}
