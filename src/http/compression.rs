//! Compression by `Accept-Encoding` (gzip, brotli, zstd) of snapshots and follows, with
//! tower-http's layer, and the `ETag` rule that goes with it.
//!
//! Follows are compressed too (tower-http's default leaves SSE alone, for fear of a
//! compressor that holds events back): its encoder (async-compression) flushes whenever
//! the body it reads from has nothing ready, so each live event and each heartbeat goes
//! out at once, as a sync-flushed block, while a catch-up that is ready all at once is
//! compressed as a whole.

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};

/// One level for the three: gzip 4, brotli 4, zstd 4. Brotli's default (11) costs far
/// too much per event of a follow; 4 keeps each codec fast at a ratio close to its best
/// on agent messages (docs/contract.md, "Compression and caching").
const LEVEL: i32 = 4;
/// Bodies smaller than this go as they are (tower-http's default): the framing would
/// outweigh the gain.
const MIN_BYTES: u16 = 32;
/// `/metrics` is scraped on a loopback or a private network, and left as it is.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// The layer: what tower-http's default predicate compresses, SSE included, `/metrics`
/// excluded. tower-http adds `Vary: accept-encoding`.
pub fn layer() -> CompressionLayer<impl Predicate> {
    let predicate = SizeAbove::new(MIN_BYTES)
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::const_new(PROMETHEUS_TEXT));
    CompressionLayer::new()
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
