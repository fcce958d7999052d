//! [`RedisFeed`]: the live-feed port on Redis Streams.
//!
//! Redis data structures used, all under one key per process (see [`keys`]):
//! - a **stream** `<prefix>process:<id>:stream`. Each stored message is added right
//!   after its PostgreSQL commit with `XADD key MAXLEN ~ <n> <seq>-0 message <json>`:
//!   the entry ID is the durable seq, never `*`, so a reader can resume from any ID it
//!   saw and knows exactly which entry comes next. Every entry also carries
//!   `epoch <id>`, the store's epoch: readers drop entries of another epoch (another
//!   deployment's, or a recreated database's), see adr/0007. A message over
//!   `inline_bytes` goes as `<seq>-0 stored <size> epoch <id>`, without its JSON:
//!   followers read it from the store, and a stream's size stays bounded by
//!   `MAXLEN × inline_bytes`. Each append sets the key's `EXPIRE` to `running_ttl`, so
//!   the stream of a process abandoned without a finish goes. Finishing adds the end
//!   marker `<last seq>-1 end {"status": …}` and sets the `EXPIRE` to `finished_ttl`.
//! - nothing else: no consumer groups (each follower has its own cursor, kept by the
//!   client) and no pub/sub.
//!
//! Redis is an accelerator, never the truth. `XADD` may be refused (an entry with a
//! higher ID is already there, when concurrent writers publish out of order), entries
//! may be trimmed or the key expired or lost: followers see a gap or nothing, and fill
//! it from PostgreSQL. A failed `XADD` is logged and counted, never an append failure.
//!
//! This instance's own followers get what its writer appends straight from the write
//! path, right after the commit and before the `XADD` (the reader skips the entries
//! when it reads them back): the `XADD` and the `XREAD` are for other instances.
//!
//! Commands go over one multiplexed, self-reconnecting connection; blocking reads go
//! over the readers' own connections ([`reader`]). All of them come from one
//! `redis::Client`, so with a `rediss://` URL every one is TLS, verified against the
//! system's roots and the private CA of `--redis-tls-ca` ([`crate::adapters::tls`]).

pub mod keys;
mod reader;

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::adapters::health::{Health, RETRY_WHILE_DOWN};
use crate::adapters::tls;
use crate::domain::{end_json, ProcessId, StoredMessage, StreamId};
use crate::ports::{Epoch, FeedError, FeedEvent, FeedSubscription, LiveFeed};
use keys::{Keys, END_FIELD, EPOCH_FIELD, MESSAGE_FIELD, STORED_FIELD};
use reader::Reader;

/// How the feed uses Redis.
#[derive(Debug, Clone)]
pub struct RedisFeedConfig {
    pub url: String,
    /// PEM file of a private CA trusted beside the system's roots (`rediss://` only).
    pub tls_ca: Option<PathBuf>,
    /// Prepended to every key; empty by default.
    pub prefix: String,
    /// `MAXLEN ~` of every `XADD`.
    pub stream_maxlen: u64,
    /// `EXPIRE` set on a finished process's stream.
    pub finished_ttl: Duration,
    /// `EXPIRE` set on a running process's stream by each append.
    pub running_ttl: Duration,
    /// Largest message JSON put in an entry; a larger message goes as a `stored` entry.
    pub inline_bytes: usize,
    /// The store's epoch, stamped on every entry; entries without it are not delivered.
    pub epoch: Epoch,
    /// Stream readers, each holding one connection.
    pub readers: usize,
    /// Events a follower may fall behind before it catches up from the store.
    pub follower_buffer: usize,
}

/// How a Redis TLS failure says which CA to give.
const HOW_TO_TRUST: &str = "--redis-tls-ca FILE";

/// What a malformed REDIS_URL is told with (never the URL itself: it may hold a
/// password).
const INVALID_URL: &str =
    "REDIS_URL is not a valid Redis URL (redis://host:port/db, or rediss:// for TLS)";

pub struct RedisFeed {
    commands: ConnectionManager,
    /// `host:port` (or the socket), for messages.
    server: String,
    keys: Keys,
    config: RedisFeedConfig,
    readers: Vec<Arc<Reader>>,
    pick: std::collections::hash_map::RandomState,
    health: Arc<Health>,
    _stop_readers: DropGuard,
}

