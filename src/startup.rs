//! Wiring: builds the store and live feed the configuration asks for, and runs the HTTP
//! server on a bound listener until a shutdown future resolves.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::adapters::memory::{InProcessFeed, MemoryStore};
use crate::adapters::postgres::PostgresStore;
use crate::adapters::redis::{RedisFeed, RedisFeedConfig};
use crate::config::{redact, BackendConfig};
use crate::http::{router, AppState, HttpConfig};
use crate::ports::{LiveFeed, MessageStore};
use crate::writer::Writer;

/// The two ports, chosen by configuration.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn MessageStore>,
    pub feed: Arc<dyn LiveFeed>,
}

impl Backends {
    /// The embedded default: memory store, in-process feed.
    pub fn embedded(follower_buffer: usize) -> Self {
        Self {
            store: Arc::new(MemoryStore::new()),
            feed: Arc::new(InProcessFeed::new(follower_buffer)),
        }
    }

    /// Connects what `config` names and applies the database migrations.
    pub async fn connect(config: &BackendConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let Some(database_url) = config.database_url() else {
            tracing::info!("no DATABASE_URL: running on the embedded in-memory store with in-process delivery (nothing survives a restart; set DATABASE_URL and REDIS_URL for production)");
            return Ok(Self::embedded(config.follower_buffer));
        };
        let store = PostgresStore::connect_lazy(database_url, config.database_max_connections)?;
        store.migrate().await.with_context(|| {
            format!(
                "could not prepare PostgreSQL at {}: is it running and reachable?",
                redact(database_url)
            )
        })?;
        tracing::info!(database = %redact(database_url), "PostgreSQL store ready (migrations applied)");
        let feed: Arc<dyn LiveFeed> = match config.redis_url() {
            Some(redis_url) => {
                let feed = RedisFeed::connect_lazy(RedisFeedConfig {
                    url: redis_url.to_owned(),
                    prefix: config.redis_prefix.clone(),
                    stream_maxlen: config.stream_maxlen,
                    finished_ttl: config.finished_stream_ttl,
                    readers: config.redis_readers,
                    follower_buffer: config.follower_buffer,
                })?;
                if let Err(error) = feed.ping().await {
                    tracing::warn!(redis = %redact(redis_url), error = format!("{:#}", error.0), "Redis does not answer yet: serving from PostgreSQL until it does");
                } else {
                    tracing::info!(redis = %redact(redis_url), prefix = %config.redis_prefix, "Redis Streams live feed ready");
                }
                Arc::new(feed)
            }
            None => {
                tracing::info!("no REDIS_URL: live delivery is in-process, so followers on other instances see new messages only at their idle poll");
                Arc::new(InProcessFeed::new(config.follower_buffer))
            }
        };
        Ok(Self {
            store: Arc::new(store),
            feed,
        })
    }

    pub fn writer(&self) -> Writer {
        Writer::new(self.store.clone(), self.feed.clone())
    }
}

/// Serves the API on `listener` until `shutdown` resolves; then open follows end and
/// the server drains.
pub async fn serve(
    listener: TcpListener,
    backends: Backends,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop_follows = CancellationToken::new();
    let state = AppState::new(backends.store, backends.feed, config, stop_follows.clone());
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop_follows.cancel();
        })
        .await
        .context("the HTTP server failed")
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: ending open follows, finishing requests in flight");
}
