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
//! over the readers' own connections ([`reader`]). With a `rediss://` URL every one is
//! TLS, verified against the system's roots and the private CA of `--redis-tls-ca`
//! ([`crate::adapters::tls`]).
//!
//! The URL may name one node of a Redis Cluster: the feed finds out by itself when
//! Redis first answers (`INFO cluster`), and then sends commands over the redis crate's
//! cluster connection, tags keys with their bucket ([`keys`]) and reads each bucket
//! from its slot's master ([`cluster`], adr/0013). Until Redis first answers, the feed
//! is down: appends skip it and followers poll PostgreSQL.

mod cluster;
pub mod keys;
mod published;
mod reader;

use std::hash::BuildHasher;
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::adapters::health::{Health, RETRY_WHILE_DOWN};
use crate::adapters::tls;
use crate::domain::{end_json, ProcessId, StoredMessage, StreamId};
use crate::ports::{
    Epoch, FeedError, FeedEvent, FeedSender, FeedSubscription, LiveFeed, Published,
};
use cluster::Node;
use keys::{Keys, CLUSTER_BUCKETS, END_FIELD, EPOCH_FIELD, MESSAGE_FIELD, STORED_FIELD};
use reader::{Reader, SlotTarget, Target};

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
    /// Stream readers on a single Redis server, each holding one connection. In a
    /// cluster there is one per bucket instead ([`CLUSTER_BUCKETS`]).
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

/// The longest the first contact with Redis (`INFO cluster`, and the cluster's
/// topology) may take before it counts as Redis down and is tried again.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct RedisFeed {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

struct Shared {
    config: RedisFeedConfig,
    client: redis::Client,
    /// The roots TLS trusts when `--redis-tls-ca` is given (system roots and the CA).
    root_cert: Option<Vec<u8>>,
    /// `host:port` (or the socket), for messages.
    server: String,
    health: Arc<Health>,
    /// Known once Redis first answered: one server or a cluster.
    layout: OnceLock<Layout>,
    /// Held by the attempt to find out the layout under way, if any.
    opening: tokio::sync::Mutex<()>,
    /// Followers that subscribed before the layout was known wait on this channel;
    /// it closes once the layout is known, and they subscribe again.
    waiting: Mutex<Option<FeedSender>>,
    stop: CancellationToken,
}

/// The feed once it knows what Redis is.
struct Layout {
    commands: Commands,
    keys: Keys,
    readers: Vec<Arc<Reader>>,
    pick: std::collections::hash_map::RandomState,
    /// In a cluster, whether each bucket's master takes writes, as last seen: a dead
    /// master makes the writes of its buckets skip Redis (one probe per interval), not
    /// those of the others. Empty on a single server (the feed's health says it).
    buckets: Vec<Arc<Health>>,
}

impl Layout {
    /// The reader that watches `process`'s stream `key`: always the same one (in a
    /// cluster, its bucket's).
    fn reader_of(&self, process: &ProcessId, key: &str) -> &Arc<Reader> {
        let index = match self.commands {
            Commands::Server(_) => self.pick.hash_one(key) as usize,
            Commands::Cluster(_) => usize::from(keys::bucket(process)),
        };
        &self.readers[index % self.readers.len()]
    }

    /// Sends events this instance just committed to its own followers of `process`,
    /// straight from the write path: the `XADD` is for the other instances' (adr/0015).
    fn deliver_here(
        &self,
        process: &ProcessId,
        key: &str,
        events: impl IntoIterator<Item = (StreamId, FeedEvent)>,
    ) {
        self.reader_of(process, key).deliver(key, events);
    }

    /// The health that decides whether a write to `process`'s stream is sent.
    fn health_of<'a>(&'a self, process: &ProcessId, feed: &'a Arc<Health>) -> &'a Arc<Health> {
        self.buckets
            .get(usize::from(keys::bucket(process)))
            .unwrap_or(feed)
    }
}

/// The connection commands go over.
#[derive(Clone)]
enum Commands {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Commands {
    async fn send(&self, pipe: &redis::Pipeline) -> redis::RedisResult<()> {
        self.query(pipe).await
    }

    /// Sends `pipe` and reads its replies; in a cluster, every key of `pipe` must be in
    /// one slot.
    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        match self.clone() {
            Self::Server(mut connection) => pipe.query_async(&mut connection).await,
            Self::Cluster(mut connection) => pipe.query_async(&mut connection).await,
        }
    }

