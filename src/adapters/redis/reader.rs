//! Shared stream readers: a fixed number of tasks, each holding one dedicated Redis
//! connection and blocking in one `XREAD` over every stream it watches, so an instance
//! holds a bounded number of Redis connections however many clients follow.
//!
//! A process's stream is watched by one reader while anyone follows it; events fan out
//! in-process through a bounded broadcast channel per process. A new watch must join the
//! `XREAD` that is already blocking: the subscriber wakes the reader with
//! `CLIENT UNBLOCK` (from the command connection) until the reader's next snapshot
//! includes it. The `BLOCK` timeout bounds that wait if every wake-up misses.
//!
//! On one Redis server a reader reads whatever keys are given to it. In a Redis Cluster
//! a reader reads one bucket (adr/0013): its keys share one hash slot, so one `XREAD`
//! covers them, on a connection to that slot's master ([`Target::Slot`]). A `MOVED`
//! (the slot moved, or a replica took over) sends the reader to the node it names; an
//! `ASK`, `TRYAGAIN` or `CLUSTERDOWN` (a slot being migrated, a failover under way)
//! makes it wait and read again; a lost node makes it ask the cluster where the slot's
//! master is now. Entries a reader missed meanwhile are filled by followers from the
//! store, like any gap.
//!
//! What this instance's own writer appends reaches its watchers at once, from the write
//! path ([`Reader::deliver`], right after the commit), without waiting for the `XADD`
//! and the `XREAD` that brings it back; the entries read back from Redis up to what was
//! delivered so are skipped, so a watcher gets each event once (adr/0015).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, ErrorKind, ServerErrorKind, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::cluster::{self, Node};
use super::keys::{END_FIELD, EPOCH_FIELD, MESSAGE_FIELD, STORED_FIELD};
use crate::adapters::health::{Health, RETRY_WHILE_DOWN};
use crate::domain::{StoredMessage, StreamId};
use crate::ports::{Epoch, FeedEvent, FeedSender, FeedSubscription};

/// How long one `XREAD` blocks; the response timeout of its connection is longer.
const BLOCK: Duration = Duration::from_secs(2);

/// At most this many entries per stream in one `XREAD` reply.
const READ_COUNT: usize = 512;

/// Where a reader reads.
pub enum Target {
    /// The one Redis server of REDIS_URL.
    Server(redis::Client),
    /// The master of one slot of a Redis Cluster, wherever it is now.
    Slot(SlotTarget),
}

/// A cluster slot's master, as last learned.
pub struct SlotTarget {
    slot: u16,
    /// REDIS_URL, whose host and port are replaced by the master's.
    url: String,
    root_cert: Option<Vec<u8>>,
    /// The feed's command connection, to ask where the slot is.
    commands: ClusterConnection,
    master: Mutex<Option<Node>>,
}

impl SlotTarget {
    pub fn new(
        slot: u16,
        url: String,
        root_cert: Option<Vec<u8>>,
        commands: ClusterConnection,
    ) -> Self {
        Self {
            slot,
            url,
            root_cert,
            commands,
            master: Mutex::default(),
        }
    }

    /// The client of the slot's master, asking the cluster first if it is not known.
    async fn client(&self) -> redis::RedisResult<(redis::Client, Node)> {
        let known = crate::sync::lock(&self.master).clone();
        let node = match known {
            Some(node) => node,
            None => {
                let node = cluster::master_of(&self.commands, self.slot).await?;
                *crate::sync::lock(&self.master) = Some(node.clone());
                node
            }
        };
        let url = cluster::url_of(&self.url, &node).ok_or_else(|| {
            redis::RedisError::from((
                ErrorKind::Client,
                "the cluster names a node that is no URL host",
                node.to_string(),
            ))
        })?;
        let client = match &self.root_cert {
            Some(root_cert) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert.clone()),
                },
            )?,
            None => redis::Client::open(url)?,
        };
        Ok((client, node))
    }

    fn set_master(&self, node: Option<Node>) {
        *crate::sync::lock(&self.master) = node;
    }
}

/// What a reader does after a failed `XREAD`.
enum AfterError {
    /// Connect to the node a `MOVED` named, at once.
    Redirected,
    /// Wait, then read again on the same connection (a slot migrating, a failover
    /// under way).
    Wait,
    /// Wait, then connect again.
    Reconnect,
}

pub struct Reader {
    target: Target,
    health: Arc<Health>,
    /// The store's epoch: entries that do not carry it are not this store's.
    epoch: Epoch,
    shutdown: CancellationToken,
    /// The reading task starts with the first watch: a writer-only process (such as
    /// `agent-stream append`) never opens reader connections.
    started: Once,
    watches: Mutex<HashMap<String, Watch>>,
    /// Bumped whenever a watch is added.
    generation: AtomicU64,
    /// The generation of the snapshot the current `XREAD` was built from.
    read_generation: AtomicU64,
    /// The reader connection's `CLIENT ID`, or -1 while it has none.
    client_id: AtomicI64,
    /// The cluster node the reader is connected to (`CLIENT UNBLOCK` goes there).
    node: Mutex<Option<Node>>,
    wake: Notify,
}

