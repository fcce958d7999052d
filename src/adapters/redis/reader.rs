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
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use super::keys::{END_FIELD, EPOCH_FIELD, MESSAGE_FIELD, STORED_FIELD};
use crate::adapters::health::{Health, RETRY_WHILE_DOWN};
use crate::domain::{StoredMessage, StreamId};
use crate::ports::{Epoch, FeedEvent, FeedSubscription};

/// How long one `XREAD` blocks; the response timeout of its connection is longer.
const BLOCK: Duration = Duration::from_secs(2);

/// At most this many entries per stream in one `XREAD` reply.
const READ_COUNT: usize = 512;

pub struct Reader {
    client: redis::Client,
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
    wake: Notify,
}

struct Watch {
    sender: broadcast::Sender<FeedEvent>,
    /// The last entry ID read (or the subscriber's start): the next `XREAD` asks for
    /// what comes after it.
    last: StreamId,
    /// The highest entry ID delivered from this instance's write path: the same entry
    /// read back from Redis is not sent again.
    delivered: StreamId,
}

impl Reader {
    pub fn new(
        client: redis::Client,
        health: Arc<Health>,
        epoch: Epoch,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            client,
            health,
            epoch,
            shutdown,
            started: Once::new(),
            watches: Mutex::default(),
            generation: AtomicU64::new(0),
            read_generation: AtomicU64::new(0),
            client_id: AtomicI64::new(-1),
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
        let (sender, receiver) = broadcast::channel(capacity.max(1));
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
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut connection)
            .await?;
        self.client_id.store(id, Ordering::SeqCst);
        Ok(connection)
    }

    /// Reads until `shutdown`. The connection is this task's alone: a blocking `XREAD`
    /// would stall any other command sent on it.
    async fn run(self: Arc<Self>) {
        let (health, shutdown) = (&self.health, &self.shutdown);
        let mut connection = None;
        let mut backoff = Duration::from_millis(50);
        while !shutdown.is_cancelled() {
            let conn = match connection.as_mut() {
                Some(conn) => conn,
                None => match self.connect().await {
                    Ok(conn) => connection.insert(conn),
                    Err(error) => {
                        health.mark_down("connecting a stream reader", &error);
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
                    health.mark_up();
                    backoff = Duration::from_millis(50);
                    if let Some(reply) = reply {
                        self.dispatch(reply);
                    }
                }
                Err(error) => {
                    health.mark_down("reading streams", &error);
                    connection = None;
                    self.client_id.store(-1, Ordering::SeqCst);
                    self.pause(&mut backoff, shutdown).await;
                }
            }
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
