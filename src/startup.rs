//! Wiring: builds the store and live feed the configuration asks for, and runs the HTTP
//! server on a bound listener until a shutdown future resolves.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapters::health::{Health, TrackedStore};
use crate::adapters::memory::{InProcessFeed, MemoryStore};
use crate::adapters::postgres::PostgresStore;
use crate::adapters::redis::{RedisFeed, RedisFeedConfig};
use crate::config::{redact, BackendConfig};
use crate::http::connections::{self, Activity, ConnectionCap, Lifetime, Protocol, Tracked};
use crate::http::lean;
use crate::http::{router, AppState, HttpConfig, WriteTimeout, MAX_HEADER_FIELDS};
use crate::ports::{LiveFeed, MessageStore};
use crate::writer::Writer;

/// The two ports, chosen by configuration.
/// The pool of `agent-stream migrate`: one connection migrates, a second spares a wait.
const MIGRATE_CONNECTIONS: u32 = 2;
/// How long `agent-stream migrate` waits for a PostgreSQL connection.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(10);

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
            tracing::info!(
                "no DATABASE_URL: running on the embedded in-memory store with \
                in-process delivery (nothing survives a restart; set DATABASE_URL and REDIS_URL \
                for production)"
            );
            return Ok(Self::embedded(config.follower_buffer));
        };
        let mut store = PostgresStore::connect_lazy(
            database_url,
            config.database_max_connections,
            config.database_timeout,
        )?;
        store.migrate().await?;
        let epoch = store.epoch().await.with_context(|| {
            format!(
                "could not read the store's epoch from PostgreSQL at {}",
                redact(database_url)
            )
        })?;
        tracing::info!(database = %redact(database_url), epoch = epoch.as_str(),
            "PostgreSQL store ready (migrations applied)");
        if let Some(read_url) = config.database_read_url() {
            let replica =
                store.read_from_replica(read_url, config.database_timeout, epoch.clone())?;
            tracing::info!(replica = %replica,
                "catch-up pages and snapshots are read from the read replica (completed from the \
                primary while it lags)");
        }
        let feed: Arc<dyn LiveFeed> = match config.redis_url() {
            Some(redis_url) => {
                let feed = RedisFeed::connect_lazy(RedisFeedConfig {
                    url: redis_url.to_owned(),
                    tls_ca: config.redis_tls_ca.clone(),
                    prefix: config.redis_prefix.clone(),
                    stream_maxlen: config.stream_maxlen,
                    finished_ttl: config.finished_stream_ttl,
                    running_ttl: config.running_stream_ttl,
                    inline_bytes: config.stream_inline_bytes,
                    epoch,
                    readers: config.redis_readers,
                    follower_buffer: config.follower_buffer,
                })?;
                if let Some(error) = feed.check_at_start().await? {
                    tracing::warn!(redis = %redact(redis_url),
                        error = crate::report::one_line(&error.0),
                        "Redis does not answer yet: serving from PostgreSQL until it does");
                } else {
                    let cluster = feed.is_cluster().unwrap_or(false);
                    tracing::info!(redis = %redact(redis_url), prefix = %config.redis_prefix,
                        cluster, "Redis Streams live feed ready");
                }
                Arc::new(feed)
            }
            None => {
                tracing::info!(
                    "no REDIS_URL: live delivery is in-process, so followers on other \
                    instances see new messages only at their idle poll"
                );
                Arc::new(InProcessFeed::new(config.follower_buffer))
            }
        };
        let store = TrackedStore::new(
            store,
            Health::new(
                "PostgreSQL",
                "appends answer 503 and followers wait for it",
                "appends and follows go on where they were",
            ),
        );
        Ok(Self {
            store: Arc::new(store),
            feed,
        })
    }

    /// `agent-stream migrate`: applies the database migrations to `database_url`, and
    /// nothing else.
    pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
        PostgresStore::connect_lazy(database_url, MIGRATE_CONNECTIONS, MIGRATE_TIMEOUT)?
            .migrate()
            .await
    }

    pub fn writer(&self) -> Writer {
        Writer::new(self.store.clone(), self.feed.clone())
    }
}

/// Binds the address to serve on. A taken or unusable address says which flag changes it.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|error| {
        let why = match error.kind() {
            io::ErrorKind::AddrInUse => {
                "the port is taken by another program: stop it, or choose another address with \
                    --listen (e.g. --listen 127.0.0.1:9090)"
            }
            io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges: choose another with --listen (e.g. --listen \
                    127.0.0.1:8080)"
            }
            io::ErrorKind::AddrNotAvailable => {
                "this machine has no such address: choose one of its own with --listen (e.g. \
                    --listen 127.0.0.1:8080)"
            }
            _ => "choose another address with --listen",
        };
        anyhow::anyhow!("could not listen on {address} ({error}): {why}")
    })
}

