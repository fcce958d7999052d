//! Configuration: typed structs filled from flags with environment fallbacks, with
//! defaults that work on a laptop, validated at start. URLs, which may hold
//! credentials, are never printed (`hide_env_values`, and [`redact`] in logs and errors).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderValue;
use clap::Args;

use crate::auth::AuthConfig;
use crate::follow::FollowConfig;
use crate::http::{connections, parse_origin, HttpConfig, Limits};

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
        default_value_t = STREAM_MAXLEN
    )]
    pub stream_maxlen: u64,

    /// How long a finished process's Redis stream is kept (`EXPIRE`), e.g. `1h`, `30m`.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_FINISHED_STREAM_TTL",
        default_value = FINISHED_STREAM_TTL, value_parser = humantime::parse_duration)]
    pub finished_stream_ttl: Duration,

    /// How long a running process's Redis stream is kept after its last append
    /// (`EXPIRE`, refreshed by each append), so an abandoned process's stream goes.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_RUNNING_STREAM_TTL",
        default_value = RUNNING_STREAM_TTL, value_parser = humantime::parse_duration)]
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
        default_value_t = REDIS_READERS
    )]
    pub redis_readers: usize,

    /// How long a call waits for a PostgreSQL connection before it answers 503 (this
    /// is also how long it takes to notice that PostgreSQL went away).
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_DATABASE_TIMEOUT", default_value = DATABASE_TIMEOUT,
        value_parser = humantime::parse_duration)]
    pub database_timeout: Duration,

    /// PostgreSQL connections in the pool.
    #[arg(
        long,
        hide_short_help = true,
        env = "AGENT_STREAM_DATABASE_MAX_CONNECTIONS",
        default_value_t = DATABASE_MAX_CONNECTIONS
    )]
    pub database_max_connections: u32,

    /// Live events a follower may fall behind before it catches up from the store.
    #[arg(
        long,
        hide_short_help = true,
        env = "AGENT_STREAM_FOLLOWER_BUFFER",
        default_value_t = FOLLOWER_BUFFER
    )]
    pub follower_buffer: usize,
}

/// `agent-stream serve`: where it listens, and the flag groups, each under its own
/// heading in `--help`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(
        long,
        help_heading = "Listening",
        env = "AGENT_STREAM_LISTEN",
        default_value = LISTEN
    )]
    pub listen: SocketAddr,

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

    #[command(flatten)]
    pub backend: BackendConfig,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub follow: FollowConfig,

    #[command(flatten)]
    pub limits: Limits,
}

