//! Configuration: typed structs filled from flags with environment fallbacks, with
//! defaults that work on a laptop, validated at start. URLs, which may hold
//! credentials, are never printed (`hide_env_values`, and [`redact`] in logs and errors).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderValue;
use clap::Args;

use crate::auth::AuthConfig;
use crate::follow::{self, FollowConfig};
use crate::http::{self, connections, parse_origin, HttpConfig};

/// Where messages are stored and how they travel.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "PostgreSQL and Redis")]
pub struct BackendConfig {
    /// PostgreSQL URL. Without it (and without REDIS_URL), the embedded in-memory
    /// store is used: nothing survives a restart.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PostgreSQL URL of a streaming read replica of DATABASE_URL's database: catch-up
    /// pages and snapshots are read from it (statuses and writes stay on the primary);
    /// a replica that lags is completed from the primary, one that fails is bypassed.
    #[arg(
        long,
        help_heading = "PostgreSQL and Redis",
        hide_short_help = true,
        env = "DATABASE_READ_URL",
        hide_env_values = true
    )]
    pub database_read_url: Option<String>,

    /// Redis URL for live delivery over Redis Streams. Needs DATABASE_URL: Redis is an
    /// accelerator, never the store. Without it, delivery is in-process (one instance).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// PEM file of a private CA that signed Redis's certificate, trusted beside the
    /// system's roots (REDIS_URL must be `rediss://`).
    #[arg(long, env = "AGENT_STREAM_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,

    /// Prefix of every Redis key, for a shared Redis (e.g. `agent-stream:`).
    #[arg(
        long,
        hide_short_help = true,
        env = "AGENT_STREAM_REDIS_PREFIX",
        default_value = ""
    )]
    pub redis_prefix: String,

    /// Entries kept per Redis stream (`XADD … MAXLEN ~ N`).
    #[arg(
        long,
        hide_short_help = true,
        env = "AGENT_STREAM_STREAM_MAXLEN",
        default_value_t = 1000
    )]
    pub stream_maxlen: u64,

    /// How long a finished process's Redis stream is kept (`EXPIRE`), e.g. `1h`, `30m`.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_FINISHED_STREAM_TTL",
        default_value = "1h", value_parser = humantime::parse_duration)]
    pub finished_stream_ttl: Duration,

    /// How long a running process's Redis stream is kept after its last append
    /// (`EXPIRE`, refreshed by each append), so an abandoned process's stream goes.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_RUNNING_STREAM_TTL",
        default_value = "24h", value_parser = humantime::parse_duration)]
    pub running_stream_ttl: Duration,

    /// Largest message, in bytes of its JSON, that goes through Redis whole; a larger
    /// one goes as its seq alone and followers read it from PostgreSQL. A stream then
    /// holds at most --stream-maxlen times this many bytes of messages.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_STREAM_INLINE_BYTES",
        default_value_t = STREAM_INLINE_BYTES)]
    pub stream_inline_bytes: usize,

    /// Redis connections that read streams (each blocks in one XREAD for many
    /// processes), so connections stay bounded however many clients follow.
    #[arg(
        long,
        hide_short_help = true,
        env = "AGENT_STREAM_REDIS_READERS",
        default_value_t = 4
    )]
    pub redis_readers: usize,

    /// How long a call waits for a PostgreSQL connection before it answers 503 (this
    /// is also how long it takes to notice that PostgreSQL went away).
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_DATABASE_TIMEOUT", default_value = "1s",
        value_parser = humantime::parse_duration)]
    pub database_timeout: Duration,

    /// PostgreSQL connections in the pool.
    #[arg(
        long,
        hide_short_help = true,
        env = "AGENT_STREAM_DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub database_max_connections: u32,

    /// Live events a follower may fall behind before it catches up from the store.
    #[arg(
        long,
        hide_short_help = true,
        env = "AGENT_STREAM_FOLLOWER_BUFFER",
        default_value_t = 256
    )]
    pub follower_buffer: usize,
}

