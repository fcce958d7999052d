//! The HTTP layer: the contract's calls on top of the write path and the follow
//! algorithm. [`router`] is pure, so tests can drive it in-process or bind it to a port.

mod auth;
mod compression;
pub mod connections;
mod cors;
mod error;
mod extract;
mod health;
mod messages;
mod metrics;
mod openapi;
mod processes;
mod request_log;
mod viewer;
mod write_timeout;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

pub use auth::{needs, Needs, ACCESS_TOKEN};
pub use compression::MAX_COMPRESSED_FOLLOWS;
pub use cors::parse_origin;
pub use error::ApiError;
pub use openapi::ApiDoc;
pub use write_timeout::WriteTimeout;

use crate::auth::Verifier;
use crate::config::duration;
use crate::follow::{FollowConfig, Followers};
use crate::ports::{LiveFeed, MessageStore};
use crate::writer::Writer;

/// Sizes and intervals of the HTTP surface.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest message, in bytes of its JSON.
    pub max_message_bytes: usize,
    /// Largest request body (one message, or an array of them).
    pub max_body_bytes: usize,
    /// Most messages in one append request.
    pub max_batch_messages: usize,
    /// Most follows open at once; past it, a 503.
    pub max_follows: usize,
    /// Most follows one token may have open at once; past it, a 429.
    pub max_follows_per_token: usize,
    /// Most follows compressed at once; past it, a follow goes uncompressed.
    pub max_compressed_follows: usize,
    /// Time limit of a non-streaming call.
    pub request_timeout: Duration,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// How long requests in flight may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// How long a connection's writes may stay blocked before it is closed.
    pub write_timeout: Duration,
    /// Unsent bytes a connection may hold in the kernel (Linux).
    pub tcp_unsent_bytes: u32,
    /// Most connections open at once; past it, a new one is closed at once.
    pub max_connections: usize,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Interval of HTTP/2 keep-alive pings, and how long one may go unanswered.
    pub http2_keep_alive: Duration,
    /// SSE comment or NDJSON empty line after this long without a message.
    pub heartbeat: Duration,
    pub follow: FollowConfig,
    /// Origins whose pages a browser lets read the answers (CORS); none by default.
    pub allowed_origins: Vec<HeaderValue>,
    /// Checks the tokens of protected routes (see `auth::needs`); `None` serves without
    /// auth. `ServeConfig::http` leaves it `None`: the caller sets it from `AuthConfig`.
    pub auth: Option<Arc<Verifier>>,
    /// Without auth, answer only requests whose `Host` is a loopback name (see
    /// `auth::addressed_to_loopback`): what `--no-auth` sets, against DNS rebinding.
    pub only_loopback_hosts: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_body_bytes: MAX_BODY_BYTES,
            max_batch_messages: MAX_BATCH_MESSAGES,
            max_follows: MAX_FOLLOWS,
            max_follows_per_token: MAX_FOLLOWS_PER_TOKEN,
            max_compressed_follows: MAX_COMPRESSED_FOLLOWS,
            request_timeout: duration(REQUEST_TIMEOUT),
            header_read_timeout: duration(HEADER_READ_TIMEOUT),
            max_header_bytes: MAX_HEADER_BYTES,
            shutdown_grace: duration(SHUTDOWN_GRACE),
            write_timeout: duration(WRITE_TIMEOUT),
            tcp_unsent_bytes: TCP_UNSENT_BYTES,
            max_connections: connections::connections_for(connections::headroom(
                DEFAULT_DATABASE_CONNECTIONS,
                DEFAULT_REDIS_CONNECTIONS,
            )),
            idle_timeout: duration(IDLE_TIMEOUT),
            http2_keep_alive: duration(HTTP2_KEEP_ALIVE),
            heartbeat: duration(HEARTBEAT),
            follow: FollowConfig::default(),
            allowed_origins: Vec::new(),
            auth: None,
            only_loopback_hosts: false,
        }
    }
}

// The defaults of the `serve` flags that fill `HttpConfig`, stated once: clap shows
// and uses them (`default_value_t`, or `default_value` for a duration, which clap
// parses as the flag's text would be), and `HttpConfig::default` uses them too.