/// Default of `--listen`.
pub const LISTEN: &str = "127.0.0.1:8080";

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
            self.follow.idle_poll >= Duration::from_millis(10),
            "--idle-poll must be at least 10ms"
        );
        anyhow::ensure!(
            self.follow.heartbeat >= Duration::from_secs(1),
            "--heartbeat must be at least 1s"
        );
        anyhow::ensure!(
            self.limits.max_message_bytes >= 1024,
            "--max-message-bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.limits.max_body_bytes >= self.limits.max_message_bytes,
            "--max-body-bytes must be at least --max-message-bytes"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.follow.catch_up_page),
            "--catch-up-page must be from 1 to 10000"
        );
        anyhow::ensure!(
            self.follow.catch_up_page_bytes >= 1024,
            "--catch-up-page-bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.follow.degraded_poll >= Duration::from_millis(10),
            "--degraded-poll must be at least 10ms"
        );
        anyhow::ensure!(
            self.limits.max_batch_messages >= 1,
            "--max-batch-messages must be at least 1"
        );
        anyhow::ensure!(
            self.limits.max_follows >= 1,
            "--max-follows must be at least 1"
        );
        anyhow::ensure!(
            self.limits.max_follows_per_token >= 1,
            "--max-follows-per-token must be at least 1"
        );
        anyhow::ensure!(
            self.limits.request_timeout >= Duration::from_millis(100),
            "--request-timeout must be at least 100ms"
        );
        anyhow::ensure!(
            self.limits.header_read_timeout >= Duration::from_millis(100),
            "--header-read-timeout must be at least 100ms"
        );
        anyhow::ensure!(
            (8192..=1 << 20).contains(&self.limits.max_header_bytes),
            "--max-header-bytes must be from 8192 to 1048576"
        );
        anyhow::ensure!(
            self.limits.write_timeout >= Duration::from_millis(100),
            "--write-timeout must be at least 100ms"
        );
        anyhow::ensure!(
            self.limits.tcp_unsent_bytes >= 16 * 1024,
            "--tcp-unsent-bytes must be at least 16384"
        );
        anyhow::ensure!(
            self.limits.max_connections.is_none_or(|max| max >= 1),
            "--max-connections must be at least 1"
        );
        anyhow::ensure!(
            self.limits.idle_timeout >= Duration::from_millis(100),
            "--idle-timeout must be at least 100ms"
        );
        anyhow::ensure!(
            self.limits.http2_keep_alive >= Duration::from_secs(1),
            "--http2-keep-alive must be at least 1s"
        );
        self.allowed_origins()?;
        Ok(())
    }

    /// Connections to serve at once: `--max-connections`, but never more than the
    /// descriptor limit leaves once the store's and Redis's connections have theirs.
    pub fn connection_cap(&self) -> usize {
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
        match self.limits.max_connections {
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

    /// The HTTP configuration: the flag groups as given, and what follows from them
    /// and the backend's flags. Without auth: the caller sets `auth` from `self.auth`,
    /// which needs the address it listens on.
    pub fn http(&self) -> HttpConfig {
        HttpConfig {
            limits: self.limits,
            follow: FollowConfig {
                // Half the store's connections: appends always find one.
                store_reads: (self.backend.database_max_connections as usize / 2).max(1),
                // Half of those may be held by catch-up streams, each for a while.
                streams: (self.backend.database_max_connections as usize / 4).max(1),
                ..self.follow.clone()
            },
            connection_cap: self.connection_cap(),
            // Checked by `validate`, which runs first.
            allowed_origins: self.allowed_origins().unwrap_or_default(),
            auth: None,
            only_loopback_hosts: self.auth.no_auth,
        }
    }
}

/// The embedded store with every tuning flag at its default.
impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            database_read_url: None,
            redis_url: None,
            redis_tls_ca: None,
            redis_prefix: String::new(),
            stream_maxlen: STREAM_MAXLEN,
            finished_stream_ttl: duration(FINISHED_STREAM_TTL),
            running_stream_ttl: duration(RUNNING_STREAM_TTL),
            stream_inline_bytes: STREAM_INLINE_BYTES,
            redis_readers: REDIS_READERS,
            database_timeout: duration(DATABASE_TIMEOUT),
            database_max_connections: DATABASE_MAX_CONNECTIONS,
            follower_buffer: FOLLOWER_BUFFER,
        }
    }
}

// The defaults of the `BackendConfig` flags, stated once: clap shows and uses them,
// and `BackendConfig::default` uses them too.