/// `agent-stream serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(
        long,
        help_heading = "Listening",
        env = "AGENT_STREAM_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub backend: BackendConfig,

    #[command(flatten)]
    pub auth: AuthConfig,

    /// How long a follower waits on a silent live feed before it checks how far the
    /// process goes (with Redis: in its stream; else, or while Redis is down, in the
    /// store), and how often one instance republishes what Redis missed.
    #[arg(long, help_heading = "Follows", hide_short_help = true, env = "AGENT_STREAM_IDLE_POLL",
        default_value = follow::IDLE_POLL, value_parser = humantime::parse_duration)]
    pub idle_poll: Duration,

    /// Origins whose pages may call the API from a browser (CORS), exactly as the
    /// browser sends them, e.g. `https://app.example.com`: repeat the flag or separate
    /// them with commas. None by default: only pages of the service's own origin.
    #[arg(
        long = "allow-origin",
        help_heading = "Listening",
        hide_short_help = true,
        env = "AGENT_STREAM_ALLOW_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allow_origins: Vec<String>,

    /// Interval of the SSE comment / NDJSON empty line sent while a follow is idle.
    #[arg(long, help_heading = "Follows", hide_short_help = true, env = "AGENT_STREAM_HEARTBEAT",
        default_value = http::HEARTBEAT, value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// Largest message, in bytes of its JSON.
    #[arg(long, help_heading = "Limits", hide_short_help = true,
        env = "AGENT_STREAM_MAX_MESSAGE_BYTES", default_value_t = http::MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Largest request body, in bytes (one message or an array of them).
    #[arg(long, help_heading = "Limits", hide_short_help = true,
        env = "AGENT_STREAM_MAX_BODY_BYTES", default_value_t = http::MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Messages of a catch-up's first read from the store (each full page doubles the
    /// next, up to 16 times this, within `--catch-up-page-bytes`).
    #[arg(
        long,
        help_heading = "Follows",
        hide_short_help = true,
        env = "AGENT_STREAM_CATCH_UP_PAGE",
        default_value_t = follow::CATCH_UP_PAGE
    )]
    pub catch_up_page: usize,

    /// Bytes per catch-up read from the store (at least one message is read): bounds
    /// what a follower whose client stopped reading holds.
    #[arg(long, help_heading = "Follows", hide_short_help = true,
        env = "AGENT_STREAM_CATCH_UP_PAGE_BYTES", default_value_t = follow::CATCH_UP_PAGE_BYTES)]
    pub catch_up_page_bytes: usize,

    /// How often a follower asks the store while the live feed (Redis) is down.
    #[arg(long, help_heading = "Follows", hide_short_help = true,
        env = "AGENT_STREAM_DEGRADED_POLL", default_value = follow::DEGRADED_POLL,
        value_parser = humantime::parse_duration)]
    pub degraded_poll: Duration,

    /// Messages in one append request (an array), at most.
    #[arg(
        long,
        help_heading = "Limits",
        hide_short_help = true,
        env = "AGENT_STREAM_MAX_BATCH_MESSAGES",
        default_value_t = http::MAX_BATCH_MESSAGES
    )]
    pub max_batch_messages: usize,

    /// Follows open at once on this instance, at most; past it, a 503.
    #[arg(
        long,
        help_heading = "Limits",
        hide_short_help = true,
        env = "AGENT_STREAM_MAX_FOLLOWS",
        default_value_t = http::MAX_FOLLOWS
    )]
    pub max_follows: usize,

    /// Follows one token may have open at once on this instance, at most; past it, a
    /// 429 (so one token cannot take every --max-follows slot).
    #[arg(long, help_heading = "Limits", hide_short_help = true,
        env = "AGENT_STREAM_MAX_FOLLOWS_PER_TOKEN", default_value_t = http::MAX_FOLLOWS_PER_TOKEN)]
    pub max_follows_per_token: usize,

    /// Time limit of a non-streaming call (appends, snapshots, …); past it, a 503.
    #[arg(long, help_heading = "Limits", hide_short_help = true,
        env = "AGENT_STREAM_REQUEST_TIMEOUT", default_value = http::REQUEST_TIMEOUT,
        value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Time a client has to send a request's headers; past it, the connection is closed.
    #[arg(long, help_heading = "Limits", hide_short_help = true,
        env = "AGENT_STREAM_HEADER_READ_TIMEOUT", default_value = http::HEADER_READ_TIMEOUT,
        value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Largest request head (request line and headers), in bytes.
    #[arg(long, help_heading = "Limits", hide_short_help = true,
        env = "AGENT_STREAM_MAX_HEADER_BYTES", default_value_t = http::MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,

    /// A connection whose writes stay blocked this long (its client stopped reading), or
    /// with a response that makes no progress this long (an HTTP/2 stream whose window
    /// stays shut), is closed; the client resumes from its cursor when it reconnects.
    #[arg(long, help_heading = "Limits", hide_short_help = true, env = "AGENT_STREAM_WRITE_TIMEOUT",
        default_value = http::WRITE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Bytes a connection may hold in the kernel not yet sent (Linux
    /// `TCP_NOTSENT_LOWAT`): bounds what a client that stopped reading costs the kernel.
    #[arg(long, help_heading = "Limits", hide_short_help = true,
        env = "AGENT_STREAM_TCP_UNSENT_BYTES", default_value_t = http::TCP_UNSENT_BYTES)]
    pub tcp_unsent_bytes: u32,

    /// Connections open at once, at most; past it, a new connection is closed at once.
    /// Default: the descriptor limit (`ulimit -n`) less room for the PostgreSQL and
    /// Redis connections and 64 more.
    #[arg(
        long,
        help_heading = "Limits",
        hide_short_help = true,
        env = "AGENT_STREAM_MAX_CONNECTIONS"
    )]
    pub max_connections: Option<usize>,

    /// A connection with no request in flight this long is closed (HTTP/1 keep-alive
    /// and HTTP/2 alike). A connection that has not started a request within
    /// --header-read-timeout of being accepted is closed then.
    #[arg(long, help_heading = "Limits", hide_short_help = true, env = "AGENT_STREAM_IDLE_TIMEOUT",
        default_value = http::IDLE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Interval of HTTP/2 keep-alive pings; a connection whose client does not answer
    /// one within as long is closed.
    #[arg(long, help_heading = "Limits", hide_short_help = true,
        env = "AGENT_STREAM_HTTP2_KEEP_ALIVE", default_value = http::HTTP2_KEEP_ALIVE,
        value_parser = humantime::parse_duration)]
    pub http2_keep_alive: Duration,

    /// On SIGTERM, how long requests in flight may take to finish.
    #[arg(long, help_heading = "Listening", hide_short_help = true,
        env = "AGENT_STREAM_SHUTDOWN_GRACE", default_value = http::SHUTDOWN_GRACE,
        value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl BackendConfig {
    /// The PostgreSQL URL; an empty one (`DATABASE_URL=`) counts as none.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref().filter(|url| !url.is_empty())
    }

    /// The read replica's URL; an empty one (`DATABASE_READ_URL=`) counts as none.
    pub fn database_read_url(&self) -> Option<&str> {
        self.database_read_url
            .as_deref()
            .filter(|url| !url.is_empty())
    }

    /// The Redis URL; an empty one (`REDIS_URL=`) counts as none.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_deref().filter(|url| !url.is_empty())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.database_url().is_some() || self.redis_url().is_none(),
            "REDIS_URL is set but DATABASE_URL is not: Redis only speeds up delivery, PostgreSQL \
                stores the messages. Set DATABASE_URL too, or unset REDIS_URL to run on the \
                embedded in-memory store"
        );
        anyhow::ensure!(
            self.database_url().is_some() || self.database_read_url().is_none(),
            "DATABASE_READ_URL is set but DATABASE_URL is not: the replica only takes reads off \
                the primary. Set DATABASE_URL too, or unset DATABASE_READ_URL"
        );
        anyhow::ensure!(
            self.redis_tls_ca.is_none()
                || self
                    .redis_url()
                    .is_some_and(|url| url.starts_with(REDIS_TLS_SCHEME)),
            "--redis-tls-ca is set but REDIS_URL does not start with {REDIS_TLS_SCHEME}: the CA \
                is only used over TLS"
        );
        anyhow::ensure!(
            self.stream_maxlen >= 1,
            "--stream-maxlen must be at least 1"
        );
        anyhow::ensure!(
            (1..=15).contains(&self.redis_readers),
            "--redis-readers must be from 1 to 15 (each holds one Redis connection)"
        );
        anyhow::ensure!(
            self.database_timeout >= Duration::from_millis(100),
            "--database-timeout must be at least 100ms"
        );
        anyhow::ensure!(
            self.database_max_connections >= 2,
            "--database-max-connections must be at least 2"
        );
        anyhow::ensure!(
            self.follower_buffer >= 1,
            "--follower-buffer must be at least 1"
        );
        anyhow::ensure!(
            self.finished_stream_ttl >= Duration::from_secs(1),
            "--finished-stream-ttl must be at least 1s"
        );
        anyhow::ensure!(
            self.running_stream_ttl >= Duration::from_secs(1),
            "--running-stream-ttl must be at least 1s"
        );
        Ok(())
    }
}

