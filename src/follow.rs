//! The follow algorithm, written once against the two ports: deliver every message of a
//! process after a cursor, in order, each once, then each new one as it is appended,
//! then the end once the process is finished.
//!
//! The reader always knows which seq comes next (`last + 1`), because seqs are gap-free.
//! So the live feed is only a hint: an event with the next seq is delivered, an older
//! one is a duplicate and dropped, a newer one reveals a gap that is filled from the
//! store (seqs commit in order, so everything below it is there). When the feed says
//! nothing for `idle_poll`, the store is asked directly, which catches a message whose
//! publish never happened and a feed that is down. (A message the store has but the
//! live feed has not brought yet is given one more interval: the look often falls
//! between a commit and its publish, and catching up then would only add load.) A reader that falls behind its
//! bounded feed buffer (a slow client) is told it lagged and catches up from the store
//! in pages, so memory stays bounded however slowly it reads.
//!
//! Those idle looks are shared: [`Followers`] keeps each process's status as last read,
//! and an idle follower reuses it while it is younger than the follower's interval, so a
//! quiet process costs about one status query per interval however many follow it.
//! Looks that decide something at once (after a catch-up, on an end marker) read fresh.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::{Cursor, FinishStatus, ProcessId, ProcessInfo, StoredMessage, StreamId};
use crate::ports::{FeedEvent, FeedSubscription, LiveFeed, MessageStore, StoreError};

/// What one follower sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEvent {
    Message(StoredMessage),
    /// The process is finished and everything was delivered; nothing comes after it.
    End {
        stream_id: StreamId,
        status: FinishStatus,
    },
}

#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// Messages per catch-up read from the store.
    pub page_size: usize,
    /// Bytes per catch-up read (at least one message is read).
    pub page_bytes: usize,
    /// How long the feed may be silent before the store is asked directly.
    pub idle_poll: Duration,
    /// How often the store is asked while the feed is down.
    pub degraded_poll: Duration,
}

impl Default for FollowConfig {
    fn default() -> Self {
        Self {
            page_size: 200,
            page_bytes: 1 << 20,
            idle_poll: Duration::from_secs(1),
            degraded_poll: Duration::from_millis(500),
        }
    }
}

/// What every follow on an instance shares: the ports, the configuration, the cache of
/// process statuses, and the instance's shutdown.
pub struct Followers {
    store: Arc<dyn MessageStore>,
    feed: Arc<dyn LiveFeed>,
    config: FollowConfig,
    statuses: StatusCache,
    shutdown: CancellationToken,
}

impl Followers {
    pub fn new(
        store: Arc<dyn MessageStore>,
        feed: Arc<dyn LiveFeed>,
        config: FollowConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            feed,
            config,
            statuses: StatusCache::default(),
            shutdown,
        })
    }

    /// Follows `process` from `cursor`. `known_last_seq` is the process's last seq as
    /// the caller last saw it: the feed is joined there, and the store fills in the
    /// rest. The stream ends after the end event, or when the instance shuts down.
    pub fn follow(
        self: &Arc<Self>,
        process: ProcessId,
        cursor: Cursor,
        known_last_seq: u64,
    ) -> impl Stream<Item = FollowEvent> + Send + 'static {
        let subscription = self
            .feed
            .subscribe(&process, known_last_seq.max(cursor.after_seq()));
        let follower = Follower {
            shared: self.clone(),
            process,
            subscription,
            last: cursor.after_seq(),
            pending: VecDeque::new(),
            mode: Mode::CatchUp,
            heard_at: Instant::now(),
            awaiting: None,
            shutdown: self.shutdown.child_token(),
        };
        futures::stream::unfold(follower, |mut follower| async move {
            follower.next().await.map(|event| (event, follower))
        })
    }
}

/// Each process's status as a follower last read it.
#[derive(Default)]
struct StatusCache {
    entries: Mutex<HashMap<ProcessId, (Instant, ProcessInfo)>>,
}

impl StatusCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProcessId, (Instant, ProcessInfo)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The status read at most `max_age` ago, if there is one.
    fn get(&self, process: &ProcessId, max_age: Duration) -> Option<ProcessInfo> {
        let entries = self.lock();
        let (read_at, info) = entries.get(process)?;
        (read_at.elapsed() < max_age).then(|| info.clone())
    }

    /// Keeps a fresh read; entries older than `max_age` go whenever the map doubles.
    fn put(&self, info: &ProcessInfo, max_age: Duration) {
        let mut entries = self.lock();
        if entries.len() >= 1024 && entries.len().is_power_of_two() {
            entries.retain(|_, (read_at, _)| read_at.elapsed() < max_age);
        }
        entries.insert(info.process_id.clone(), (Instant::now(), info.clone()));
    }
}

enum Mode {
    /// Reading pages from the store until a short page.
    CatchUp,
    /// Asking the store how far the process goes and whether it is finished; `fresh`
    /// when the answer decides something at once, else a shared recent read will do.
    Check {
        fresh: bool,
    },
    /// Waiting on the feed.
    Live,
    Done,
}