/// Default of `--stream-maxlen`.
pub const STREAM_MAXLEN: u64 = 1000;
/// Default of `--finished-stream-ttl`.
pub const FINISHED_STREAM_TTL: &str = "1h";
/// Default of `--running-stream-ttl`.
pub const RUNNING_STREAM_TTL: &str = "24h";
/// Default of `--stream-inline-bytes`: 64 KiB.
pub const STREAM_INLINE_BYTES: usize = 64 * 1024;
/// Default of `--redis-readers`.
pub const REDIS_READERS: usize = 4;
/// Default of `--database-timeout`.
pub const DATABASE_TIMEOUT: &str = "1s";
/// Default of `--database-max-connections`.
pub const DATABASE_MAX_CONNECTIONS: u32 = 16;
/// Default of `--follower-buffer`.
pub const FOLLOWER_BUFFER: usize = 256;

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
    use std::sync::{Mutex, PoisonError};
    use std::time::Duration;

    use clap::Parser;

    use super::{redact, BackendConfig, ServeConfig, LISTEN};
    use crate::follow::FollowConfig;
    use crate::http::{HttpConfig, Limits};

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
            redis_url: Some("redis://cache/".into()),
            redis_tls_ca: Some("/ca.pem".into()),
            ..BackendConfig::default()
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

    /// `serve`'s flags alone, as the command line flattens them.
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        serve: ServeConfig,
    }

    /// Tests that parse `serve`'s flags take turns: one of them sets environment
    /// variables, which clap reads in every parse.
    static ENVIRONMENT: Mutex<()> = Mutex::new(());

    #[test]
    fn the_serve_flags_default_to_what_the_configs_default_to() {
        let _turn = ENVIRONMENT.lock().unwrap_or_else(PoisonError::into_inner);
        let serve = Serve::parse_from(["serve"]).serve;
        assert_eq!(serve.limits, Limits::default());
        assert_eq!(serve.follow, FollowConfig::default());
        assert_eq!(serve.listen, LISTEN.parse().unwrap());
        let (flags, http) = (serve.http(), HttpConfig::default());
        assert_eq!(flags.limits, http.limits);
        assert_eq!(flags.follow, http.follow);
    }

    #[test]
    fn every_serve_flag_and_variable_lands_in_the_http_config() {
        let _turn = ENVIRONMENT.lock().unwrap_or_else(PoisonError::into_inner);
        let variables = [
            ("AGENT_STREAM_HEARTBEAT", "5s"),
            ("AGENT_STREAM_MAX_FOLLOWS", "7"),
            ("AGENT_STREAM_SHUTDOWN_GRACE", "3s"),
            (
                "AGENT_STREAM_ALLOW_ORIGINS",
                "https://a.example,,https://b.example",
            ),
            // A flag wins over its variable.
            ("AGENT_STREAM_IDLE_POLL", "9s"),
        ];
        for (name, value) in variables {
            std::env::set_var(name, value);
        }
        let parsed = Serve::try_parse_from([
            "serve",
            "--listen=127.0.0.1:9000",
            // The embedded store, whatever the environment says (the suite sets
            // DATABASE_URL): the connection cap below then depends on nothing else.
            "--database-url=",
            "--redis-url=",
            "--database-max-connections=10",
            "--no-auth",
            "--idle-poll=2s",
            "--catch-up-page=50",
            "--catch-up-page-bytes=4096",
            "--degraded-poll=250ms",
            "--max-message-bytes=2048",
            "--max-body-bytes=8192",
            "--max-batch-messages=3",
            "--max-follows-per-token=2",
            "--max-compressed-follows=9",
            "--request-timeout=1s",
            "--header-read-timeout=2s",
            "--max-header-bytes=16384",
            "--write-timeout=4s",
            "--tcp-unsent-bytes=32768",
            "--max-connections=10",
            "--idle-timeout=6s",
            "--http2-keep-alive=8s",
        ]);
        for (name, _) in variables {
            std::env::remove_var(name);
        }
        let serve = parsed.expect("the flags parse").serve;
        serve.validate().expect("the flags are valid");
        assert_eq!(serve.listen, "127.0.0.1:9000".parse().unwrap());
        let http = serve.http();
        let seconds = Duration::from_secs;
        assert_eq!(
            http.limits,
            Limits {
                max_message_bytes: 2048,
                max_body_bytes: 8192,
                max_batch_messages: 3,
                max_follows: 7,
                max_follows_per_token: 2,
                max_compressed_follows: 9,
                request_timeout: seconds(1),
                header_read_timeout: seconds(2),
                max_header_bytes: 16384,
                write_timeout: seconds(4),
                tcp_unsent_bytes: 32768,
                max_connections: Some(10),
                idle_timeout: seconds(6),
                http2_keep_alive: seconds(8),
                shutdown_grace: seconds(3),
            }
        );
        assert_eq!(
            http.follow,
            FollowConfig {
                idle_poll: seconds(2),
                heartbeat: seconds(5),
                catch_up_page: 50,
                catch_up_page_bytes: 4096,
                degraded_poll: Duration::from_millis(250),
                // Half of --database-max-connections.
                store_reads: 5,
                // A quarter of it.
                streams: 2,
                stream_stall: crate::follow::CATCH_UP_STREAM_STALL,
                stream_time: crate::follow::CATCH_UP_STREAM_TIME,
            }
        );
        assert_eq!(http.connection_cap, 10);
        assert_eq!(
            http.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert!(http.only_loopback_hosts);
        assert!(http.auth.is_none());
    }

    #[test]
    fn a_url_that_does_not_parse_is_not_echoed() {
        assert_eq!(redact("postgres://u:secret@db:port/x"), "(unparsable URL)");
        assert_eq!(redact("secret"), "(unparsable URL)");
    }
}