impl RedisFeed {
    /// Sets up the feed without waiting for Redis: commands fail (and are logged) until
    /// it answers. Readers connect when first needed, and keep trying.
    pub fn connect_lazy(config: RedisFeedConfig) -> anyhow::Result<Self> {
        let client = client(&config.url, config.tls_ca.as_deref())?;
        let server = client.get_connection_info().addr().to_string();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .context("setting up the Redis connection failed")?;
        let health = Arc::new(Health::new(
            "Redis",
            "appends still succeed and followers poll PostgreSQL until it answers",
            "live delivery is back on Redis Streams",
        ));
        let stop = CancellationToken::new();
        let readers: Vec<_> = (0..config.readers.max(1))
            .map(|_| {
                Arc::new(Reader::new(
                    client.clone(),
                    health.clone(),
                    config.epoch.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Ok(Self {
            commands,
            server,
            keys: Keys::new(config.prefix.clone()),
            config,
            readers,
            pick: Default::default(),
            health,
            _stop_readers: stop.drop_guard(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Pings Redis at start. Redis not answering yet is no error (followers poll
    /// PostgreSQL until it does), but a TLS failure is: it will not mend by itself.
    pub async fn check_at_start(&self) -> anyhow::Result<Option<FeedError>> {
        let mut commands = self.commands.clone();
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut commands).await;
        let Err(error) = pong else {
            self.health.mark_up();
            return Ok(None);
        };
        // Before the outage is logged: a TLS failure is said once, as the start's error.
        if let Some(failure) = tls::failure(&anyhow::Error::new(error.clone())) {
            anyhow::bail!(
                "could not connect to Redis at {} over TLS: {}",
                self.server,
                failure.explain(HOW_TO_TRUST)
            );
        }
        self.health.mark_down("PING", &error);
        Ok(Some(FeedError(anyhow::Error::new(error).context("PING"))))
    }

    /// Sends a write. While Redis is down, appends do not wait on it: the write is
    /// skipped, but for one per interval that goes out in the background as a probe,
    /// whose answer tells whether Redis is back.
    async fn run(&self, what: &'static str, pipe: redis::Pipeline) -> Result<(), FeedError> {
        if self.health.is_up() {
            return send(self.commands.clone(), &self.health, what, &pipe).await;
        }
        if self.health.should_try(RETRY_WHILE_DOWN) {
            let (commands, health) = (self.commands.clone(), self.health.clone());
            tokio::spawn(async move { send(commands, &health, what, &pipe).await });
        }
        crate::metrics::redis_write_failed();
        Err(FeedError(anyhow::anyhow!("{what} skipped: Redis is down")))
    }

    /// The reader that watches `key`: always the same one.
    fn reader(&self, key: &str) -> &Arc<Reader> {
        &self.readers[self.pick.hash_one(key) as usize % self.readers.len()]
    }

    fn xadd(&self, pipe: &mut redis::Pipeline, key: &str, id: StreamId, field: &str, value: &[u8]) {
        pipe.cmd("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.config.stream_maxlen)
            .arg(id.to_string())
            .arg(field)
            .arg(value)
            .arg(EPOCH_FIELD)
            .arg(self.config.epoch.as_str())
            .ignore();
    }
}

#[async_trait]
impl LiveFeed for RedisFeed {
    async fn publish(
        &self,
        process: &ProcessId,
        messages: &[StoredMessage],
    ) -> Result<(), FeedError> {
        let key = self.keys.stream(process);
        // This instance's followers first, straight from the write path: the XADD is
        // for the other instances' (adr/0015).
        self.reader(&key).deliver(
            &key,
            messages.iter().map(|message| {
                let event = if message.json.len() <= self.config.inline_bytes {
                    FeedEvent::Message(message.clone())
                } else {
                    FeedEvent::Stored { seq: message.seq }
                };
                (message.stream_id(), event)
            }),
        );
        let mut pipe = redis::pipe();
        for message in messages {
            if message.json.len() <= self.config.inline_bytes {
                self.xadd(
                    &mut pipe,
                    &key,
                    message.stream_id(),
                    MESSAGE_FIELD,
                    &message.json,
                );
            } else {
                let size = message.json.len().to_string();
                self.xadd(
                    &mut pipe,
                    &key,
                    message.stream_id(),
                    STORED_FIELD,
                    size.as_bytes(),
                );
            }
        }
        // Refreshed by every append: a process abandoned without a finish loses its
        // stream `running_ttl` after its last message.
        pipe.cmd("EXPIRE")
            .arg(&key)
            .arg(self.config.running_ttl.as_secs().max(1))
            .ignore();
        self.run("XADD", pipe).await
    }

    async fn publish_end(
        &self,
        process: &ProcessId,
        last_seq: u64,
        status: &str,
    ) -> Result<(), FeedError> {
        let key = self.keys.stream(process);
        self.reader(&key).deliver(
            &key,
            [(StreamId::end(last_seq), FeedEvent::End { last_seq })],
        );
        let end = end_json(status);
        let mut pipe = redis::pipe();
        // EXPIRE runs even when the XADD is refused: pipelined commands are independent.
        self.xadd(
            &mut pipe,
            &key,
            StreamId::end(last_seq),
            END_FIELD,
            end.as_bytes(),
        );
        pipe.cmd("EXPIRE")
            .arg(&key)
            .arg(self.config.finished_ttl.as_secs().max(1))
            .ignore();
        self.run("XADD end marker and EXPIRE", pipe).await
    }

    fn subscribe(&self, process: &ProcessId, after: u64) -> FeedSubscription {
        let key = self.keys.stream(process);
        let reader = self.reader(&key);
        let (subscription, generation) = reader.watch(key, after, self.config.follower_buffer);
        if let Some(generation) = generation {
            tokio::spawn(wake(reader.clone(), self.commands.clone(), generation));
        }
        subscription
    }

    async fn ping(&self) -> Result<(), FeedError> {
        let mut commands = self.commands.clone();
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut commands).await;
        match pong {
            Ok(_) => {
                self.health.mark_up();
                Ok(())
            }
            Err(error) => {
                self.health.mark_down("PING", &error);
                Err(FeedError(anyhow::Error::new(error).context("PING")))
            }
        }
    }

    fn is_live(&self) -> bool {
        self.health.is_up()
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn record_metrics(&self) {
        let up = self.health.is_up();
        crate::metrics::backend_up(self.name(), up);
        let connected = self
            .readers
            .iter()
            .filter(|r| r.client_id().is_some())
            .count();
        crate::metrics::redis_connections(up, connected, self.readers.len());
    }
}

/// The client every connection comes from: over TLS for `rediss://`, trusting the
/// system's roots and, when given, the CA in `tls_ca`.
fn client(url: &str, tls_ca: Option<&Path>) -> anyhow::Result<redis::Client> {
    tls::use_ring();
    let Some(ca) = tls_ca else {
        return redis::Client::open(url).map_err(|_| anyhow::anyhow!(INVALID_URL));
    };
    let pem = std::fs::read(ca)
        .with_context(|| format!("--redis-tls-ca {} cannot be read", ca.display()))?;
    let extra = tls::pem_certificates(&pem)
        .with_context(|| format!("--redis-tls-ca {} is not usable", ca.display()))?;
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(tls::system_roots_and(&extra)),
    };
    redis::Client::build_with_tls(url, certificates).map_err(|_| anyhow::anyhow!(INVALID_URL))
}

async fn send(
    mut commands: ConnectionManager,
    health: &Health,
    what: &str,
    pipe: &redis::Pipeline,
) -> Result<(), FeedError> {
    match pipe.query_async::<()>(&mut commands).await {
        Ok(()) => {
            health.mark_up();
            Ok(())
        }
        Err(error) => {
            crate::metrics::redis_write_failed();
            // A server error (such as a refused ID) means Redis answers.
            if !matches!(error.kind(), redis::ErrorKind::Server(_)) {
                health.mark_down(what, &error);
            }
            Err(FeedError(
                anyhow::Error::new(error).context(what.to_owned()),
            ))
        }
    }
}

/// Unblocks the reader's `XREAD` until it has been rebuilt with the new watch: a
/// `CLIENT UNBLOCK` sent before the `XREAD` reaches Redis does nothing, so it repeats.
async fn wake(reader: Arc<Reader>, mut commands: ConnectionManager, generation: u64) {
    for _ in 0..100 {
        if reader.has_read(generation) {
            return;
        }
        if let Some(id) = reader.client_id() {
            let unblocked: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async(&mut commands)
                .await;
            if unblocked.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::client;

    #[test]
    fn a_ca_file_that_cannot_be_read_or_holds_no_certificate_is_named_at_start() {
        let url = "rediss://cache:6380/";
        let missing = client(url, Some("/nonexistent/ca.pem".as_ref())).unwrap_err();
        assert!(
            format!("{missing:#}").starts_with("--redis-tls-ca /nonexistent/ca.pem cannot be read"),
            "{missing:#}"
        );
        let not_pem = std::env::temp_dir().join(format!("ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let refused = client(url, Some(&not_pem)).unwrap_err();
        std::fs::remove_file(&not_pem).unwrap();
        assert!(
            format!("{refused:#}").contains("holds no PEM certificate"),
            "{refused:#}"
        );
    }

    #[test]
    fn a_malformed_url_is_refused_without_repeating_it() {
        let error = client("redis://:hunter2@cache:port/", None).unwrap_err();
        assert!(!format!("{error:#}").contains("hunter2"), "{error:#}");
    }
}
