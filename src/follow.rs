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
//! in pages, so memory stays bounded however slowly it reads. Catch-up pages grow while
//! they come back full, and the next one is read while the one before goes out (at most
//! two pages held), so a long history costs few round trips, none of them waited for
//! twice (adr/0015).
//!
//! A follower also keeps the highest seq it knows is committed (`known`: from the
//! status it started from, its looks, and the feed) and gives it with each catch-up
//! read, so a store reading from a lagging replica completes a page from the primary
//! instead of ending it early (`adapters::postgres`).
//!
//! A look runs beside the live feed, not instead of it: a follower goes on delivering
//! the next messages while its look waits for the store, so a slow store delays no live
//! message.
//!
//! Those looks are shared: [`Followers`] keeps each process's status as last read, one
//! read at a time per process. An idle follower reuses a read younger than its interval,
//! and any follower reuses a read that began after it asked, so the followers of a
//! process that wake together (they heard the same message) make one query, not one
//! each. Looks that decide something at once (after a catch-up, on an end marker) read
//! fresh. Followers' store reads also take turns for a share of the store's connections
//! (`FollowConfig::store_reads`), so that appends always find one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Mutex as AsyncMutex, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::domain::{Cursor, FinishStatus, ProcessId, ProcessInfo, StoredMessage, StreamId};
use crate::metrics::{self, DelaySampler};
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
    /// Messages of a catch-up's first read from the store (full pages double the next,
    /// up to [`CATCH_UP_GROWTH`] times this).
    pub page_size: usize,
    /// Bytes per catch-up read (at least one message is read).
    pub page_bytes: usize,
    /// How long the feed may be silent before the store is asked directly.
    pub idle_poll: Duration,
    /// How often the store is asked while the feed is down.
    pub degraded_poll: Duration,
    /// Most store reads followers make at once on this instance: below the store's
    /// connections, so that appends are not queued behind followers.
    pub store_reads: usize,
}

impl Default for FollowConfig {
    fn default() -> Self {
        Self {
            page_size: CATCH_UP_PAGE,
            page_bytes: CATCH_UP_PAGE_BYTES,
            idle_poll: crate::config::duration(IDLE_POLL),
            degraded_poll: crate::config::duration(DEGRADED_POLL),
            store_reads: 8,
        }
    }
}

/// Default of `--catch-up-page` (and [`FollowConfig::page_size`]): the first page of a
/// catch-up.
pub const CATCH_UP_PAGE: usize = 200;
/// A catch-up's pages double after each full one, up to this many times the first (and
/// always within `page_bytes`): a long history takes a few round trips, not one per
/// 200 messages, while a short one still costs a small read (adr/0015).
pub const CATCH_UP_GROWTH: usize = 16;
/// Default of `--catch-up-page-bytes`: 1 MiB.
pub const CATCH_UP_PAGE_BYTES: usize = 1 << 20;
/// Default of `--idle-poll`.
pub const IDLE_POLL: &str = "1s";
/// Default of `--degraded-poll`.
pub const DEGRADED_POLL: &str = "500ms";

/// What every follow on an instance shares: the ports, the configuration, the cache of
/// process statuses, and the instance's shutdown.
pub struct Followers {
    store: Arc<dyn MessageStore>,
    feed: Arc<dyn LiveFeed>,
    config: FollowConfig,
    statuses: StatusCache,
    /// One permit per follower store read in flight, `config.store_reads` in all.
    reads: Semaphore,
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
            reads: Semaphore::new(config.store_reads.max(1)),
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
            known: known_last_seq,
            page: self.config.page_size,
            ahead: None,
            pending: VecDeque::new(),
            mode: Mode::CatchUp,
            heard_at: Instant::now(),
            awaiting: None,
            look: None,
            end: None,
            delays: DelaySampler::default(),
            shutdown: self.shutdown.child_token(),
        };
        futures::stream::unfold(follower, |mut follower| async move {
            follower.next().await.map(|event| (event, follower))
        })
    }
}

/// A process's status, and when the read that got it began.
#[derive(Clone)]
struct StatusRead {
    started: Instant,
    info: ProcessInfo,
}

type StatusSlot = Arc<AsyncMutex<Option<StatusRead>>>;

/// Each process's last status read, behind a lock that makes its followers' reads take
/// turns (and mostly reuse one another's).
#[derive(Default)]
struct StatusCache {
    slots: Mutex<HashMap<ProcessId, StatusSlot>>,
}

impl StatusCache {
    /// The process's slot; whenever the map doubles, slots idle and older than
    /// `max_age` go.
    fn slot(&self, process: &ProcessId, max_age: Duration) -> StatusSlot {
        let mut slots = crate::sync::lock(&self.slots);
        if let Some(slot) = slots.get(process) {
            return slot.clone();
        }
        if slots.len() >= 1024 && slots.len().is_power_of_two() {
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(read) => read.as_ref().is_some_and(|r| r.started.elapsed() < max_age),
                Err(_) => true,
            });
        }
        slots.entry(process.clone()).or_default().clone()
    }
}