    /// `PING`; in a cluster, any master answering will do (one master down for a
    /// failover is not Redis down).
    async fn ping(&self) -> redis::RedisResult<()> {
        match self.clone() {
            Self::Server(mut connection) => {
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await?;
            }
            Self::Cluster(mut connection) => {
                connection
                    .route_command(
                        redis::cmd("PING"),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// `CLIENT UNBLOCK id` on the node of the reader's connection.
    async fn unblock(&self, node: Option<Node>, id: i64) -> redis::RedisResult<()> {
        let mut unblock = redis::cmd("CLIENT");
        unblock.arg("UNBLOCK").arg(id);
        match (self.clone(), node) {
            (Self::Server(mut connection), _) => {
                unblock.query_async::<i64>(&mut connection).await?;
            }
            (Self::Cluster(mut connection), Some(Node { host, port })) => {
                connection
                    .route_command(
                        unblock,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
                    )
                    .await?;
            }
            // Not connected: the reader reads the new watch when it is.
            (Self::Cluster(_), None) => {}
        }
        Ok(())
    }
}

impl RedisFeed {
    /// Sets up the feed without waiting for Redis: commands fail (and are logged) until
    /// it answers (see [`RedisFeed::check_at_start`]). Readers connect when first
    /// needed, and keep trying.
    pub fn connect_lazy(config: RedisFeedConfig) -> anyhow::Result<Self> {
        tls::use_ring();
        let root_cert = root_cert(config.tls_ca.as_deref())?;
        let client = client(&config.url, root_cert.clone())?;
        let server = client.get_connection_info().addr().to_string();
        let health = Arc::new(Health::new(
            "Redis",
            "appends still succeed and followers poll PostgreSQL until it answers",
            "live delivery is back on Redis Streams",
        ));
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            config,
            client,
            root_cert,
            server,
            health,
            layout: OnceLock::new(),
            opening: tokio::sync::Mutex::new(()),
            waiting: Mutex::default(),
            stop: stop.clone(),
        });
        Ok(Self {
            shared,
            _stop: stop.drop_guard(),
        })
    }

    /// Pings Redis at start. Redis not answering yet is no error (followers poll
    /// PostgreSQL until it does), but a TLS failure is: it will not mend by itself.
    pub async fn check_at_start(&self) -> anyhow::Result<Option<FeedError>> {
        let shared = &self.shared;
        let pong = match shared.open().await {
            Ok(layout) => layout.commands.ping().await,
            Err(error) => Err(error),
        };
        let Err(error) = pong else {
            shared.health.mark_up();
            return Ok(None);
        };
        // Before the outage is logged: a TLS failure is said once, as the start's error.
        if let Some(failure) = tls::failure(&anyhow::Error::new(error.clone())) {
            anyhow::bail!(
                "could not connect to Redis at {} over TLS: {}",
                shared.server,
                failure.explain(HOW_TO_TRUST)
            );
        }
        shared.health.mark_down("PING", &error);
        if shared.layout.get().is_none() {
            tokio::spawn(keep_opening(shared.clone()));
        }
        Ok(Some(FeedError(anyhow::Error::new(error).context("PING"))))
    }

    /// Whether Redis turned out to be a cluster (`None` until it first answered).
    pub fn is_cluster(&self) -> Option<bool> {
        let layout = self.shared.layout.get()?;
        Some(matches!(layout.commands, Commands::Cluster(_)))
    }

    /// Sends a write. While Redis is down, appends do not wait on it: the write is
    /// skipped, but for one per interval that goes out in the background as a probe,
    /// whose answer tells whether Redis is back.
    async fn run(
        &self,
        what: &'static str,
        process: &ProcessId,
        pipe: redis::Pipeline,
    ) -> Result<(), FeedError> {
        let Some(layout) = self.shared.layout.get() else {
            if self.shared.health.should_try(RETRY_WHILE_DOWN) {
                let shared = self.shared.clone();
                tokio::spawn(async move { shared.open().await.map(|_| ()) });
            }
            crate::metrics::redis_write_failed();
            return Err(FeedError(anyhow::anyhow!(
                "{what} skipped: Redis has not answered yet"
            )));
        };
        let health = layout.health_of(process, &self.shared.health);
        if health.is_up() {
            return send(&layout.commands, health, what, &pipe).await;
        }
        if health.should_try(RETRY_WHILE_DOWN) {
            let (commands, health) = (layout.commands.clone(), health.clone());
            tokio::spawn(async move { send(&commands, &health, what, &pipe).await });
        }
        crate::metrics::redis_write_failed();
        Err(FeedError(anyhow::anyhow!("{what} skipped: Redis is down")))
    }

    fn xadd(&self, pipe: &mut redis::Pipeline, key: &str, id: StreamId, field: &str, value: &[u8]) {
        let config = &self.shared.config;
        // Sized for its arguments at once: a message's JSON would otherwise grow the
        // command's buffer a doubling at a time.
        let mut xadd = redis::Cmd::with_capacity(
            10,
            key.len() + value.len() + field.len() + config.epoch.as_str().len() + 64,
        );
        xadd.arg("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(config.stream_maxlen)
            .arg(id.to_string())
            .arg(field)
            .arg(value)
            .arg(EPOCH_FIELD)
            .arg(config.epoch.as_str());
        pipe.add_command(xadd).ignore();
    }
}

impl Shared {
    /// The layout, finding it out if it is not known yet: `INFO cluster` on the URL's
    /// node, then the cluster's topology if it is one.
    async fn open(self: &Arc<Self>) -> redis::RedisResult<&Layout> {
        if let Some(layout) = self.layout.get() {
            return Ok(layout);
        }
        // One attempt at a time; a caller that finds one under way does not queue
        // behind it (a readiness probe should not wait for another's timeout).
        let Ok(_turn) = self.opening.try_lock() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis has not answered yet",
            )));
        };
        if let Some(layout) = self.layout.get() {
            return Ok(layout);
        }
        let layout = tokio::time::timeout(OPEN_TIMEOUT, self.find_layout())
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "Redis did not answer in time",
                )))
            })?;
        let cluster = matches!(layout.commands, Commands::Cluster(_));
        let layout = self.layout.get_or_init(|| layout);
        // Followers waiting for the layout subscribe again, now for real.
        crate::sync::lock(&self.waiting).take();
        if cluster {
            tracing::info!(redis = %self.server, buckets = CLUSTER_BUCKETS,
                "Redis is a cluster: keys carry their bucket's hash tag, one reader per bucket \
                reads from its slot's master");
        }
        Ok(layout)
    }

    async fn find_layout(self: &Arc<Self>) -> redis::RedisResult<Layout> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let mut manager =
            ConnectionManager::new_lazy_with_config(self.client.clone(), manager_config)?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut manager)
            .await?;
        let config = &self.config;
        if !cluster::is_cluster(&info) {
            let readers = (0..config.readers.max(1))
                .map(|_| self.reader(Target::Server(self.client.clone())))
                .collect();
            return Ok(Layout {
                commands: Commands::Server(manager),
                keys: Keys::new(config.prefix.clone()),
                readers,
                pick: Default::default(),
                buckets: Vec::new(),
            });
        }
        let commands = cluster::connect(&config.url, self.root_cert.clone()).await?;
        let readers = (0..CLUSTER_BUCKETS)
            .map(|bucket| {
                self.reader(Target::Slot(SlotTarget::new(
                    keys::bucket_slot(bucket),
                    config.url.clone(),
                    self.root_cert.clone(),
                    commands.clone(),
                )))
            })
            .collect();
        Ok(Layout {
            commands: Commands::Cluster(commands),
            keys: Keys::cluster(config.prefix.clone()),
            readers,
            pick: Default::default(),
            buckets: (0..CLUSTER_BUCKETS)
                .map(|_| {
                    Arc::new(Health::new(
                        "a Redis Cluster master",
                        "appends to its slots skip Redis and followers poll PostgreSQL until it \
                            answers",
                        "live delivery of its slots is back on Redis Streams",
                    ))
                })
                .collect(),
        })
    }

    fn reader(&self, target: Target) -> Arc<Reader> {
        Arc::new(Reader::new(
            target,
            self.health.clone(),
            self.config.epoch.clone(),
            self.stop.clone(),
        ))
    }
}