impl ServeConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.backend.validate()?;
        anyhow::ensure!(
            self.idle_poll >= Duration::from_millis(10),
            "--idle-poll must be at least 10ms"
        );
        anyhow::ensure!(
            self.heartbeat >= Duration::from_secs(1),
            "--heartbeat must be at least 1s"
        );
        anyhow::ensure!(
            self.max_message_bytes >= 1024,
            "--max-message-bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.max_body_bytes >= self.max_message_bytes,
            "--max-body-bytes must be at least --max-message-bytes"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.catch_up_page),
            "--catch-up-page must be from 1 to 10000"
        );
        anyhow::ensure!(
            self.catch_up_page_bytes >= 1024,
            "--catch-up-page-bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.degraded_poll >= Duration::from_millis(10),
            "--degraded-poll must be at least 10ms"
        );
        anyhow::ensure!(
            self.max_batch_messages >= 1,
            "--max-batch-messages must be at least 1"
        );
        anyhow::ensure!(self.max_follows >= 1, "--max-follows must be at least 1");
        anyhow::ensure!(
            self.max_follows_per_token >= 1,
            "--max-follows-per-token must be at least 1"
        );
        anyhow::ensure!(
            self.request_timeout >= Duration::from_millis(100),
            "--request-timeout must be at least 100ms"
        );
        anyhow::ensure!(
            self.header_read_timeout >= Duration::from_millis(100),
            "--header-read-timeout must be at least 100ms"
        );
        anyhow::ensure!(
            (8192..=1 << 20).contains(&self.max_header_bytes),
            "--max-header-bytes must be from 8192 to 1048576"
        );
        anyhow::ensure!(
            self.write_timeout >= Duration::from_millis(100),
            "--write-timeout must be at least 100ms"
        );
        anyhow::ensure!(
            self.tcp_unsent_bytes >= 16 * 1024,
            "--tcp-unsent-bytes must be at least 16384"
        );
        anyhow::ensure!(
            self.max_connections.is_none_or(|max| max >= 1),
            "--max-connections must be at least 1"
        );
        anyhow::ensure!(
            self.idle_timeout >= Duration::from_millis(100),
            "--idle-timeout must be at least 100ms"
        );
        anyhow::ensure!(
            self.http2_keep_alive >= Duration::from_secs(1),
            "--http2-keep-alive must be at least 1s"
        );
        self.allowed_origins()?;
        Ok(())
    }

    /// Connections to serve at once: `--max-connections`, but never more than the
    /// descriptor limit leaves once the store's and Redis's connections have theirs.
    pub fn max_connections(&self) -> usize {
        let backend = &self.backend;
        let redis = if backend.redis_url().is_some() {
            // A Redis Cluster, found out only once it answers, takes one reader per
            // bucket and one command connection per node: keep room for that.
            backend
                .redis_readers
                .max(usize::from(crate::adapters::redis::keys::CLUSTER_BUCKETS))
                + CLUSTER_COMMAND_CONNECTIONS
        } else {
            0
        };
        let database = if backend.database_url().is_some() {
            // The read replica's pool is as large as the primary's.
            let pools = if backend.database_read_url().is_some() {
                2
            } else {
                1
            };
            pools * backend.database_max_connections as usize
        } else {
            0
        };
        let room = connections::connections_for(connections::headroom(database, redis));
        match self.max_connections {
            Some(max) if max > room => {
                tracing::warn!(
                    asked = max,
                    serving = room,
                    "--max-connections is more than the descriptor limit (ulimit -n) leaves room \
                    for: serving at most {room}; raise the limit to serve more"
                );
                room
            }
            Some(max) => max,
            None => room,
        }
    }

    /// `--allow-origin`, checked; empty entries (`a,,b`, or the variable set empty)
    /// are passed over.
    pub fn allowed_origins(&self) -> anyhow::Result<Vec<HeaderValue>> {
        self.allow_origins
            .iter()
            .map(|origin| origin.trim())
            .filter(|origin| !origin.is_empty())
            .map(|origin| {
                parse_origin(origin).map_err(|why| anyhow::anyhow!("--allow-origin: {why}"))
            })
            .collect()
    }

    /// The HTTP configuration, without auth: the caller sets `auth` from
    /// `self.auth`, which needs the address it listens on.
    pub fn http(&self) -> HttpConfig {
        HttpConfig {
            max_message_bytes: self.max_message_bytes,
            max_body_bytes: self.max_body_bytes,
            max_batch_messages: self.max_batch_messages,
            max_follows: self.max_follows,
            max_follows_per_token: self.max_follows_per_token,
            request_timeout: self.request_timeout,
            header_read_timeout: self.header_read_timeout,
            max_header_bytes: self.max_header_bytes,
            shutdown_grace: self.shutdown_grace,
            write_timeout: self.write_timeout,
            tcp_unsent_bytes: self.tcp_unsent_bytes,
            max_connections: self.max_connections(),
            idle_timeout: self.idle_timeout,
            http2_keep_alive: self.http2_keep_alive,
            heartbeat: self.heartbeat,
            // Checked by `validate`, which runs first.
            allowed_origins: self.allowed_origins().unwrap_or_default(),
            follow: FollowConfig {
                page_size: self.catch_up_page,
                page_bytes: self.catch_up_page_bytes,
                idle_poll: self.idle_poll,
                degraded_poll: self.degraded_poll,
                // Half the store's connections: appends always find one.
                store_reads: (self.backend.database_max_connections as usize / 2).max(1),
                // Half of those may be held by catch-up streams, each for a while.
                streams: (self.backend.database_max_connections as usize / 4).max(1),
                ..FollowConfig::default()
            },
            auth: None,
            only_loopback_hosts: self.auth.no_auth,
        }
    }
}

