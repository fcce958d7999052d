//! Compression by `Accept-Encoding` (gzip, brotli, zstd) of snapshots and follows, and
//! the `ETag` rule that goes with it.
//!
//! Whole answers (the JSON array, errors) go through tower-http's layer. Follows (SSE
//! and NDJSON) are compressed here, on the same encoders (async-compression), with two
//! differences, because a follow holds its encoder for as long as it streams (hours):
//! - **smaller encoders**: at tower-http's settings a follow of the fixture session
//!   (32 messages) held 2.4 MiB more memory in zstd, 1.1 MiB in brotli and 0.33 MiB in
//!   gzip than one not compressed; a follow's zstd and brotli here use a 64 KiB window
//!   ([`FOLLOW_WINDOW_LOG`], still wider than most agent messages, so repeated keys and
//!   text compress) and smaller tables, which brings zstd to ~0.3 MiB, and prefer zstd,
//!   then gzip, then brotli (~0.6 MiB);
//! - **a budget**: at most `max_compressed_follows` follows are compressed at once
//!   (`--max-compressed-follows`); a follow past it goes as it is (identity is always a
//!   valid answer), so however many browsers follow, the encoders' memory is bounded.
//!
//! A follow still goes out live: the encoder flushes whenever the body it reads from
//! has nothing ready, so each live event and each heartbeat leaves at once, as a
//! sync-flushed block, while a catch-up that is ready all at once is compressed as a
//! whole.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use async_compression::{brotli::EncoderParams, zstd::CParameter, Level};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use futures::TryStreamExt;
use tokio::io::AsyncRead;
use tokio::sync::Semaphore;
use tokio_util::io::{ReaderStream, StreamReader};
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{Compression, CompressionLevel};

use super::connections::hold_until_dropped;

/// One level for the three: gzip 4, brotli 4, zstd 4. Brotli's default (11) costs far
/// too much per event of a follow; 4 keeps each codec fast at a ratio close to its best
/// on agent messages (docs/contract.md, "Compression and caching").
const LEVEL: i32 = 4;
/// Bodies smaller than this go as they are (tower-http's default): the framing would
/// outweigh the gain.
const MIN_BYTES: u16 = 32;
/// `/metrics` is scraped on a loopback or a private network, and left as it is.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// Log2 of the window of a follow's encoders: 64 KiB (zstd's and brotli's defaults at
/// level 4 are 2 to 4 MiB; gzip's is 32 KiB and fixed).
pub const FOLLOW_WINDOW_LOG: u32 = 16;
/// zstd's match-finder tables for a follow, log2 of their entries (level 4 uses 2^18
/// and 2^19: 3 MiB).
const FOLLOW_ZSTD_TABLE_LOG: u32 = 14;
/// Brotli's quality for a follow: at 4, a follow of the fixture session held 1.3 MiB
/// whatever the window; at 3 (or 2), 0.75 MiB, still more than gzip or zstd, so a
/// follow takes brotli only when the client accepts neither.
const FOLLOW_BROTLI_QUALITY: i32 = 3;
/// Default of `--max-compressed-follows`: follows compressed at once. Each holds its
/// encoder, up to a few hundred KiB once its window has filled (docs/capacity.md).
pub const MAX_COMPRESSED_FOLLOWS: usize = 1000;
/// Bytes a follow's encoder hands on at a time.
const FOLLOW_PIECE_BYTES: usize = 16 * 1024;

/// Follows compressed at once, `max_compressed_follows` in all.
pub type CompressedFollows = Arc<Semaphore>;

