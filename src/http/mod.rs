//! The HTTP layer: the contract's calls on top of the write path and the follow
//! algorithm. [`router`] is pure, so tests can drive it in-process or bind it to a port.

mod auth;
mod compression;
pub mod connections;
mod cors;
mod error;
mod extract;
mod health;
pub mod lean;
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
use clap::Args;
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
use crate::config::{self, duration};
use crate::follow::{FollowConfig, Followers};
use crate::ports::{LiveFeed, MessageStore};
use crate::writer::Writer;

/// What the HTTP server runs with: the `serve` flag groups as given ([`Limits`],
/// [`FollowConfig`]) and the few values `ServeConfig::http` works out from the flags at
/// start-up. Tests and benches start from [`Default`] and change what they need.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub limits: Limits,
    pub follow: FollowConfig,
    /// Most connections open at once; past it, a new one is closed at once: what
    /// `--max-connections` asks, within what the descriptor limit leaves.
    pub connection_cap: usize,
    /// Origins whose pages a browser lets read the answers (CORS), `--allow-origin`
    /// checked; none by default.
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
            limits: Limits::default(),
            follow: FollowConfig::default(),
            connection_cap: connections::connections_for(connections::headroom(
                DEFAULT_DATABASE_CONNECTIONS,
                DEFAULT_REDIS_CONNECTIONS,
            )),
            allowed_origins: Vec::new(),
            auth: None,
            only_loopback_hosts: false,
        }
    }
}

/// What a request, a connection and the instance may take, in bytes, counts and time:
/// the flags under "Limits" in `serve --help` (and `--shutdown-grace`, shown under
/// "Listening"), with the same defaults in [`Default`]. Each field's doc comment is its
/// flag's help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
#[command(next_help_heading = "Limits")]
pub struct Limits {
    /// Largest message, in bytes of its JSON.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_MAX_MESSAGE_BYTES",
        default_value_t = MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Largest request body, in bytes (one message or an array of them).
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_MAX_BODY_BYTES",
        default_value_t = MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Messages in one append request (an array), at most.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_MAX_BATCH_MESSAGES",
        default_value_t = MAX_BATCH_MESSAGES)]
    pub max_batch_messages: usize,

    /// Follows open at once on this instance, at most; past it, a 503.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_MAX_FOLLOWS",
        default_value_t = MAX_FOLLOWS)]
    pub max_follows: usize,

    /// Follows one token may have open at once on this instance, at most; past it, a
    /// 429 (so one token cannot take every --max-follows slot).
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_MAX_FOLLOWS_PER_TOKEN",
        default_value_t = MAX_FOLLOWS_PER_TOKEN)]
    pub max_follows_per_token: usize,

    /// Follows compressed at once, at most (each holds its encoder, up to a few hundred
    /// KiB); past it, a follow goes uncompressed. 0 never compresses a follow.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_MAX_COMPRESSED_FOLLOWS",
        default_value_t = MAX_COMPRESSED_FOLLOWS)]
    pub max_compressed_follows: usize,

    /// Time limit of a non-streaming call (appends, snapshots, …); past it, a 503.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_REQUEST_TIMEOUT",
        default_value = REQUEST_TIMEOUT, value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Time a client has to send a request's headers; past it, the connection is closed.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_HEADER_READ_TIMEOUT",
        default_value = HEADER_READ_TIMEOUT, value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Largest request head (request line and headers), in bytes.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_MAX_HEADER_BYTES",
        default_value_t = MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,

    /// A connection whose writes stay blocked this long (its client stopped reading), or
    /// with a response that makes no progress this long (an HTTP/2 stream whose window
    /// stays shut), is closed; the client resumes from its cursor when it reconnects.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_WRITE_TIMEOUT",
        default_value = WRITE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Bytes a connection may hold in the kernel not yet sent (Linux
    /// `TCP_NOTSENT_LOWAT`): bounds what a client that stopped reading costs the kernel.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_TCP_UNSENT_BYTES",
        default_value_t = TCP_UNSENT_BYTES)]
    pub tcp_unsent_bytes: u32,

    /// Connections open at once, at most; past it, a new connection is closed at once.
    /// Default: the descriptor limit (`ulimit -n`) less room for the PostgreSQL and
    /// Redis connections and 64 more.
    // As given: the server serves `HttpConfig::connection_cap`, worked out from it.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// A connection with no request in flight this long is closed (HTTP/1 keep-alive
    /// and HTTP/2 alike). A connection that has not started a request within
    /// --header-read-timeout of being accepted is closed then.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_IDLE_TIMEOUT",
        default_value = IDLE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Interval of HTTP/2 keep-alive pings; a connection whose client does not answer
    /// one within as long is closed.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_HTTP2_KEEP_ALIVE",
        default_value = HTTP2_KEEP_ALIVE, value_parser = humantime::parse_duration)]
    pub http2_keep_alive: Duration,

    /// On SIGTERM, how long requests in flight may take to finish.
    // Shown beside --listen, where an operator looks for how the server starts and stops.
    #[arg(long, help_heading = "Listening", hide_short_help = true,
        env = "AGENT_STREAM_SHUTDOWN_GRACE", default_value = SHUTDOWN_GRACE,
        value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl Default for Limits {
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
            write_timeout: duration(WRITE_TIMEOUT),
            tcp_unsent_bytes: TCP_UNSENT_BYTES,
            max_connections: None,
            idle_timeout: duration(IDLE_TIMEOUT),
            http2_keep_alive: duration(HTTP2_KEEP_ALIVE),
            shutdown_grace: duration(SHUTDOWN_GRACE),
        }
    }
}