enum Mode {
    /// Reading pages from the store until a short page.
    CatchUp,
    /// Waiting on the feed, and on the look at the store under way, if any.
    Live,
    Done,
}

/// A status read under way, in a task of its own so that dropping the follower (or
/// starting another look) never drops a store call halfway.
struct Look {
    fresh: bool,
    answer: JoinHandle<Option<ProcessInfo>>,
    /// Cancels the look's retries once nobody waits for it.
    _cancel: DropGuard,
}

/// The next catch-up page, read while the one before is delivered.
struct ReadAhead {
    /// The seq the page starts after, and the messages it asks for.
    after: u64,
    limit: usize,
    page: JoinHandle<Option<Vec<StoredMessage>>>,
    /// Cancels the read once nobody waits for it.
    _cancel: DropGuard,
}

struct Follower {
    shared: Arc<Followers>,
    process: ProcessId,
    subscription: FeedSubscription,
    /// The seq of the last message delivered (or the cursor's).
    last: u64,
    /// The highest seq known to be committed (from a status read or the feed): a
    /// catch-up page from a read replica that ends short of it is completed from the
    /// primary.
    known: u64,
    /// Messages the next catch-up read asks for: grows while pages come back full.
    page: usize,
    /// The next catch-up page, being read.
    ahead: Option<ReadAhead>,
    /// Messages read but not yet delivered, all above `last`, in order.
    pending: VecDeque<StoredMessage>,
    mode: Mode,
    /// When the store or the feed last told this follower something.
    heard_at: Instant,
    /// The last seq an idle look saw committed, that the feed has one interval to bring.
    awaiting: Option<u64>,
    /// The status read under way, if any.
    look: Option<Look>,
    /// The end, once a look found the process finished and everything delivered.
    end: Option<FollowEvent>,
    delays: DelaySampler,
    shutdown: CancellationToken,
}

