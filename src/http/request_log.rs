//! Request ids and the request span. Every call gets an `x-request-id` (the client's
//! own when it sends one, such as a load balancer's, and it is 1 to 64 characters of
//! `A-Z a-z 0-9 - _ .`; else a fresh UUID), echoed in the response; every log line
//! written while serving the call carries it, with the method and the path. (A
//! client's id is checked because it lands in logs and in the response as sent: it
//! must not forge log fields or carry anything but an id.) The span is at `info` so that those
//! lines carry it at the default
//! level; a span writes nothing by itself.
//!
//! The span records the path without the query string: a query may carry credentials
//! (`access_token=`), and cursors are recorded by the follow's own span.

use axum::extract::Request;
use tracing::Span;

/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest client request id kept.
pub const MAX_REQUEST_ID: usize = 64;

/// Whether a client's request id is kept: 1 to [`MAX_REQUEST_ID`] characters of
/// `A-Z a-z 0-9 - _ .`.
pub fn valid_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Drops the client's `x-request-id` unless it is one valid id, so that the next
/// layer gives the request a fresh one (`axum::middleware::map_request`).
pub async fn keep_valid_request_id(mut request: Request) -> Request {
    let ids = request.headers().get_all(REQUEST_ID);
    let mut ids = ids.iter();
    let keep =
        matches!((ids.next(), ids.next()), (Some(id), None) if valid_request_id(id.as_bytes()));
    if !keep {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

/// The span of one request (`TraceLayer::make_span_with`).
pub fn span<B>(request: &axum::http::Request<B>) -> Span {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_short_and_plain() {
        for id in ["a", "lb-7f3a.9_X", &"x".repeat(64)] {
            assert!(valid_request_id(id.as_bytes()), "{id}");
        }
        for id in ["", &"x".repeat(65), "a b", "a\"b", "id=1 level=error", "é"] {
            assert!(!valid_request_id(id.as_bytes()), "{id}");
        }
    }
}