// The defaults of the `Limits` flags, stated once: clap shows and uses them
// (`default_value_t`, or `default_value` for a duration, which clap parses as the
// flag's text would be), and `Limits::default` uses them too.

/// Default of `--max-message-bytes`: 1 MiB.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Default of `--max-body-bytes`: 16 MiB.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Default of `--max-batch-messages`.
pub const MAX_BATCH_MESSAGES: usize = 1000;
/// Default of `--max-follows`.
pub const MAX_FOLLOWS: usize = 10_000;
/// Default of `--max-follows-per-token`.
pub const MAX_FOLLOWS_PER_TOKEN: usize = 100;
/// Default of `--request-timeout`.
pub const REQUEST_TIMEOUT: &str = "30s";
/// Default of `--header-read-timeout`.
pub const HEADER_READ_TIMEOUT: &str = "10s";
/// Default of `--max-header-bytes`: 64 KiB.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default of `--write-timeout`.
pub const WRITE_TIMEOUT: &str = "30s";
/// Default of `--tcp-unsent-bytes`: 128 KiB.
pub const TCP_UNSENT_BYTES: u32 = 128 * 1024;
/// Default of `--idle-timeout`: longer than the idle timeout of common load balancers
/// (60 s), so that they, not the server, close an idle connection they hold.
pub const IDLE_TIMEOUT: &str = "75s";
/// Default of `--http2-keep-alive`.
pub const HTTP2_KEEP_ALIVE: &str = "20s";
/// Default of `--shutdown-grace`.
pub const SHUTDOWN_GRACE: &str = "10s";
/// The store's and Redis's connections the default connection cap makes room for
/// (`--database-max-connections`, and `--redis-readers` plus the command connection).
const DEFAULT_DATABASE_CONNECTIONS: usize = config::DATABASE_MAX_CONNECTIONS as usize;
const DEFAULT_REDIS_CONNECTIONS: usize = config::REDIS_READERS + 1;

/// What every handler shares: one allocation, so that the clone each layer and
/// handler takes per request is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
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
        Self(Arc::new(Shared {
            writer: Writer::new(store.clone(), feed.clone()),
            followers: Followers::new(
                store.clone(),
                feed.clone(),
                config.follow.clone(),
                shutdown.clone(),
            ),
            store,
            feed,
            follows: Arc::new(Semaphore::new(config.limits.max_follows)),
            token_follows: Arc::new(auth::TokenFollows::new(config.limits.max_follows_per_token)),
            compressed_follows: Arc::new(Semaphore::new(config.limits.max_compressed_follows)),
            config: Arc::new(config),
            shutdown,
            metrics: crate::metrics::install(),
        }))
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
    let limit = state.config.limits.request_timeout;
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
    let limit = state.config.limits.max_header_bytes;
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
