//! The contract suite's harness: a real agent-stream server on port 0 per test, on one
//! of the [`Backend`]s (memory; a real PostgreSQL, own database per test, with the
//! in-process feed; or PostgreSQL and a real Redis, own key prefix per test), with
//! helpers that speak the contract, and [`Follow`], which reads a follow item by item
//! and panics on anything the contract does not allow.

use std::time::Duration;

use agent_stream::adapters::redis::keys::Keys;
use agent_stream::config::{BackendConfig, FOLLOWER_BUFFER};
use agent_stream::domain::ProcessId;
use agent_stream::http::HttpConfig;
use agent_stream::startup::{self, Backends};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use crate::frame::End;
use crate::frame::{parse_ndjson, parse_sse, take_frame, Frame, NDJSON_SEPARATOR, SSE_SEPARATOR};

/// Generous bound on any single wait, so a broken follow fails the test instead of
/// hanging it.
pub const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded memory store and in-process feed (`serve` without `--database-url`).
    Memory,
    /// PostgreSQL from DATABASE_URL with the in-process feed (`--database-url` without
    /// `--redis-url`: one instance, no Redis).
    Postgres,
    /// PostgreSQL and Redis from DATABASE_URL and REDIS_URL (`bash .ci/test` starts them).
    Real,
    /// PostgreSQL from DATABASE_URL and the Redis Cluster of
    /// AGENT_STREAM_TEST_CLUSTER_REDIS_URL (`bash .ci/test` starts 3 masters and 3
    /// replicas): the subset chosen in adr/0013 (see [`on_the_cluster!`]).
    Cluster,
}

impl Backend {
    /// Every backend, for tests that loop over them.
    pub const ALL: [Backend; 3] = [Backend::Memory, Backend::Postgres, Backend::Real];
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub backend: Backend,
    /// Direct access to the test's Redis, to lose, trim or refuse entries.
    pub redis: Option<TestRedis>,
    /// The real backends' configuration, for running the binary against them.
    pub backend_config: Option<BackendConfig>,
    backends: Backends,
    config: HttpConfig,
    stop: CancellationToken,
    _stop: DropGuard,
}

pub struct TestRedis {
    pub connection: TestRedisConnection,
    pub keys: Keys,
}

/// The test's own connection to its Redis: to the server, or to the cluster (which
/// routes each command to its key's master).
pub enum TestRedisConnection {
    Server(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the real-backend tests need PostgreSQL and Redis (the TLS tests over TLS too). Run the suite with `bash .ci/test`, which starts them and sets it, or set DATABASE_URL and REDIS_URL (and AGENT_STREAM_TEST_TLS_*: see .ci/test)")
    })
}

/// Serves `backends` on a fresh port; the token stops it.
async fn start_server(backends: &Backends, config: &HttpConfig) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    serve_on(listener, backends, config)
}

/// Serves `backends` on `listener`; the token stops it.
fn serve_on(
    listener: tokio::net::TcpListener,
    backends: &Backends,
    config: &HttpConfig,
) -> (String, CancellationToken) {
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let stop = CancellationToken::new();
    tokio::spawn(startup::serve(
        listener,
        backends.clone(),
        config.clone(),
        {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        },
    ));
    (base, stop)
}

/// A fresh database on the server of DATABASE_URL, with its URL.
pub async fn fresh_database() -> String {
    fresh_database_on(&required_env("DATABASE_URL")).await
}

/// A fresh database on the server of `admin_url`, with its URL (`admin_url`'s
/// parameters kept).
pub async fn fresh_database_on(admin_url: &str) -> String {
    let name = format!("agent_stream_test_{}", uuid::Uuid::new_v4().simple());
    create_database_on(admin_url, &name).await;
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin_url, String::new()),
    };
    let (server, _) = base
        .rsplit_once('/')
        .expect("the admin URL has a database path");
    format!("{server}/{name}{query}")
}

async fn admin_on(admin_url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to the admin database")
}

async fn create_database_on(admin_url: &str, name: &str) {
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin_on(admin_url).await)
        .await
        .expect("create a test database");
}

/// Drops the database at `database_url` (closing its connections) and creates an
/// empty one of the same name, as an operator who recreates a database would.
pub async fn recreate_database(database_url: &str) {
    let name = database_url
        .split('?')
        .next()
        .and_then(|base| base.rsplit('/').next())
        .expect("a database name");
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin_on(&required_env("DATABASE_URL")).await)
        .await
        .expect("drop the test database");
    create_database_on(&required_env("DATABASE_URL"), name).await;
}

