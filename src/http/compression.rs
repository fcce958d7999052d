//! Compression by `Accept-Encoding` (gzip, brotli, zstd) of snapshots and follows, with
//! tower-http's layer, and the `ETag` rule that goes with it.
//!
//! Follows are compressed too (tower-http's default leaves SSE alone, for fear of a
//! compressor that holds events back): its encoder (async-compression) flushes whenever
//! the body it reads from has nothing ready, so each live event and each heartbeat goes
//! out at once, as a sync-flushed block, while a catch-up that is ready all at once is
//! compressed as a whole.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{Compression, CompressionLevel};

/// One level for the three: gzip 4, brotli 4, zstd 4. Brotli's default (11) costs far
/// too much per event of a follow; 4 keeps each codec fast at a ratio close to its best
/// on agent messages (docs/contract.md, "Compression and caching").
const LEVEL: i32 = 4;
/// Bodies smaller than this go as they are (tower-http's default): the framing would
/// outweigh the gain.
const MIN_BYTES: u16 = 32;
/// `/metrics` is scraped on a loopback or a private network, and left as it is.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// The middleware: a request that names no encoding (`Accept-Encoding` absent) goes
/// straight on, and its response body stays as it is; any other goes through
/// tower-http's compression, whose body holds room for every codec's state (~5 KiB
/// even when it answers identity), for as long as a follow streams (adr/0015).
pub async fn compress(request: Request, next: Next) -> Response {
    if !request.headers().contains_key(header::ACCEPT_ENCODING) {
        return next.run(request).await;
    }
    let mut compressing = compressing(Inner(next));
    match tower_service::Service::call(&mut compressing, request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// The rest of the stack, as the service the compression wraps.
#[derive(Clone)]
struct Inner(Next);

impl tower_service::Service<Request> for Inner {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let next = self.0.clone();
        Box::pin(async move { Ok(next.run(request).await) })
    }
}

/// tower-http's compression around `inner`: what its default predicate compresses, SSE
/// included, `/metrics` excluded. tower-http adds `Vary: accept-encoding`.
fn compressing<S>(inner: S) -> Compression<S, impl Predicate> {
    let predicate = SizeAbove::new(MIN_BYTES)
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::const_new(PROMETHEUS_TEXT));
    Compression::new(inner)
        .gzip(true)
        .br(true)
        .zstd(true)
        .quality(CompressionLevel::Precise(LEVEL))
        .compress_when(predicate)
}

/// A strong `ETag` names one sequence of bytes, and handlers make theirs on the
/// identity body: on a compressed answer it becomes weak (`W/`), which still
/// revalidates (`If-None-Match` compares weakly) but never claims the compressed bytes
/// are the identity ones. Runs outside the compression layer.
pub async fn weaken_etag(mut response: Response) -> Response {
    if !response.headers().contains_key(header::CONTENT_ENCODING) {
        return response;
    }
    let weak = response
        .headers()
        .get(header::ETAG)
        .and_then(|etag| etag.to_str().ok())
        .filter(|etag| etag.starts_with('"'))
        .and_then(|etag| HeaderValue::from_str(&format!("W/{etag}")).ok());
    if let Some(weak) = weak {
        response.headers_mut().insert(header::ETAG, weak);
    }
    response
}

/// The tag of `If-None-Match` that names `etag` (the strong tag of the identity body):
/// `*`, or a tag equal to it by the weak comparison (RFC 9110), so that the `W/` form a
/// compressed answer carried revalidates too. A value that does not parse names
/// nothing.
pub fn matching_tag<'h>(headers: &'h HeaderMap, etag: &str) -> Option<&'h str> {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find(|tag| *tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}