impl Follower {
    async fn next(&mut self) -> Option<FollowEvent> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                self.last = message.seq;
                return Some(FollowEvent::Message(message));
            }
            if let Some(end) = self.end.take() {
                self.mode = Mode::Done;
                return Some(end);
            }
            if self.shutdown.is_cancelled() {
                return None;
            }
            match self.mode {
                Mode::CatchUp => {
                    let (store, process, after) = (&self.shared.store, &self.process, self.last);
                    let known = self.known;
                    let config = &self.shared.config;
                    let (limit, max_bytes) = (self.page.max(1), config.page_bytes);
                    let ahead = match self.ahead.take() {
                        Some(ahead) if ahead.after == after && ahead.limit == limit => {
                            ahead.page.await.ok()
                        }
                        _ => None,
                    };
                    let page = match ahead {
                        Some(page) => page?,
                        None => {
                            retry(&self.shutdown, &self.shared.reads, || {
                                store.read_after(process, after, known, limit, max_bytes)
                            })
                            .await?
                        }
                    };
                    metrics::catch_up_page(page.len());
                    // A page cut short by its bytes still has more after it, and so
                    // does one that ends below a seq known to be committed.
                    let (first, full) = (config.page_size, page.len() >= limit);
                    match page.last().map(|last| last.seq) {
                        Some(last) if full || last < self.known => {
                            if full {
                                self.page = grown_page(limit, first);
                            }
                            // The next page is read while this one goes out.
                            self.read_ahead(last);
                        }
                        _ => {
                            // Caught up: whether the process is finished decides what next.
                            self.start_look(true);
                            self.mode = Mode::Live;
                            self.page = first;
                        }
                    }
                    self.pending.extend(page);
                }
                Mode::Live => self.wait_live().await?,
                Mode::Done => return None,
            }
        }
    }

    /// Starts reading the catch-up page after `after` in a task of its own (replacing
    /// one under way), so that the store's round trip overlaps the delivery of the page
    /// before: a follower holds at most two pages.
    fn read_ahead(&mut self, after: u64) {
        let cancel = self.shutdown.child_token();
        let (shared, process) = (self.shared.clone(), self.process.clone());
        let (known, limit) = (self.known, self.page.max(1));
        let stop = cancel.clone();
        let page = tokio::spawn(async move {
            let (store, max_bytes) = (&shared.store, shared.config.page_bytes);
            retry(&stop, &shared.reads, || {
                store.read_after(&process, after, known, limit, max_bytes)
            })
            .await
        });
        self.ahead = Some(ReadAhead {
            after,
            limit,
            page,
            _cancel: cancel.drop_guard(),
        });
    }

    /// Starts a look at how far the process goes and whether it is finished (replacing
    /// one under way: its answer is no longer wanted). `fresh` when the answer decides
    /// something at once, else a shared recent read will do.
    fn start_look(&mut self, fresh: bool) {
        let cancel = self.shutdown.child_token();
        let answer = tokio::spawn(status(
            self.shared.clone(),
            self.process.clone(),
            fresh,
            self.quiet(),
            cancel.clone(),
        ));
        self.look = Some(Look {
            fresh,
            answer,
            _cancel: cancel.drop_guard(),
        });
    }

    /// Acts on a look's answer: catch up if the store has more than was delivered
    /// (an idle look first gives the feed one more interval), end if the process is
    /// finished and everything was delivered, else go on waiting. `None` if the look
    /// found nothing (shutdown).
    fn looked(&mut self, info: Option<ProcessInfo>, fresh: bool) -> Option<()> {
        let info = info?;
        self.heard_at = Instant::now();
        self.known = self.known.max(info.last_seq);
        let behind = info.last_seq > self.last;
        // An idle look often lands between a commit and its XADD: while the feed is
        // live, give it one more interval to deliver, and catch up only if what was
        // missing then is still missing.
        let give_feed_time = behind
            && !fresh
            && self.shared.feed.is_live()
            && self.awaiting.is_none_or(|awaited| self.last >= awaited);
        if give_feed_time {
            self.awaiting = Some(info.last_seq);
        } else if behind {
            self.awaiting = None;
            self.mode = Mode::CatchUp;
        } else if let Some(status) = info.status.finished() {
            self.end = Some(FollowEvent::End {
                stream_id: info.end_stream_id(),
                status: status.clone(),
            });
        }
        Some(())
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

    /// Waits for the feed's next useful event, the look under way, or (with none under
    /// way) the time to look at the store.
    async fn wait_live(&mut self) -> Option<()> {
        // The feed can go down during the wait: look again at least that often.
        let quiet = self.quiet();
        let wake = (self.heard_at + quiet).min(Instant::now() + self.shared.config.degraded_poll);
        let looking = self.look.is_some();
        let event = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            event = self.subscription.recv() => Some(event),
            answer = async { (&mut self.look.as_mut()?.answer).await.ok() }, if looking => {
                let fresh = self.look.take().is_some_and(|look| look.fresh);
                return self.looked(answer.flatten(), fresh);
            }
            _ = tokio::time::sleep_until(wake), if !looking => None,
        };
        match event {
            None if Instant::now() < self.heard_at + quiet && self.shared.feed.is_live() => {}
            None => self.start_look(false),
            Some(Ok(FeedEvent::Message(message))) if message.seq == self.last + 1 => {
                self.heard_at = Instant::now();
                self.delays.message(self.heard_at, &message.json);
                self.pending.push_back(message);
            }
            Some(Ok(FeedEvent::Message(message))) if message.seq <= self.last => {}
            Some(Ok(FeedEvent::Message(message))) => {
                tracing::debug!(process = %self.process, expected = self.last + 1, got = message.seq, "gap in the live feed: filling it from the store");
                metrics::gap_fill();
                // Published after its commit: it and every seq below it are stored.
                self.known = self.known.max(message.seq);
                self.mode = Mode::CatchUp;
            }
            Some(Err(RecvError::Lagged(missed))) => {
                tracing::debug!(process = %self.process, missed, "follower fell behind its feed buffer: catching up from the store");
                metrics::lagged();
                self.mode = Mode::CatchUp;
            }
            // Too large for the feed: the store has it, and everything before it.
            Some(Ok(FeedEvent::Stored { seq })) if seq > self.last => {
                self.heard_at = Instant::now();
                self.known = self.known.max(seq);
                self.mode = Mode::CatchUp;
            }
            Some(Ok(FeedEvent::Stored { .. })) => {}
            Some(Ok(FeedEvent::End { .. })) => self.start_look(true),
            Some(Err(RecvError::Closed)) => {
                self.subscription = self.shared.feed.subscribe(&self.process, self.last);
                self.start_look(true);
            }
        }
        Some(())
    }
}

/// The size of the catch-up page after a full one of `limit` messages: twice as many,
/// up to [`CATCH_UP_GROWTH`] times the first page.
pub fn grown_page(limit: usize, first: usize) -> usize {
    limit
        .saturating_mul(2)
        .min(first.max(1).saturating_mul(CATCH_UP_GROWTH))
}

