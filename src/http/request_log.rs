//! Request ids and the request span. Every call gets an `x-request-id` (the client's
//! own when it sends one, such as a load balancer's, else a fresh UUID), echoed in the
//! response; every log line written while serving the call carries it, with the method
//! and the path. The span is at `info` so that those lines carry it at the default
//! level; a span writes nothing by itself.
//!
//! The span records the path without the query string: a query may carry credentials
//! (`access_token=`), and cursors are recorded by the follow's own span.

use axum::http::Request;
use tracing::Span;

/// Longest request id recorded: a client's id is kept whatever its length (the head
/// limit bounds it), but the logs take only its start.
const MAX_LOGGED_ID: usize = 64;

/// The span of one request (`TraceLayer::make_span_with`).
pub fn span<B>(request: &Request<B>) -> Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-");
    // `to_str` took visible ASCII only: any byte is a char boundary.
    let id = &id[..id.len().min(MAX_LOGGED_ID)];
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    )
}