struct Watch {
    sender: FeedSender,
    /// The last entry ID read (or the subscriber's start): the next `XREAD` asks for
    /// what comes after it.
    last: StreamId,
    /// The highest entry ID delivered from this instance's write path: the same entry
    /// read back from Redis is not sent again.
    delivered: StreamId,
}

impl Reader {
    pub fn new(
        target: Target,
        health: Arc<Health>,
        epoch: Epoch,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            target,
            health,
            epoch,
            shutdown,
            started: Once::new(),
            watches: Mutex::default(),
            generation: AtomicU64::new(0),
            read_generation: AtomicU64::new(0),
            client_id: AtomicI64::new(-1),
            node: Mutex::default(),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watch>> {
        crate::sync::lock(&self.watches)
    }

    /// Subscribes to `key` from after seq `after`. Returns the generation the reader
    /// must reach before the new watch is read, when the watch is new.
    pub fn watch(
        self: &Arc<Self>,
        key: String,
        after: u64,
        capacity: usize,
    ) -> (FeedSubscription, Option<u64>) {
        self.started.call_once(|| {
            tokio::spawn(self.clone().run());
        });
        let mut watches = self.lock();
        if let Some(watch) = watches.get(&key).filter(|w| w.sender.receiver_count() > 0) {
            return (watch.sender.subscribe(), None);
        }
        let sender = FeedSender::new(capacity);
        let receiver = sender.subscribe();
        watches.insert(
            key,
            Watch {
                sender,
                last: StreamId::message(after),
                delivered: StreamId::message(0),
            },
        );
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        drop(watches);
        self.wake.notify_one();
        (receiver, Some(generation))
    }

    /// Sends events this instance just committed (each with its entry ID, in order) to
    /// the watchers of `key`, if it has any, as the `XREAD` would once their entries are
    /// in Redis; those entries are then skipped when read back.
    pub fn deliver(&self, key: &str, events: impl IntoIterator<Item = (StreamId, FeedEvent)>) {
        let mut watches = self.lock();
        let Some(watch) = watches.get_mut(key) else {
            return;
        };
        for (id, event) in events {
            watch.delivered = watch.delivered.max(id);
            // An error only means every subscriber has just left.
            let _ = watch.sender.send(event);
        }
    }

    /// Whether the `XREAD` under way already includes watches up to `generation`.
    pub fn has_read(&self, generation: u64) -> bool {
        self.read_generation.load(Ordering::SeqCst) >= generation
    }

    pub fn client_id(&self) -> Option<i64> {
        Some(self.client_id.load(Ordering::SeqCst)).filter(|id| *id >= 0)
    }

    /// The cluster node of the reader's connection (`None` on a single server).
    pub fn node(&self) -> Option<Node> {
        crate::sync::lock(&self.node).clone()
    }

    /// Whether the reader's health is the feed's: on a single server, yes; in a
    /// cluster, one master down is not Redis down (the commands say when it is).
    fn tracks_health(&self) -> bool {
        matches!(self.target, Target::Server(_))
    }

    /// Drops watches nobody listens to, and returns the keys and IDs to read after.
    fn snapshot(&self) -> (Vec<String>, Vec<String>) {
        let mut watches = self.lock();
        self.read_generation
            .store(self.generation.load(Ordering::SeqCst), Ordering::SeqCst);
        watches.retain(|_, watch| watch.sender.receiver_count() > 0);
        watches
            .iter()
            .map(|(key, watch)| (key.clone(), watch.last.to_string()))
            .unzip()
    }

    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(3)));
        let (client, node) = match &self.target {
            Target::Server(client) => (client.clone(), None),
            Target::Slot(slot) => {
                let (client, node) = slot.client().await?;
                (client, Some(node))
            }
        };
        let connected = client
            .get_multiplexed_async_connection_with_config(&config)
            .await;
        let mut connection = match connected {
            Ok(connection) => connection,
            Err(error) => {
                // Ask the cluster again next time: the node may be gone for good.
                if let Target::Slot(slot) = &self.target {
                    slot.set_master(None);
                }
                return Err(error);
            }
        };
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut connection)
            .await?;
        *crate::sync::lock(&self.node) = node;
        self.client_id.store(id, Ordering::SeqCst);
        Ok(connection)
    }

    /// Decides what follows a failed `XREAD`, and tells the target what it learned.
    fn after_error(&self, error: &redis::RedisError) -> AfterError {
        let Target::Slot(slot) = &self.target else {
            return AfterError::Reconnect;
        };
        match error.kind() {
            ErrorKind::Server(ServerErrorKind::Moved) => {
                let Some((host, port)) = error.redirect_node() else {
                    slot.set_master(None);
                    return AfterError::Reconnect;
                };
                slot.set_master(Some(Node {
                    host: host.to_owned(),
                    port,
                }));
                AfterError::Redirected
            }
            ErrorKind::Server(
                ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown,
            ) => AfterError::Wait,
            _ => {
                slot.set_master(None);
                AfterError::Reconnect
            }
        }
    }

    /// Reads until `shutdown`. The connection is this task's alone: a blocking `XREAD`
    /// would stall any other command sent on it.
    async fn run(self: Arc<Self>) {
        let (health, shutdown) = (&self.health, &self.shutdown);
        let mut connection = None;
        let mut backoff = Duration::from_millis(50);
        // Redirects since the last read: a second one in a row waits first, so two
        // nodes that disagree for a moment are not asked in a tight loop.
        let mut redirects = 0;
        while !shutdown.is_cancelled() {
            let conn = match connection.as_mut() {
                Some(conn) => conn,
                None => match self.connect().await {
                    Ok(conn) => connection.insert(conn),
                    Err(error) => {
                        self.failed("connecting a stream reader", &error);
                        self.pause(&mut backoff, shutdown).await;
                        continue;
                    }
                },
            };
            let (keys, ids) = self.snapshot();
            if keys.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            let mut xread = redis::cmd("XREAD");
            xread
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&keys)
                .arg(&ids);
            let reply: redis::RedisResult<Option<StreamReadReply>> = tokio::select! {
                reply = xread.query_async(conn) => reply,
                _ = shutdown.cancelled() => return,
            };
            match reply {
                Ok(reply) => {
                    if self.tracks_health() {
                        health.mark_up();
                    }
                    backoff = Duration::from_millis(50);
                    redirects = 0;
                    if let Some(reply) = reply {
                        self.dispatch(reply);
                    }
                }
                Err(error) => match self.after_error(&error) {
                    AfterError::Redirected => {
                        tracing::debug!(error = %error,
                            "a stream reader follows its slot to another node");
                        connection = None;
                        self.client_id.store(-1, Ordering::SeqCst);
                        redirects += 1;
                        if redirects > 1 {
                            self.pause(&mut backoff, shutdown).await;
                        }
                    }
                    AfterError::Wait => {
                        tracing::debug!(error = %error, "a stream reader waits for its slot");
                        self.pause(&mut backoff, shutdown).await;
                    }
                    AfterError::Reconnect => {
                        self.failed("reading streams", &error);
                        connection = None;
                        self.client_id.store(-1, Ordering::SeqCst);
                        self.pause(&mut backoff, shutdown).await;
                    }
                },
            }
        }
    }

    /// A read or a connection failed. On a single server that is Redis down; in a
    /// cluster, one node lost (logged at each attempt's level: the failover is said by
    /// the cluster's own logs, and followers fill what the reader misses).
    fn failed(&self, what: &str, error: &redis::RedisError) {
        if self.tracks_health() {
            self.health.mark_down(what, error);
        } else {
            tracing::debug!(error = %error,
                "{what} failed on a Redis Cluster node: asking the cluster where the slot is now");
        }
    }

    async fn pause(&self, backoff: &mut Duration, shutdown: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep(*backoff) => {}
            _ = shutdown.cancelled() => {}
        }
        // Capped low: once Redis is back, followers should be off polling quickly.
        *backoff = (*backoff * 2).min(RETRY_WHILE_DOWN);
    }

    /// Turns entries into events for their watchers. Entries this service did not
    /// write (another ID shape or field) only move the read position, and so do
    /// entries of another store's epoch (counted): Redis never tells a follower about a
    /// message its own store does not hold.
    fn dispatch(&self, reply: StreamReadReply) {
        let epoch = self.epoch.as_str().as_bytes();
        let mut watches = self.lock();
        for stream in reply.keys {
            let Some(watch) = watches.get_mut(&stream.key) else {
                continue;
            };
            for entry in stream.ids {
                let Ok(id) = StreamId::parse(&entry.id) else {
                    continue;
                };
                watch.last = watch.last.max(id);
                if !matches!(entry.map.get(EPOCH_FIELD), Some(Value::BulkString(e)) if e == epoch) {
                    crate::metrics::foreign_entry();
                    continue;
                }
                // Already sent from this instance's write path.
                if id <= watch.delivered {
                    continue;
                }
                let field = |name| entry.map.get(name);
                let event = match (id.n, field(MESSAGE_FIELD), field(STORED_FIELD)) {
                    (0, Some(Value::BulkString(json)), _) => FeedEvent::Message(StoredMessage {
                        seq: id.seq,
                        json: Bytes::from(json.clone()),
                    }),
                    (0, None, Some(_)) => FeedEvent::Stored { seq: id.seq },
                    (1, _, _) if field(END_FIELD).is_some() => FeedEvent::End { last_seq: id.seq },
                    _ => continue,
                };
                // An error only means every subscriber has just left.
                let _ = watch.sender.send(event);
            }
        }
    }
}