/// Tries to reach Redis until it first answers, after it did not at start, so that
/// followers on an instance that appends nothing still get live delivery once it does.
async fn keep_opening(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    while !shared.stop.is_cancelled() && shared.layout.get().is_none() {
        match shared.open().await {
            Ok(_) => return,
            Err(error) => shared.health.mark_down("connecting", &error),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shared.stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(RETRY_WHILE_DOWN);
    }
}

#[async_trait]
impl LiveFeed for RedisFeed {
    async fn publish(
        &self,
        process: &ProcessId,
        messages: &[StoredMessage],
    ) -> Result<(), FeedError> {
        let Some(layout) = self.shared.layout.get() else {
            return self.run("XADD", process, redis::pipe()).await;
        };
        let key = layout.keys.stream(process);
        let config = &self.shared.config;
        let mut pipe = redis::Pipeline::with_capacity(messages.len() + 1);
        let mut events = Vec::with_capacity(messages.len());
        for message in messages {
            let id = message.stream_id();
            if message.json.len() <= config.inline_bytes {
                self.xadd(&mut pipe, &key, id, MESSAGE_FIELD, &message.json);
                events.push((id, FeedEvent::Message(message.clone())));
            } else {
                let size = message.json.len().to_string();
                self.xadd(&mut pipe, &key, id, STORED_FIELD, size.as_bytes());
                events.push((id, FeedEvent::Stored { seq: message.seq }));
            }
        }
        // This instance's followers first, straight from the write path: the XADD is
        // for the other instances' (adr/0015).
        layout.deliver_here(process, &key, events);
        // Refreshed by every append: a process abandoned without a finish loses its
        // stream `running_ttl` after its last message.
        pipe.cmd("EXPIRE")
            .arg(&key)
            .arg(config.running_ttl.as_secs().max(1))
            .ignore();
        self.run("XADD", process, pipe).await
    }

    async fn publish_end(
        &self,
        process: &ProcessId,
        last_seq: u64,
        status: &str,
    ) -> Result<(), FeedError> {
        let what = "XADD end marker and EXPIRE";
        let Some(layout) = self.shared.layout.get() else {
            return self.run(what, process, redis::pipe()).await;
        };
        let key = layout.keys.stream(process);
        let end = [(StreamId::end(last_seq), FeedEvent::End { last_seq })];
        layout.deliver_here(process, &key, end);
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
            .arg(self.shared.config.finished_ttl.as_secs().max(1))
            .ignore();
        self.run(what, process, pipe).await
    }

    fn subscribe(&self, process: &ProcessId, after: u64) -> FeedSubscription {
        let shared = &self.shared;
        let layout = {
            let mut waiting = crate::sync::lock(&shared.waiting);
            match shared.layout.get() {
                Some(layout) => layout,
                // Closed (and so subscribed again) once Redis first answers.
                None => {
                    return waiting
                        .get_or_insert_with(|| FeedSender::new(1))
                        .subscribe()
                }
            }
        };
        let key = layout.keys.stream(process);
        let reader = layout.reader_of(process, &key);
        let (subscription, generation) = reader.watch(key, after, shared.config.follower_buffer);
        if let Some(generation) = generation {
            tokio::spawn(wake(reader.clone(), layout.commands.clone(), generation));
        }
        subscription
    }

    fn tells_how_far(&self) -> bool {
        true
    }

    async fn published(&self, processes: &[ProcessId]) -> Result<Vec<Published>, FeedError> {
        let shared = &self.shared;
        let mut answers = vec![Published::Unknown; processes.len()];
        let Some(layout) = shared.layout.get() else {
            return Ok(answers);
        };
        // One pipeline per bucket: a bucket's keys share a slot, so each pipeline goes to
        // one node (on a single server, every process is in one group). A process whose
        // Redis is down stays `Unknown`.
        let mut groups: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
        for (i, process) in processes.iter().enumerate() {
            if layout.health_of(process, &shared.health).is_up() {
                let group = if layout.buckets.is_empty() {
                    0
                } else {
                    keys::bucket(process)
                };
                groups.entry(group).or_default().push(i);
            }
        }
        let reads = groups.into_values().map(|indices| async move {
            let keys: Vec<String> = indices
                .iter()
                .map(|&i| layout.keys.stream(&processes[i]))
                .collect();
            let found =
                published::last_entries(&layout.commands, &keys, &shared.config.epoch).await;
            (indices, found)
        });
        for (indices, found) in futures::future::join_all(reads).await {
            let found =
                found.map_err(|error| FeedError(anyhow::Error::new(error).context("XREVRANGE")))?;
            for (i, published) in indices.into_iter().zip(found) {
                answers[i] = published;
            }
        }
        Ok(answers)
    }

    async fn ping(&self) -> Result<(), FeedError> {
        let shared = &self.shared;
        let pong = match shared.open().await {
            Ok(layout) => layout.commands.ping().await,
            Err(error) => Err(error),
        };
        match pong {
            Ok(()) => {
                shared.health.mark_up();
                Ok(())
            }
            Err(error) => {
                shared.health.mark_down("PING", &error);
                Err(FeedError(anyhow::Error::new(error).context("PING")))
            }
        }
    }

    fn is_live(&self) -> bool {
        // In a cluster, one master failing over makes every follower poll the store
        // more often for those seconds: followers do not know their process's bucket.
        self.shared.health.is_up()
            && self
                .shared
                .layout
                .get()
                .is_some_and(|layout| layout.buckets.iter().all(|bucket| bucket.is_up()))
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn record_metrics(&self) {
        let up = self.is_live();
        crate::metrics::backend_up(self.name(), up);
        let readers = self
            .shared
            .layout
            .get()
            .map_or(&[][..], |layout| &layout.readers[..]);
        let connected = readers.iter().filter(|r| r.client_id().is_some()).count();
        crate::metrics::redis_connections(up, connected, readers.len());
    }
}

/// The roots TLS trusts when `tls_ca` is given: the system's and the CA's, as PEM.
fn root_cert(tls_ca: Option<&Path>) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(ca) = tls_ca else {
        return Ok(None);
    };
    let pem = std::fs::read(ca)
        .with_context(|| format!("--redis-tls-ca {} cannot be read", ca.display()))?;
    let extra = tls::pem_certificates(&pem)
        .with_context(|| format!("--redis-tls-ca {} is not usable", ca.display()))?;
    Ok(Some(tls::system_roots_and(&extra)))
}

/// The client of the URL's server: over TLS for `rediss://`, trusting the system's
/// roots or, when given, `root_cert`.
fn client(url: &str, root_cert: Option<Vec<u8>>) -> anyhow::Result<redis::Client> {
    let Some(root_cert) = root_cert else {
        return redis::Client::open(url).map_err(|_| anyhow::anyhow!(INVALID_URL));
    };
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    };
    redis::Client::build_with_tls(url, certificates).map_err(|_| anyhow::anyhow!(INVALID_URL))
}