/// The process's status: a read that began after this call, or when not `fresh`, one
/// younger than `max_age`. Reads of one process take turns, so followers asking
/// together share one. `None` once `cancel` is.
async fn status(
    shared: Arc<Followers>,
    process: ProcessId,
    fresh: bool,
    max_age: Duration,
    cancel: CancellationToken,
) -> Option<ProcessInfo> {
    let asked = Instant::now();
    let slot = shared.statuses.slot(&process, max_age);
    let mut last = tokio::select! {
        _ = cancel.cancelled() => return None,
        last = slot.lock() => last,
    };
    if let Some(read) = last.as_ref() {
        if read.started >= asked || (!fresh && read.started.elapsed() < max_age) {
            return Some(read.info.clone());
        }
    }
    let started = Instant::now();
    let store = &shared.store;
    // A process not known yet waits as an empty running one for its first message.
    let info = retry(&cancel, &shared.reads, || store.process(&process))
        .await?
        .unwrap_or_else(|| ProcessInfo::not_known_yet(process.clone()));
    *last = Some(StatusRead {
        started,
        info: info.clone(),
    });
    Some(info)
}

/// Runs a store call, holding one of the followers' read permits, until it succeeds or
/// `shutdown` is cancelled (`None`), backing off while the store is unavailable: a
/// follower waits for the store rather than failing.
async fn retry<'a, T>(
    shutdown: &CancellationToken,
    reads: &Semaphore,
    mut call: impl FnMut() -> BoxFuture<'a, Result<T, StoreError>>,
) -> Option<T> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return None,
            // The semaphore is never closed.
            permit = reads.acquire() => {
                let _permit = permit.ok()?;
                call().await
            }
        };
        match result {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures::StreamExt;

    use super::*;
    use crate::adapters::memory::{InProcessFeed, MemoryStore};
    use crate::domain::{NewMessage, RecentProcess, StoredMessage};
    use crate::ports::{AppendOutcome, Registration};

    /// The memory store, counting status reads.
    struct Counting {
        inner: MemoryStore,
        status_reads: AtomicUsize,
    }

    #[async_trait]
    impl MessageStore for Counting {
        async fn register(&self, process: &ProcessId) -> Result<Registration, StoreError> {
            self.inner.register(process).await
        }
        async fn append(
            &self,
            process: &ProcessId,
            messages: &[NewMessage],
        ) -> Result<AppendOutcome, StoreError> {
            self.inner.append(process, messages).await
        }
        async fn finish(
            &self,
            process: &ProcessId,
            status: &FinishStatus,
        ) -> Result<ProcessInfo, StoreError> {
            self.inner.finish(process, status).await
        }
        async fn process(&self, process: &ProcessId) -> Result<Option<ProcessInfo>, StoreError> {
            self.status_reads.fetch_add(1, Ordering::SeqCst);
            self.inner.process(process).await
        }
        async fn read_after(
            &self,
            process: &ProcessId,
            after: u64,
            known: u64,
            limit: usize,
            max_bytes: usize,
        ) -> Result<Vec<StoredMessage>, StoreError> {
            self.inner
                .read_after(process, after, known, limit, max_bytes)
                .await
        }
        async fn recent(
            &self,
            limit: usize,
            only: Option<&[ProcessId]>,
        ) -> Result<Vec<RecentProcess>, StoreError> {
            self.inner.recent(limit, only).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn name(&self) -> &'static str {
            "counting"
        }
    }

    /// Followers that wake together (they heard the same message) share one status
    /// read per idle interval instead of making one each.
    #[tokio::test(start_paused = true)]
    async fn followers_of_a_quiet_process_share_their_idle_looks() {
        let store = Arc::new(Counting {
            inner: MemoryStore::new(),
            status_reads: AtomicUsize::new(0),
        });
        let config = FollowConfig {
            idle_poll: Duration::from_millis(100),
            ..FollowConfig::default()
        };
        let followers = Followers::new(
            store.clone(),
            Arc::new(InProcessFeed::new(16)),
            config,
            CancellationToken::new(),
        );
        let process = ProcessId::parse("quiet").unwrap();
        store.register(&process).await.unwrap();
        let mut follows: Vec<_> = (0..50)
            .map(|_| Box::pin(followers.follow(process.clone(), Cursor::default(), 0)))
            .collect();
        // Let every follower catch up and settle into its idle looks.
        for follow in &mut follows {
            let _ = tokio::time::timeout(Duration::from_millis(1), follow.next()).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;

        let before = store.status_reads.load(Ordering::SeqCst);
        let polled = futures::future::join_all(
            follows
                .iter_mut()
                .map(|follow| tokio::time::timeout(Duration::from_secs(1), follow.next())),
        );
        assert!(
            polled.await.iter().all(Result::is_err),
            "nothing to deliver"
        );
        let reads = store.status_reads.load(Ordering::SeqCst) - before;
        // Ten intervals: about one read each (fifty followers each reading would be 500).
        assert!(
            reads <= 20,
            "{reads} status reads for 50 idle followers in 10 intervals"
        );
    }
}