/// Default of `--max-message-bytes`: 1 MiB.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Default of `--max-body-bytes`: 16 MiB.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Default of `--max-batch-messages`.
pub const MAX_BATCH_MESSAGES: usize = 1000;
/// Default of `--max-follows`.
pub const MAX_FOLLOWS: usize = 10_000;
/// Default of `--request-timeout`.
pub const REQUEST_TIMEOUT: &str = "30s";
/// Default of `--header-read-timeout`.
pub const HEADER_READ_TIMEOUT: &str = "10s";
/// Default of `--max-header-bytes`: 64 KiB.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default of `--shutdown-grace`.
pub const SHUTDOWN_GRACE: &str = "10s";
/// Default of `--write-timeout`.
pub const WRITE_TIMEOUT: &str = "30s";
/// Default of `--tcp-unsent-bytes`: 128 KiB.
pub const TCP_UNSENT_BYTES: u32 = 128 * 1024;
/// Default of `--heartbeat`.
pub const HEARTBEAT: &str = "15s";
/// Default of `--max-follows-per-token`.
pub const MAX_FOLLOWS_PER_TOKEN: usize = 100;
/// Default of `--idle-timeout`: longer than the idle timeout of common load balancers
/// (60 s), so that they, not the server, close an idle connection they hold.
pub const IDLE_TIMEOUT: &str = "75s";
/// Default of `--http2-keep-alive`.
pub const HTTP2_KEEP_ALIVE: &str = "20s";
/// The store's and Redis's connections the default connection cap makes room for
/// (`--database-max-connections`, and `--redis-readers` plus the command connection).
const DEFAULT_DATABASE_CONNECTIONS: usize = 16;
const DEFAULT_REDIS_CONNECTIONS: usize = 5;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub writer: Writer,
    pub store: Arc<dyn MessageStore>,
    pub feed: Arc<dyn LiveFeed>,
    pub config: Arc<HttpConfig>,
    /// Cancelled when the server shuts down: open follows end.
    pub shutdown: CancellationToken,
    /// One permit per open follow, `max_follows` in all.
    pub follows: Arc<Semaphore>,
    /// Follows open per token, `max_follows_per_token` each.
    pub token_follows: Arc<auth::TokenFollows>,
    /// One permit per compressed follow, `max_compressed_follows` in all.
    pub compressed_follows: compression::CompressedFollows,
    pub followers: Arc<Followers>,
    /// The process's metrics (see [`crate::metrics::install`]), rendered by `/metrics`.
    pub metrics: PrometheusHandle,
}

impl AppState {
    pub fn new(
        store: Arc<dyn MessageStore>,
        feed: Arc<dyn LiveFeed>,
        config: HttpConfig,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            writer: Writer::new(store.clone(), feed.clone()),
            followers: Followers::new(
                store.clone(),
                feed.clone(),
                config.follow.clone(),
                shutdown.clone(),
            ),
            store,
            feed,
            follows: Arc::new(Semaphore::new(config.max_follows)),
            token_follows: Arc::new(auth::TokenFollows::new(config.max_follows_per_token)),
            compressed_follows: Arc::new(Semaphore::new(config.max_compressed_follows)),
            config: Arc::new(config),
            shutdown,
            metrics: crate::metrics::install(),
        }
    }
}

pub fn router(state: AppState) -> Router {
    let cors = cors::layer(&state.config.allowed_origins);
    let router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/openapi.json", get(openapi::document))
        .route("/", get(viewer::index))
        .route("/assets/{name}", get(viewer::asset))
        .route("/processes", get(processes::list))
        .route(
            "/processes/{id}",
            get(viewer::show).put(processes::register),
        )
        .route("/processes/{id}/finish", post(processes::finish))
        .route(
            "/processes/{id}/messages",
            get(messages::read).post(messages::append),
        )
        .route(
            "/processes/{id}/messages/stream",
            get(messages::read_ndjson),
        )
        .route("/webhooks/messages", post(messages::webhook))
        // Every route above is behind auth (the rule is `auth::needs`): add routes above
        // this line. Unmatched paths get the 404 below without a check.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; the API is listed at /openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .layer(middleware::from_fn_with_state(state.clone(), head_limit))
        // Inside the request log, which then records the compressed answer.
        .layer(middleware::from_fn_with_state(
            state.compressed_follows.clone(),
            compression::compress,
        ))
        .layer(middleware::map_response(compression::weaken_etag))
        // A 503 during an outage is expected, and the outage is logged once where it is
        // tracked: per-request failures stay at debug.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_log::span)
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(middleware::map_request(request_log::keep_valid_request_id))
        .with_state(state);
    // Outermost: a preflight is answered before auth (it carries no token), and every
    // answer, errors included, names the origin so the page can read it.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Bounds the time to a response's head: the whole of a non-streaming call, and the
/// start of a follow (whose body then streams for as long as it needs).
async fn time_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the call took longer than {limit:?} and was abandoned; retry it (appends are \
                idempotent by message id)"
            ),
        )
        .into_response(),
    }
}

/// Most header fields a request may carry.
pub const MAX_HEADER_FIELDS: usize = 100;

/// Refuses a request head over `max_header_bytes` or `MAX_HEADER_FIELDS` with the
/// contract's JSON error. (The connection layer lets heads through up to twice that, and
/// answers a bare 431 only past it.)
async fn head_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let size = request.method().as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(0, |target| target.as_str().len())
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    let limit = state.config.max_header_bytes;
    if size > limit || headers.len() > MAX_HEADER_FIELDS {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request head is over {limit} bytes or {MAX_HEADER_FIELDS} fields"),
        )
        .into_response();
    }
    next.run(request).await
}