/// The tests' backend configuration on the PostgreSQL database at `database_url`, with
/// no Redis: the defaults, with small pools and an hour's TTL for a running process's
/// stream.
pub fn test_backend_config(database_url: String) -> BackendConfig {
    BackendConfig {
        database_url: Some(database_url),
        running_stream_ttl: Duration::from_secs(3600),
        redis_readers: 2,
        database_max_connections: 8,
        ..BackendConfig::default()
    }
}

/// A Redis key prefix no other test uses.
fn fresh_prefix() -> String {
    format!("test-{}:", uuid::Uuid::new_v4().simple())
}

/// The backends of `backend` without a server, for tests of the ports themselves: on a
/// fresh database and a fresh Redis key prefix.
pub async fn connect_backends(backend: Backend) -> Backends {
    let config = match backend {
        Backend::Memory => return Backends::embedded(FOLLOWER_BUFFER),
        Backend::Postgres => test_backend_config(fresh_database().await),
        Backend::Real => BackendConfig {
            redis_url: Some(required_env("REDIS_URL")),
            redis_prefix: fresh_prefix(),
            ..test_backend_config(fresh_database().await)
        },
        Backend::Cluster => BackendConfig {
            redis_url: Some(required_env("AGENT_STREAM_TEST_CLUSTER_REDIS_URL")),
            redis_prefix: fresh_prefix(),
            ..test_backend_config(fresh_database().await)
        },
    };
    Backends::connect(&config)
        .await
        .expect("connect the backends")
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Spawns with a test-friendly configuration (short idle poll) adjusted by `tune`.
    pub async fn spawn_with(backend: Backend, tune: impl FnOnce(&mut HttpConfig)) -> Self {
        let (backends, redis) = match backend {
            Backend::Memory => (Backends::embedded(FOLLOWER_BUFFER), None),
            Backend::Postgres => return Self::spawn_postgres(fresh_database().await, tune).await,
            Backend::Real => {
                let prefix = fresh_prefix();
                return Self::spawn_real(fresh_database().await, prefix, tune).await;
            }
            Backend::Cluster => {
                return Self::spawn_on_redis(
                    Backend::Cluster,
                    fresh_database().await,
                    None,
                    required_env("AGENT_STREAM_TEST_CLUSTER_REDIS_URL"),
                    fresh_prefix(),
                    tune,
                )
                .await;
            }
        };
        Self::spawn_on(backend, backends, redis, tune).await
    }

    /// Spawns a server on the PostgreSQL database at `database_url` with the in-process
    /// feed: the deployment of one instance without Redis.
    pub async fn spawn_postgres(database_url: String, tune: impl FnOnce(&mut HttpConfig)) -> Self {
        let backend_config = test_backend_config(database_url);
        let backends = Backends::connect(&backend_config)
            .await
            .expect("connect PostgreSQL");
        let mut app = Self::spawn_on(Backend::Postgres, backends, None, tune).await;
        app.backend_config = Some(backend_config);
        app
    }

    /// Spawns a server on the real backends: the PostgreSQL database at
    /// `database_url`, and the Redis of REDIS_URL with key `prefix`.
    pub async fn spawn_real(
        database_url: String,
        prefix: String,
        tune: impl FnOnce(&mut HttpConfig),
    ) -> Self {
        Self::spawn_replicated(database_url, None, prefix, tune).await
    }

    /// Like [`TestApp::spawn_real`], reading catch-up pages and snapshots from the
    /// read replica at `read_url` when given.
    pub async fn spawn_replicated(
        database_url: String,
        read_url: Option<String>,
        prefix: String,
        tune: impl FnOnce(&mut HttpConfig),
    ) -> Self {
        let redis_url = required_env("REDIS_URL");
        Self::spawn_on_redis(
            Backend::Real,
            database_url,
            read_url,
            redis_url,
            prefix,
            tune,
        )
        .await
    }

    /// Like [`TestApp::spawn_replicated`], on the Redis of `redis_url`: one server for
    /// [`Backend::Real`], a cluster for [`Backend::Cluster`].
    async fn spawn_on_redis(
        backend: Backend,
        database_url: String,
        read_url: Option<String>,
        redis_url: String,
        prefix: String,
        tune: impl FnOnce(&mut HttpConfig),
    ) -> Self {
        let backend_config = BackendConfig {
            database_read_url: read_url,
            redis_url: Some(redis_url.clone()),
            redis_prefix: prefix.clone(),
            ..test_backend_config(database_url)
        };
        let backends = Backends::connect(&backend_config)
            .await
            .expect("connect the real backends");
        let redis = if backend == Backend::Cluster {
            TestRedis {
                connection: TestRedisConnection::Cluster(
                    redis::cluster::ClusterClient::new(vec![redis_url.as_str()])
                        .expect("a Redis Cluster URL")
                        .get_async_connection()
                        .await
                        .expect("connect to the Redis Cluster"),
                ),
                keys: Keys::cluster(prefix),
            }
        } else {
            TestRedis {
                connection: TestRedisConnection::Server(
                    redis::Client::open(redis_url)
                        .expect("REDIS_URL")
                        .get_multiplexed_async_connection()
                        .await
                        .expect("connect to REDIS_URL"),
                ),
                keys: Keys::new(prefix),
            }
        };
        let mut app = Self::spawn_on(backend, backends, Some(redis), tune).await;
        app.backend_config = Some(backend_config);
        app
    }

    /// Spawns on the TLS servers that `bash .ci/test` starts (AGENT_STREAM_TEST_TLS_*):
    /// PostgreSQL with `sslmode=verify-full` and Redis over `rediss://`, trusting the
    /// test CA beside the system's roots.
    pub async fn spawn_tls() -> Self {
        let backend_config = BackendConfig {
            redis_url: Some(required_env("AGENT_STREAM_TEST_TLS_REDIS_URL")),
            redis_tls_ca: Some(required_env("AGENT_STREAM_TEST_TLS_CA").into()),
            redis_prefix: fresh_prefix(),
            ..test_backend_config(
                fresh_database_on(&required_env("AGENT_STREAM_TEST_TLS_DATABASE_URL")).await,
            )
        };
        let backends = Backends::connect(&backend_config)
            .await
            .expect("connect the TLS backends");
        let mut app = Self::spawn_on(Backend::Real, backends, None, |_| {}).await;
        app.backend_config = Some(backend_config);
        app
    }

    /// Whether the live feed is Redis and answers.
    pub fn feed_is_live_redis(&self) -> bool {
        self.backends.feed.name() == "redis" && self.backends.feed.is_live()
    }

    /// Spawns a server on the given ports.
    pub async fn spawn_on(
        backend: Backend,
        backends: Backends,
        redis: Option<TestRedis>,
        tune: impl FnOnce(&mut HttpConfig),
    ) -> Self {
        let mut config = HttpConfig::default();
        config.follow.idle_poll = Duration::from_millis(200);
        tune(&mut config);
        let (base, stop) = start_server(&backends, &config).await;
        Self {
            base,
            http: reqwest::Client::new(),
            backend,
            redis,
            backend_config: None,
            backends,
            config,
            stop: stop.clone(),
            _stop: stop.drop_guard(),
        }
    }

    /// Shuts the server down as SIGTERM would, and starts a new one on the same
    /// backends (on another port: `base` follows it).
    pub async fn restart(&mut self) {
        self.stop.cancel();
        let (base, stop) = start_server(&self.backends, &self.config).await;
        self.base = base;
        self.stop = stop.clone();
        self._stop = stop.drop_guard();
    }

    /// Shuts the server down as SIGTERM would.
    pub fn shut_down(&self) {
        self.stop.cancel();
    }

    /// After [`TestApp::shut_down`], starts a new server on the same backends and the
    /// same port, so a client that keeps its URL finds it again.
    pub async fn start_again_on_same_port(&mut self) {
        let address = self.base.trim_start_matches("http://").to_owned();
        let deadline = tokio::time::Instant::now() + WAIT;
        let listener = loop {
            // The old server lets go of the port as soon as it stops accepting.
            match tokio::net::TcpListener::bind(&address).await {
                Ok(listener) => break listener,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("could not bind {address} again: {error}"),
            }
        };
        let (base, stop) = serve_on(listener, &self.backends, &self.config);
        // Pooled connections to the old server at this address are dead.
        self.http = reqwest::Client::new();
        self.base = base;
        self.stop = stop.clone();
        self._stop = stop.drop_guard();
    }

    /// The write path of the server's backends, for appends while no server runs.
    pub fn writer(&self) -> agent_stream::writer::Writer {
        self.backends.writer()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// An NDJSON follow of `process` from a socket with a 4 KiB receive buffer, of
    /// which nothing is read until the caller reads: the server's writes soon block, as
    /// for a client too slow for its follow. The request is sent; the answer is the
    /// caller's to read (`Connection: close`: to its end).
    pub async fn slow_follow(&self, process: &str) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("a small receive buffer");
        let address = self
            .base
            .trim_start_matches("http://")
            .parse()
            .expect("an address");
        let mut slow = socket.connect(address).await.expect("connect");
        let request = format!(
            "GET /processes/{process}/messages HTTP/1.1\r\nHost: test\r\nAccept: application/x-ndjson\r\nConnection: close\r\n\r\n"
        );
        slow.write_all(request.as_bytes())
            .await
            .expect("send the request");
        slow
    }

    /// The values of the counter `name` on the server's `/metrics`, one per value of
    /// its `outcome` label in `outcomes` (0 for a series not on the page).
    pub async fn counters<const N: usize>(&self, name: &str, outcomes: [&str; N]) -> [u64; N] {
        let page = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("a text body");
        outcomes.map(|outcome| {
            let series = format!("{name}{{outcome=\"{outcome}\"}} ");
            page.lines()
                .find_map(|line| line.strip_prefix(&series))
                .map_or(0, |value| value.parse().expect("a count"))
        })
    }

    pub async fn put_process(&self, process: &str) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/processes/{process}")))
            .send()
            .await
            .expect("PUT process")
    }

    pub async fn get_process(&self, process: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/processes/{process}")))
            .send()
            .await
            .expect("GET process")
    }

    /// POSTs a raw body to the process's messages.
    pub async fn post_messages(
        &self,
        process: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/processes/{process}/messages")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST messages")
    }

    /// Appends messages one request at a time; returns their stream IDs.
    pub async fn append(&self, process: &str, messages: &[Value]) -> Vec<String> {
        let mut ids = Vec::new();
        for message in messages {
            let response = self.post_messages(process, message.to_string()).await;
            let status = response.status();
            let body: Value = response.json().await.expect("append answers JSON");
            assert!(
                status == 201 || status == 200,
                "append failed: {status} {body}"
            );
            ids.push(body["stream_id"].as_str().expect("stream_id").to_owned());
        }
        ids
    }

    /// Appends messages as one array; returns the response's items.
    pub async fn append_batch(&self, process: &str, messages: &[Value]) -> Vec<Value> {
        let response = self
            .post_messages(process, Value::from(messages.to_vec()).to_string())
            .await;
        let status = response.status();
        let body: Value = response.json().await.expect("append answers JSON");
        assert!(
            status == 201 || status == 200,
            "batch append failed: {status} {body}"
        );
        body.as_array().expect("an array answer").clone()
    }

    pub async fn finish(&self, process: &str, status: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/processes/{process}/finish")))
            .json(&serde_json::json!({ "status": status }))
            .send()
            .await
            .expect("POST finish")
    }

    pub async fn snapshot(&self, process: &str, query: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!(
                "/processes/{process}/messages?follow=false{query}"
            )))
            .send()
            .await
            .expect("GET snapshot")
    }

    /// Opens a follow: `format` is `sse` or `ndjson`; `after` goes in `?after=`.
    pub async fn follow(&self, process: &str, format: Format, after: Option<&str>) -> Follow {
        let mut url = format!("/processes/{process}/messages");
        if let Some(after) = after {
            url.push_str(&format!("?after={after}"));
        }
        self.follow_request(format, self.http.get(self.url(&url)))
            .await
    }

    pub async fn follow_request(&self, format: Format, request: reqwest::RequestBuilder) -> Follow {
        match self.try_follow_request(format, request).await {
            Ok(follow) => follow,
            Err(refused) => panic!(
                "follow refused: {} {}",
                refused.status(),
                refused.text().await.unwrap_or_default()
            ),
        }
    }

    /// Opens a follow, or returns the response that refused it.
    pub async fn try_follow_request(
        &self,
        format: Format,
        request: reqwest::RequestBuilder,
    ) -> Result<Follow, reqwest::Response> {
        let request = match format {
            Format::Sse => request.header("accept", "text/event-stream"),
            Format::Ndjson => request.header("accept", "application/x-ndjson"),
        };
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("follow answers in time")
            .expect("GET follow");
        if response.status() != 200 {
            return Err(response);
        }
        Ok(Follow {
            format,
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        })
    }

    /// Follows from `after` until the end event; returns everything before the end
    /// (heartbeats left out) and the end.
    pub async fn follow_to_end(
        &self,
        process: &str,
        format: Format,
        after: Option<&str>,
    ) -> (Vec<Value>, End) {
        self.follow(process, format, after).await.until_end().await
    }

    pub fn redis(&mut self) -> &mut TestRedis {
        self.redis.as_mut().expect("a real-backend test")
    }
}