/// The middleware: a request that names no encoding (`Accept-Encoding` absent) goes
/// straight on, and its response body stays as it is. A follow is compressed by
/// [`compress_follow`]; any other answer goes through tower-http's compression.
pub async fn compress(
    State(compressed_follows): State<CompressedFollows>,
    request: Request,
    next: Next,
) -> Response {
    let Some(accepted) = request.headers().get(header::ACCEPT_ENCODING).cloned() else {
        return next.run(request).await;
    };
    let response = next.run(request).await;
    if is_follow(&response) {
        return compress_follow(response, &accepted, &compressed_follows);
    }
    let mut compressing = compressing(Answer(Some(response)));
    let mut request = Request::new(Body::empty());
    request
        .headers_mut()
        .insert(header::ACCEPT_ENCODING, accepted);
    match tower_service::Service::call(&mut compressing, request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// Whether `response` is a follow: a stream of SSE events or NDJSON lines.
fn is_follow(response: &Response) -> bool {
    let content_type = response.headers().get(header::CONTENT_TYPE);
    content_type.is_some_and(|value| {
        value.as_bytes().starts_with(b"text/event-stream")
            || value.as_bytes().starts_with(b"application/x-ndjson")
    })
}

/// A follow's answer compressed by the encoding the client prefers, while the budget
/// has room (the permit is held until the body is dropped); as it is otherwise.
fn compress_follow(
    mut response: Response,
    accepted: &HeaderValue,
    compressed_follows: &CompressedFollows,
) -> Response {
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    let Some(encoding) = FollowEncoding::preferred(accepted) else {
        return response;
    };
    let Ok(permit) = compressed_follows.clone().try_acquire_owned() else {
        crate::metrics::follow_uncompressed();
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let body = match encoding {
        FollowEncoding::Zstd => pieces(ZstdEncoder::with_quality_and_params(
            reader,
            Level::Precise(LEVEL),
            &[
                CParameter::window_log(FOLLOW_WINDOW_LOG),
                CParameter::hash_log(FOLLOW_ZSTD_TABLE_LOG),
                CParameter::chain_log(FOLLOW_ZSTD_TABLE_LOG),
            ],
        )),
        FollowEncoding::Brotli => pieces(BrotliEncoder::with_params(
            reader,
            EncoderParams::default()
                .quality(Level::Precise(FOLLOW_BROTLI_QUALITY))
                .window_size(FOLLOW_WINDOW_LOG as i32)
                .block_size(FOLLOW_WINDOW_LOG as i32),
        )),
        FollowEncoding::Gzip => pieces(GzipEncoder::with_quality(reader, Level::Precise(LEVEL))),
    };
    parts
        .headers
        .insert(header::CONTENT_ENCODING, encoding.token());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, hold_until_dropped(body, permit))
}

/// An encoder's output as a body, in pieces of at most [`FOLLOW_PIECE_BYTES`].
fn pieces<E: AsyncRead + Send + 'static>(encoder: E) -> Body {
    Body::from_stream(ReaderStream::with_capacity(encoder, FOLLOW_PIECE_BYTES))
}

/// The encodings a follow may be compressed with, least preferred first: by the
/// memory a follow's encoder holds (brotli's most, zstd's least at these settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FollowEncoding {
    Brotli,
    Gzip,
    Zstd,
}

impl FollowEncoding {
    /// The encoding `Accept-Encoding` prefers: the highest `q` (1 when absent), the
    /// most preferred on a tie; none when it names none of the three with `q` > 0.
    fn preferred(accepted: &HeaderValue) -> Option<Self> {
        let accepted = accepted.to_str().ok()?;
        accepted
            .split(',')
            .filter_map(|item| {
                let mut parts = item.split(';').map(str::trim);
                let encoding = match parts.next()?.to_ascii_lowercase().as_str() {
                    "gzip" | "x-gzip" => Self::Gzip,
                    "br" => Self::Brotli,
                    "zstd" => Self::Zstd,
                    _ => return None,
                };
                let q = parts
                    .find_map(|param| param.strip_prefix("q=").or(param.strip_prefix("Q=")))
                    .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())?;
                (q > 0.0).then_some((q, encoding))
            })
            .max_by(|(qa, a), (qb, b)| qa.total_cmp(qb).then(a.cmp(b)))
            .map(|(_, encoding)| encoding)
    }

    fn token(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Gzip => "gzip",
            Self::Brotli => "br",
            Self::Zstd => "zstd",
        })
    }
}

/// The answer the rest of the stack gave, as the service tower-http's compression
/// wraps (it reads only the request's `Accept-Encoding`, then the answer).
struct Answer(Option<Response>);

impl tower_service::Service<Request> for Answer {
    type Response = Response;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request) -> Self::Future {
        std::future::ready(Ok(self.0.take().unwrap_or_default()))
    }
}

/// tower-http's compression around `inner`: what its default predicate compresses,
/// `/metrics` excluded. tower-http adds `Vary: accept-encoding`.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn preferred(accepted: &'static str) -> Option<FollowEncoding> {
        FollowEncoding::preferred(&HeaderValue::from_static(accepted))
    }

    #[test]
    fn a_follow_takes_the_encoding_with_the_highest_q_and_the_best_on_a_tie() {
        assert_eq!(
            preferred("gzip, deflate, br, zstd"),
            Some(FollowEncoding::Zstd)
        );
        assert_eq!(preferred("gzip, br"), Some(FollowEncoding::Gzip));
        assert_eq!(preferred("br"), Some(FollowEncoding::Brotli));
        assert_eq!(preferred("zstd;q=0.5, gzip"), Some(FollowEncoding::Gzip));
        assert_eq!(
            preferred("GZIP;Q=0.2, br;q=0.1"),
            Some(FollowEncoding::Gzip)
        );
        assert_eq!(preferred("x-gzip"), Some(FollowEncoding::Gzip));
    }

    #[test]
    fn a_follow_goes_as_it_is_when_no_offered_encoding_is_accepted() {
        assert_eq!(preferred("identity"), None);
        assert_eq!(preferred("deflate, *"), None);
        assert_eq!(preferred("zstd;q=0, br;q=0"), None);
        assert_eq!(preferred("gzip;q=nonsense"), None);
        assert_eq!(preferred(""), None);
    }
}