struct Follower {
    shared: Arc<Followers>,
    process: ProcessId,
    subscription: FeedSubscription,
    /// The seq of the last message delivered (or the cursor's).
    last: u64,
    /// Messages read but not yet delivered, all above `last`, in order.
    pending: VecDeque<StoredMessage>,
    mode: Mode,
    /// When the store or the feed last told this follower something.
    heard_at: Instant,
    /// The last seq an idle look saw committed, that the feed has one interval to bring.
    awaiting: Option<u64>,
    shutdown: CancellationToken,
}

impl Follower {
    async fn next(&mut self) -> Option<FollowEvent> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                self.last = message.seq;
                return Some(FollowEvent::Message(message));
            }
            if self.shutdown.is_cancelled() {
                return None;
            }
            match self.mode {
                Mode::CatchUp => {
                    let (store, process, after) = (&self.shared.store, &self.process, self.last);
                    let config = &self.shared.config;
                    let (limit, max_bytes) = (config.page_size, config.page_bytes);
                    let page = retry(&self.shutdown, || {
                        store.read_after(process, after, limit, max_bytes)
                    })
                    .await?;
                    if page.len() < limit {
                        self.mode = Mode::Check { fresh: true };
                    }
                    self.pending.extend(page);
                }
                Mode::Check { fresh } => {
                    let info = self.status(fresh).await?;
                    self.heard_at = Instant::now();
                    let behind = info.last_seq > self.last;
                    // An idle look often lands between a commit and its XADD: while the
                    // feed is live, give it one more interval to deliver, and catch up
                    // only if what was missing then is still missing.
                    let give_feed_time = behind
                        && !fresh
                        && self.shared.feed.is_live()
                        && self.awaiting.is_none_or(|awaited| self.last >= awaited);
                    if give_feed_time {
                        self.awaiting = Some(info.last_seq);
                        self.mode = Mode::Live;
                    } else if behind {
                        self.awaiting = None;
                        self.mode = Mode::CatchUp;
                    } else if let Some(status) = info.status.finished() {
                        self.mode = Mode::Done;
                        return Some(FollowEvent::End {
                            stream_id: info.end_stream_id(),
                            status: status.clone(),
                        });
                    } else {
                        self.mode = Mode::Live;
                    }
                }
                Mode::Live => self.wait_live().await?,
                Mode::Done => return None,
            }
        }
    }

    /// The process's status: read from the store when `fresh`, else a read shared with
    /// the process's other followers if it is recent enough. `None` on shutdown, or if
    /// the process is gone.
    async fn status(&self, fresh: bool) -> Option<ProcessInfo> {
        let max_age = self.quiet();
        if !fresh {
            if let Some(info) = self.shared.statuses.get(&self.process, max_age) {
                return Some(info);
            }
        }
        let (store, process) = (&self.shared.store, &self.process);
        let info = retry(&self.shutdown, || store.process(process)).await??;
        self.shared.statuses.put(&info, max_age);
        Some(info)
    }

    /// How long the feed may stay silent before the store is asked. While the feed is
    /// down, nothing comes from it: ask the store more often.
    fn quiet(&self) -> Duration {
        let config = &self.shared.config;
        if self.shared.feed.is_live() {
            config.idle_poll
        } else {
            config.degraded_poll
        }
    }

    /// Waits for the feed's next useful event, or for the time to check the store.
    async fn wait_live(&mut self) -> Option<()> {
        // The feed can go down during the wait: look again at least that often.
        let quiet = self.quiet();
        let wake = (self.heard_at + quiet).min(Instant::now() + self.shared.config.degraded_poll);
        let event = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            event = self.subscription.recv() => Some(event),
            _ = tokio::time::sleep_until(wake) => None,
        };
        match event {
            None if Instant::now() < self.heard_at + quiet && self.shared.feed.is_live() => {}
            None => self.mode = Mode::Check { fresh: false },
            Some(Ok(FeedEvent::Message(message))) if message.seq == self.last + 1 => {
                self.heard_at = Instant::now();
                self.pending.push_back(message);
            }
            Some(Ok(FeedEvent::Message(message))) if message.seq <= self.last => {}
            Some(Ok(FeedEvent::Message(message))) => {
                tracing::debug!(process = %self.process, expected = self.last + 1, got = message.seq, "gap in the live feed: filling it from the store");
                self.mode = Mode::CatchUp;
            }
            Some(Err(RecvError::Lagged(missed))) => {
                tracing::debug!(process = %self.process, missed, "follower fell behind its feed buffer: catching up from the store");
                self.mode = Mode::CatchUp;
            }
            Some(Ok(FeedEvent::End { .. })) => self.mode = Mode::Check { fresh: true },
            Some(Err(RecvError::Closed)) => {
                self.subscription = self.shared.feed.subscribe(&self.process, self.last);
                self.mode = Mode::Check { fresh: true };
            }
        }
        Some(())
    }
}

/// Runs a store call until it succeeds or `shutdown` is cancelled (`None`), backing off
/// while the store is unavailable: a follower waits for the store rather than failing.
async fn retry<'a, T>(
    shutdown: &CancellationToken,
    mut call: impl FnMut() -> BoxFuture<'a, Result<T, StoreError>>,
) -> Option<T> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match call().await {
            Ok(value) => return Some(value),
            Err(error) => {
                // The store's outage itself is logged once, where it is tracked.
                tracing::debug!(error = format!("{:#}", anyhow::Error::new(error)), retry_in = ?backoff, "a follower could not read the store");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                // Capped at a second: when the store is back, followers go on within it.
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