impl TestRedis {
    pub fn key(&self, process: &str) -> String {
        self.keys
            .stream(&ProcessId::parse(process).expect("a valid process id"))
    }

    pub async fn run<T: redis::FromRedisValue>(&mut self, command: &redis::Cmd) -> T {
        let value = self.try_run(command).await.expect("redis command");
        redis::from_redis_value(value).expect("the redis command's answer")
    }

    /// Runs a command whose refusal is part of the test (such as an XADD under the top ID).
    pub async fn try_run(&mut self, command: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match &mut self.connection {
            TestRedisConnection::Server(connection) => command.query_async(connection).await,
            TestRedisConnection::Cluster(connection) => command.query_async(connection).await,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Sse,
    Ndjson,
}

/// One thing a follow sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Message(Value),
    End(End),
    Heartbeat,
    /// An SSE `retry:` hint (milliseconds), alone in its frame.
    Retry(u64),
}

/// An open follow, read item by item.
pub struct Follow {
    format: Format,
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
}

impl Follow {
    /// The next item, or `None` when the response ended.
    pub async fn next(&mut self) -> Option<Item> {
        tokio::time::timeout(WAIT, self.next_untimed())
            .await
            .expect("the follow sent nothing for 20 s")
    }

    /// The next item if one comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Option<Item>> {
        tokio::time::timeout(wait, self.next_untimed()).await.ok()
    }