/// Default of `--stream-inline-bytes`: 64 KiB.
pub const STREAM_INLINE_BYTES: usize = 64 * 1024;

/// A default duration, written as its flag would be (`"1s"`), as a [`Duration`]: so
/// that clap's `default_value` and the `Default` impls state each default once.
pub fn duration(default: &'static str) -> Duration {
    // Every default is parsed at once by the test below: this never fails at run time.
    humantime::parse_duration(default).expect("a default duration parses")
}

/// Descriptors kept for Redis command connections: one on a single server, one per
/// node of a Redis Cluster (this many nodes' worth).
const CLUSTER_COMMAND_CONNECTIONS: usize = 16;

/// The scheme of a Redis URL over TLS.
pub const REDIS_TLS_SCHEME: &str = "rediss://";

/// Query parameters whose values [`redact`] shows: settings that are never secret.
/// Every other value is masked, so a secret under a name not foreseen here (libpq's
/// `sslpassword`, an `sslkey` given inline, a `token`, …) is masked too.
pub const SHOWN_URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "db",
    "application_name",
    "connect_timeout",
    "statement-cache-capacity",
    "target_session_attrs",
    "protocol",
];

/// What stands for a secret in a redacted URL.
const MASK: &str = "***";

/// A URL without its secrets, for logs and errors: the user and password
/// (`user:password@` becomes `***@`), the value of every query parameter not in
/// [`SHOWN_URL_PARAMETERS`] (`?password=…`, `?sslpassword=…`, …), and a fragment
/// (but redis's `#insecure`).
pub fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(unparsable URL)".to_owned();
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Fails only for URLs that cannot have a user (`unix:`, `data:`): none to hide.
        let _ = parsed.set_password(None);
        let _ = parsed.set_username(MASK);
    }
    if let Some(query) = parsed.query() {
        // Pair by pair as written, so what is shown reads as it was given.
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| {
                let (key, _) = pair.split_once('=').unwrap_or((pair, ""));
                let name: String = url::form_urlencoded::parse(key.as_bytes())
                    .map(|(name, _)| name.into_owned())
                    .collect();
                if SHOWN_URL_PARAMETERS.contains(&name.as_str()) {
                    pair.to_owned()
                } else {
                    format!("{key}={MASK}")
                }
            })
            .collect();
        parsed.set_query(Some(&redacted.join("&")));
    }
    if parsed
        .fragment()
        .is_some_and(|fragment| fragment != "insecure")
    {
        parsed.set_fragment(Some(MASK));
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::{redact, BackendConfig, ServeConfig, STREAM_INLINE_BYTES};
    use crate::http::HttpConfig;

    #[test]
    fn credentials_never_reach_the_log() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x"),
            "postgres://***@db:5432/x"
        );
        assert_eq!(
            redact("redis://:secret@cache:6379/0"),
            "redis://***@cache:6379/0"
        );
        assert_eq!(redact("rediss://token@cache/"), "rediss://***@cache/");
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }

    #[test]
    fn query_values_are_masked_unless_they_are_known_settings() {
        assert_eq!(
            redact("postgres://db/x?sslmode=verify-full&password=s1&sslpassword=s2&sslrootcert=/ca.pem"),
            "postgres://db/x?sslmode=verify-full&password=***&sslpassword=***&sslrootcert=/ca.pem"
        );
        assert_eq!(
            redact("rediss://cache:6380/?password=s1&Token=s2&api-key=s3&db=2"),
            "rediss://cache:6380/?password=***&Token=***&api-key=***&db=2"
        );
        let inline_key = "postgres://db/x?sslkey=-----BEGIN%20PRIVATE%20KEY-----abc";
        assert!(!redact(inline_key).contains("abc"));
    }

    #[test]
    fn a_fragment_is_masked_but_for_redis_s_insecure() {
        assert_eq!(
            redact("rediss://cache/#insecure"),
            "rediss://cache/#insecure"
        );
        assert_eq!(redact("redis://cache/#s3cret"), "redis://cache/#***");
    }

    #[test]
    fn a_redis_ca_needs_a_rediss_url() {
        let mut config = BackendConfig {
            database_url: Some("postgres://db/x".into()),
            database_read_url: None,
            redis_url: Some("redis://cache/".into()),
            redis_tls_ca: Some("/ca.pem".into()),
            redis_prefix: String::new(),
            stream_maxlen: 1000,
            finished_stream_ttl: Duration::from_secs(3600),
            running_stream_ttl: Duration::from_secs(3600),
            stream_inline_bytes: STREAM_INLINE_BYTES,
            redis_readers: 4,
            database_timeout: Duration::from_secs(1),
            database_max_connections: 16,
            follower_buffer: 256,
        };
        let refused = config.validate().unwrap_err().to_string();
        assert!(
            refused.starts_with("--redis-tls-ca is set but REDIS_URL"),
            "{refused}"
        );
        config.redis_url = Some("rediss://cache/".into());
        assert!(config.validate().is_ok());
        config.database_read_url = Some("postgres://replica/x".into());
        assert!(config.validate().is_ok());
        config.database_url = None;
        config.redis_url = None;
        config.redis_tls_ca = None;
        let refused = config.validate().unwrap_err().to_string();
        assert!(
            refused.starts_with("DATABASE_READ_URL is set but DATABASE_URL is not"),
            "{refused}"
        );
    }

    #[test]
    fn the_serve_flags_default_to_what_the_configs_default_to() {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let flags = Serve::parse_from(["serve"]).serve.http();
        let http = HttpConfig::default();
        assert_eq!(flags.max_message_bytes, http.max_message_bytes);
        assert_eq!(flags.max_body_bytes, http.max_body_bytes);
        assert_eq!(flags.max_batch_messages, http.max_batch_messages);
        assert_eq!(flags.max_follows, http.max_follows);
        assert_eq!(flags.max_follows_per_token, http.max_follows_per_token);
        assert_eq!(flags.request_timeout, http.request_timeout);
        assert_eq!(flags.header_read_timeout, http.header_read_timeout);
        assert_eq!(flags.max_header_bytes, http.max_header_bytes);
        assert_eq!(flags.shutdown_grace, http.shutdown_grace);
        assert_eq!(flags.write_timeout, http.write_timeout);
        assert_eq!(flags.tcp_unsent_bytes, http.tcp_unsent_bytes);
        assert_eq!(flags.idle_timeout, http.idle_timeout);
        assert_eq!(flags.http2_keep_alive, http.http2_keep_alive);
        assert_eq!(flags.heartbeat, http.heartbeat);
        assert_eq!(flags.follow.page_size, http.follow.page_size);
        assert_eq!(flags.follow.page_bytes, http.follow.page_bytes);
        assert_eq!(flags.follow.idle_poll, http.follow.idle_poll);
        assert_eq!(flags.follow.degraded_poll, http.follow.degraded_poll);
    }

    #[test]
    fn a_url_that_does_not_parse_is_not_echoed() {
        assert_eq!(redact("postgres://u:secret@db:port/x"), "(unparsable URL)");
        assert_eq!(redact("secret"), "(unparsable URL)");
    }
}
