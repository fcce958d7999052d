//! The HTTP layer: the contract's calls on top of the write path and the follow
//! algorithm. [`router`] is pure, so tests can drive it in-process or bind it to a port.

mod error;
mod extract;
mod health;
mod messages;
mod processes;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::follow::FollowConfig;
use crate::ports::{LiveFeed, MessageStore};
use crate::writer::Writer;

/// Sizes and intervals of the HTTP surface.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest message, in bytes of its JSON.
    pub max_message_bytes: usize,
    /// Largest request body (one message, or an array of them).
    pub max_body_bytes: usize,
    /// SSE comment or NDJSON empty line after this long without a message.
    pub heartbeat: Duration,
    pub follow: FollowConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_body_bytes: 16 << 20,
            heartbeat: Duration::from_secs(15),
            follow: FollowConfig::default(),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub writer: Writer,
    pub store: Arc<dyn MessageStore>,
    pub feed: Arc<dyn LiveFeed>,
    pub config: Arc<HttpConfig>,
    /// Cancelled when the server shuts down: open follows end.
    pub shutdown: CancellationToken,
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
            store,
            feed,
            config: Arc::new(config),
            shutdown,
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(
            "/processes/{id}",
            get(processes::show).put(processes::register),
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
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see the README for the API",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