    async fn next_untimed(&mut self) -> Option<Item> {
        let separator = match self.format {
            Format::Sse => SSE_SEPARATOR,
            Format::Ndjson => NDJSON_SEPARATOR,
        };
        loop {
            if let Some(frame) = take_frame(&mut self.buffer, separator) {
                let frame = String::from_utf8(frame).expect("UTF-8 frames");
                return Some(match self.format {
                    Format::Sse => sse_item(&frame),
                    Format::Ndjson => ndjson_item(&frame),
                });
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(error)) => panic!("follow body failed: {error}"),
                None => {
                    assert!(
                        self.buffer.is_empty(),
                        "the follow ended mid-frame: {:?}",
                        String::from_utf8_lossy(&self.buffer)
                    );
                    return None;
                }
            }
        }
    }

    /// Reads messages until the end event; the response must close right after it.
    pub async fn until_end(mut self) -> (Vec<Value>, End) {
        let mut messages = Vec::new();
        loop {
            match self.next().await {
                Some(Item::Message(message)) => messages.push(message),
                Some(Item::Heartbeat) => {}
                Some(Item::End(end)) => {
                    assert_eq!(self.next().await, None, "nothing may follow the end event");
                    return (messages, end);
                }
                other @ (Some(Item::Retry(_)) | None) => panic!(
                    "the follow closed without an end event after {} messages ({other:?})",
                    messages.len()
                ),
            }
        }
    }

    /// Reads exactly `n` messages (skipping heartbeats).
    pub async fn take_messages(&mut self, n: usize) -> Vec<Value> {
        let mut messages = Vec::new();
        while messages.len() < n {
            match self.next().await {
                Some(Item::Message(message)) => messages.push(message),
                Some(Item::Heartbeat) => {}
                other => panic!(
                    "expected a message, got {other:?} after {} messages",
                    messages.len()
                ),
            }
        }
        messages
    }
}

/// An SSE event as an item; panics on an event the contract does not allow.
fn sse_item(frame: &str) -> Item {
    match parse_sse(frame).unwrap_or_else(|error| panic!("{error}")) {
        (Frame::Heartbeat, Some(retry)) => {
            Item::Retry(retry.parse().expect("retry is a number of milliseconds"))
        }
        (frame, _) => item(frame),
    }
}

/// An NDJSON line as an item; panics on a line that is not JSON.
fn ndjson_item(line: &str) -> Item {
    item(parse_ndjson(line).unwrap_or_else(|error| panic!("{error}")))
}

fn item(frame: Frame) -> Item {
    match frame {
        Frame::Message { value, .. } => Item::Message(value),
        Frame::End(end) => Item::End(end),
        Frame::Heartbeat => Item::Heartbeat,
    }
}