async fn send(
    commands: &Commands,
    health: &Health,
    what: &str,
    pipe: &redis::Pipeline,
) -> Result<(), FeedError> {
    match commands.send(pipe).await {
        Ok(()) => {
            health.mark_up();
            Ok(())
        }
        Err(error) => {
            crate::metrics::redis_write_failed();
            // A server error (such as a refused ID) means Redis answers; but for a
            // cluster without a master for a slot (`CLUSTERDOWN`, during a failover).
            if !matches!(error.kind(), redis::ErrorKind::Server(_))
                || matches!(
                    error.kind(),
                    redis::ErrorKind::Server(
                        redis::ServerErrorKind::ClusterDown
                            | redis::ServerErrorKind::MasterDown
                            | redis::ServerErrorKind::TryAgain
                    )
                )
            {
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
async fn wake(reader: Arc<Reader>, commands: Commands, generation: u64) {
    for _ in 0..100 {
        if reader.has_read(generation) {
            return;
        }
        if let Some(id) = reader.client_id() {
            if commands.unblock(reader.node(), id).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{client, root_cert};

    #[test]
    fn a_ca_file_that_cannot_be_read_or_holds_no_certificate_is_named_at_start() {
        let missing = root_cert(Some("/nonexistent/ca.pem".as_ref())).unwrap_err();
        assert!(
            format!("{missing:#}").starts_with("--redis-tls-ca /nonexistent/ca.pem cannot be read"),
            "{missing:#}"
        );
        let not_pem = std::env::temp_dir().join(format!("ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let refused = root_cert(Some(&not_pem)).unwrap_err();
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