/// Serves the API on `listener` until `shutdown` resolves. Then it stops accepting,
/// ends open follows (their clients resume elsewhere from their last stream ID), and
/// gives requests in flight `shutdown_grace` to finish.
///
/// The connection loop is hyper's own rather than `axum::serve`, for what axum does not
/// expose: a time limit on reading a request's headers (so a client that sends them
/// slowly cannot hold a connection) and hard limits on their size and count, set at
/// twice (ten times for the count) the limits the router answers in JSON; a cap on
/// connections and limits on how long one may sit without a request or with a
/// response that makes no progress (see [`connections`]); HTTP/2 keep-alive pings and
/// lower per-connection bounds than hyper's defaults.
pub async fn serve(
    listener: TcpListener,
    backends: Backends,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop_follows = CancellationToken::new();
    let limits = config.limits;
    let cap = ConnectionCap::new(config.connection_cap);
    let lifetime = Lifetime {
        first_request: limits.header_read_timeout,
        idle: limits.idle_timeout,
        stall: limits.write_timeout,
        close_grace: limits.shutdown_grace,
    };
    if crate::republish::applies(&*backends.store, &*backends.feed) {
        // Until shutdown; only the holder of the store's lease sweeps.
        tokio::spawn(crate::republish::run(
            backends.store.clone(),
            backends.feed.clone(),
            config.follow.clone(),
            stop_follows.clone(),
        ));
    }
    let app = router(AppState::new(
        backends.store,
        backends.feed,
        config,
        stop_follows.clone(),
    ));

    // hyper's own builders, each chosen by `connections::protocol` (adr/0015): hyper-util's
    // detecting builder made each HTTP/1 connection's read buffer 16 KiB instead of 8,
    // and its connection future as large as an HTTP/2 one.
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.saturating_mul(2))
        .max_headers(MAX_HEADER_FIELDS * 10);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.http2_keep_alive))
        .keep_alive_timeout(limits.http2_keep_alive)
        .max_concurrent_streams(connections::HTTP2_MAX_STREAMS)
        .max_send_buf_size(connections::HTTP2_MAX_SEND_BUF_BYTES)
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
        );
    let (http1, http2) = (Arc::new(http1), Arc::new(http2));
    let (connections, close_connections) = (TaskTracker::new(), CancellationToken::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait instead of spinning.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Past the cap, close at once: the descriptor comes straight back, and the
        // client learns now rather than after waiting in the backlog.
        let Some(slot) = cap.admit() else {
            crate::metrics::connection_refused();
            tracing::debug!(%peer, "connection refused: at --max-connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        limit_unsent(&stream, limits.tcp_unsent_bytes);
        let activity = Arc::new(Activity::default());
        let mut service = Tracked {
            inner: app.clone(),
            activity: activity.clone(),
        };
        let close = close_connections.clone();
        let (http1, http2) = (http1.clone(), http2.clone());
        connections.spawn(async move {
            let _slot = slot;
            let accepted = tokio::time::Instant::now();
            let protocol = tokio::select! {
                protocol = connections::protocol(&stream) => protocol,
                _ = tokio::time::sleep(lifetime.first_request) => Ok(None),
                _ = close.cancelled() => Ok(None),
            };
            let mut io = WriteTimeout::new(stream, limits.write_timeout);
            let ended = match protocol {
                // Closed, silent for too long, or the server stops: nothing to serve.
                Ok(None) | Err(_) => return,
                Ok(Some(Protocol::Http1)) => {
                    // Follows first, without hyper's buffers (adr/0018), until a request
                    // that is not a follow's: hyper serves the rest.
                    let lean = lean::serve(&mut io, &mut service, &activity);
                    let asked = activity.clone();
                    let ask_to_close = move |_: Pin<&mut _>| asked.ask_to_close();
                    let lean_ended = connections::drive(
                        lean,
                        ask_to_close,
                        activity.clone(),
                        lifetime,
                        accepted,
                        close.clone(),
                    )
                    .await;
                    match lean_ended {
                        Some(Ok(lean::Ended::ToHyper)) => {}
                        Some(Err(error)) => {
                            tracing::debug!(%peer, %error, "connection ended with an error");
                            return;
                        }
                        Some(Ok(lean::Ended::Closed)) | None => return,
                    }
                    // Boxed, as HTTP/2's below: a connection's task is sized for the lean
                    // responder, which serves the follows (the connections that stay open).
                    let connection = http1
                        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
                        .with_upgrades();
                    let graceful = |connection: Pin<&mut _>| {
                        http1::UpgradeableConnection::graceful_shutdown(connection)
                    };
                    Box::pin(connections::drive(
                        connection, graceful, activity, lifetime, accepted, close,
                    ))
                    .await
                }
                // Boxed: an HTTP/2 connection's state is the larger, and most are HTTP/1.
                Ok(Some(Protocol::Http2)) => {
                    let connection =
                        http2.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
                    let graceful =
                        |connection: Pin<&mut _>| http2::Connection::graceful_shutdown(connection);
                    Box::pin(connections::drive(
                        connection, graceful, activity, lifetime, accepted, close,
                    ))
                    .await
                }
            };
            if let Some(Err(error)) = ended {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stop_follows.cancel();
    close_connections.cancel();
    connections.close();
    let grace = limits.shutdown_grace;
    tokio::select! {
        _ = connections.wait() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace,
            "shutdown grace ran out: closing the connections still open"),
    }
    Ok(())
}

/// Keeps at most `bytes` of a connection's unsent data in the kernel: without it, the
/// send buffer of a client that stopped reading grows to `tcp_wmem`'s maximum (4 MiB
/// on a default Linux), for every such client.
fn limit_unsent(stream: &tokio::net::TcpStream, bytes: u32) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(bytes) {
        tracing::debug!(%error, "could not set TCP_NOTSENT_LOWAT");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, bytes);
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
