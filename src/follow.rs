//! The follow algorithm, written once against the two ports: deliver every message of a
//! process after a cursor, in order, each once, then each new one as it is appended,
//! then the end once the process is finished.
//!
//! A follower always knows which seq comes next (`delivered + 1`), because seqs are
//! gap-free. So the live feed is only a hint: an event with the next seq is delivered,
//! an older one is a duplicate and dropped, a newer one reveals a gap that is filled
//! from the store (seqs commit in order, so everything below it is there). When the
//! feed says nothing for the poll interval (`idle_poll`), the follower checks the
//! process's status in the store, which catches a message whose publish never happened
//! and a feed that is down. (A message the store has but the live feed has not brought
//! yet is given one more interval: the check often falls between a commit and its
//! publish, and catching up then would only add load.) A follower that falls behind its
//! bounded feed buffer (a slow client) is told so and catches up from the store in
//! pages, so memory stays bounded however slowly it reads. Catch-up pages grow while
//! they come back full, and the next one is read while the one before goes out (at most
//! two pages held), so a long history costs few round trips, none of them waited for
//! twice (adr/0015). A catch-up longer than a page is read instead as one stream of the
//! store's (one query whose rows are read as the client takes them, in batches, at most
//! three held) while one of a few stream slots is free (`FollowConfig::streams`); a
//! stream whose client leaves it waiting past `stream_stall`, or that lasts past
//! `stream_time`, gives up its connection, and the follower goes on with pages after
//! the last message it took (adr/0019). That reading is one [`HistoryReader`], which the
//! JSON array snapshot uses too ([`Followers::read_history`], adr/0022).
//!
//! With a feed that tells how far its publishing got (Redis) on a store whose instances
//! elect a republisher (PostgreSQL), a quiet-feed check asks the feed first: when it
//! holds nothing past what the follower delivered, there is nothing to do, because the
//! republisher ([`crate::republish`]) puts into the feed whatever the store holds but
//! the feed missed. The store is asked only when the feed holds more, cannot tell, or
//! holds entries that are not this store's. So quiet followers cost the store nothing
//! while the feed is live, on any number of instances.
//!
//! A follower also keeps the highest seq it knows is committed (`committed`: from the
//! status it started from, its status checks, and the feed) and gives it with each
//! catch-up read, so a store reading from a lagging replica completes a page from the
//! primary instead of ending it early (`adapters::postgres`).
//!
//! A status check runs beside the live feed, not instead of it: a follower goes on
//! delivering the next messages while its check waits for the store, so a slow store
//! delays no live message.
//!
//! Those checks are shared: [`Followers`] keeps each process's status as last read, one
//! read at a time per process. A check because the feed was quiet reuses a read younger
//! than the poll interval, and any check reuses a read that began after it was asked, so
//! the followers of a process that wake together (they heard the same message) make one
//! query, not one each. Checks that decide something at once (after a catch-up, on an
//! end marker) read fresh. Followers' store reads also take turns for a share of the
//! store's connections (`FollowConfig::store_reads`), so that appends always find one.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use futures::future::BoxFuture;
use futures::Stream;
use tokio::sync::{mpsc, Mutex as AsyncMutex, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::domain::{Cursor, FinishStatus, ProcessId, ProcessInfo, StoredMessage, StreamId};
use crate::metrics::{self, DelaySampler};
use crate::ports::{
    FeedEvent, FeedNext, FeedSubscription, LiveFeed, MessageSink, MessageStore, Published,
    StoreError,
};

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

/// How follows catch up, wait on a quiet feed and keep their connection alive: the
/// flags under "Follows" in `serve --help`, with the same defaults in [`Default`].
/// Each field's doc comment is its flag's help.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[command(next_help_heading = "Follows")]
pub struct FollowConfig {
    /// How long a follower waits on a silent live feed before it checks how far the
    /// process goes (with Redis: in its stream; else, or while Redis is down, in the
    /// store), and how often one instance republishes what Redis missed.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_IDLE_POLL",
        default_value = IDLE_POLL, value_parser = humantime::parse_duration)]
    pub idle_poll: Duration,

    /// Interval of the SSE comment / NDJSON empty line sent while a follow is idle.
    // Sent by the HTTP layer around the follow (`http::messages`), not by `Followers`.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_HEARTBEAT",
        default_value = HEARTBEAT, value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// Messages of a catch-up's first read from the store (each full page doubles the
    /// next, up to 16 times this, within `--catch-up-page-bytes`).
    // 16 is `CATCH_UP_GROWTH`; also the page of a snapshot's reads and of a republish.
    #[arg(
        long,
        hide_short_help = true,
        env = "AGENT_STREAM_CATCH_UP_PAGE",
        default_value_t = CATCH_UP_PAGE
    )]
    pub catch_up_page: usize,

    /// Bytes per catch-up read from the store (at least one message is read): bounds
    /// what a follower whose client stopped reading holds.
    #[arg(long, hide_short_help = true,
        env = "AGENT_STREAM_CATCH_UP_PAGE_BYTES", default_value_t = CATCH_UP_PAGE_BYTES)]
    pub catch_up_page_bytes: usize,

    /// How often a follower asks the store while the live feed (Redis) is down.
    #[arg(long, hide_short_help = true,
        env = "AGENT_STREAM_DEGRADED_POLL", default_value = DEGRADED_POLL,
        value_parser = humantime::parse_duration)]
    pub degraded_poll: Duration,

    /// Not a flag: most store reads followers make at once on this instance, below the
    /// store's connections so that appends are not queued behind followers.
    /// `ServeConfig::http` works it out from `--database-max-connections`.
    #[arg(skip = STORE_READS)]
    pub store_reads: usize,
    /// Not a flag: most catch-ups read as one stream of the store's at once (each also
    /// holds one of `store_reads`); the others read pages. 0: always pages.
    /// `ServeConfig::http` works it out from `--database-max-connections`.
    #[arg(skip = CATCH_UP_STREAMS)]
    pub streams: usize,
    /// Not a flag: longest a catch-up stream waits for its follower to take a batch
    /// before it gives up its store connection (the follower goes on with pages).
    #[arg(skip = CATCH_UP_STREAM_STALL)]
    pub stream_stall: Duration,
    /// Not a flag: longest a catch-up stream may last, however steadily its follower
    /// takes it.
    #[arg(skip = CATCH_UP_STREAM_TIME)]
    pub stream_time: Duration,
}

impl Default for FollowConfig {
    fn default() -> Self {
        Self {
            idle_poll: crate::config::duration(IDLE_POLL),
            heartbeat: crate::config::duration(HEARTBEAT),
            catch_up_page: CATCH_UP_PAGE,
            catch_up_page_bytes: CATCH_UP_PAGE_BYTES,
            degraded_poll: crate::config::duration(DEGRADED_POLL),
            store_reads: STORE_READS,
            streams: CATCH_UP_STREAMS,
            stream_stall: CATCH_UP_STREAM_STALL,
            stream_time: CATCH_UP_STREAM_TIME,
        }
    }
}

/// Default of `--catch-up-page` (and [`FollowConfig::catch_up_page`]): the first page of a
/// catch-up.
pub const CATCH_UP_PAGE: usize = 200;
/// A catch-up's pages double after each full one, up to this many times the first (and
/// always within `catch_up_page_bytes`): a long history takes a few round trips, not one
/// per 200 messages, while a short one still costs a small read (adr/0015).
pub const CATCH_UP_GROWTH: usize = 16;
/// Default of `--catch-up-page-bytes`: 1 MiB.
pub const CATCH_UP_PAGE_BYTES: usize = 1 << 20;
/// Bytes of JSON in a batch of a catch-up stream (at most `catch_up_page_bytes`): a follower
/// holds about three (one being read, one queued, one being delivered).
pub const CATCH_UP_BATCH_BYTES: usize = 64 * 1024;
/// Default of [`FollowConfig::stream_stall`]: a batch of 64 KiB that waits this long
/// is a client far slower than the store.
pub const CATCH_UP_STREAM_STALL: Duration = Duration::from_secs(1);
/// Default of [`FollowConfig::stream_time`].
pub const CATCH_UP_STREAM_TIME: Duration = Duration::from_secs(10);
/// A follower's first wait before it reads the store again after a read that failed.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between a follower's reads while the store is unavailable: when
/// the store is back, followers go on within it.
const LAST_BACKOFF: Duration = Duration::from_secs(1);

/// A follower's wait before it reads the store again after a read that failed:
/// [`FIRST_BACKOFF`], doubling to [`LAST_BACKOFF`] while the store stays unavailable.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(FIRST_BACKOFF)
    }

    /// Logs the read of `process` that failed and waits; `Break` on shutdown.
    async fn wait(
        &mut self,
        shutdown: &CancellationToken,
        process: &ProcessId,
        error: StoreError,
    ) -> ControlFlow<()> {
        // The store's outage itself is logged once, where it is tracked.
        let retry_in = self.0;
        tracing::debug!(%process, ?retry_in, error = format!("{:#}", anyhow::Error::new(error)),
            "a follower could not read the store");
        tokio::select! {
            _ = shutdown.cancelled() => return ControlFlow::Break(()),
            _ = tokio::time::sleep(retry_in) => {}
        }
        self.0 = (retry_in * 2).min(LAST_BACKOFF);
        ControlFlow::Continue(())
    }
}
/// Default of `--idle-poll`.
pub const IDLE_POLL: &str = "1s";
/// Default of `--degraded-poll`.
pub const DEGRADED_POLL: &str = "500ms";
/// Default of `--heartbeat`.
pub const HEARTBEAT: &str = "15s";
/// [`FollowConfig::store_reads`] where no store's pool size says otherwise (tests, the
/// benches): half the default `--database-max-connections`, as `ServeConfig::http` has it.
pub const STORE_READS: usize = crate::config::DATABASE_MAX_CONNECTIONS as usize / 2;
/// [`FollowConfig::streams`] where no store's pool size says otherwise: a quarter of the
/// default `--database-max-connections`, as `ServeConfig::http` has it.
pub const CATCH_UP_STREAMS: usize = crate::config::DATABASE_MAX_CONNECTIONS as usize / 4;

/// What every follow on an instance shares: the ports, the configuration, the cache of
/// process statuses, and the instance's shutdown.
pub struct Followers {
    store: Arc<dyn MessageStore>,
    feed: Arc<dyn LiveFeed>,
    config: FollowConfig,
    statuses: StatusCache,
    /// Whether a republisher puts into the feed whatever the store holds but the feed
    /// missed (see [`crate::republish`]): then a quiet feed's "nothing new" is believed,
    /// and quiet-feed checks ask the feed instead of the store.
    republished: bool,
    /// One permit per follower store read in flight, `config.store_reads` in all.
    reads: Arc<Semaphore>,
    /// One permit per catch-up stream, `config.streams` in all.
    streams: Arc<Semaphore>,
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
            republished: crate::republish::applies(&*store, &*feed),
            store,
            feed,
            reads: Arc::new(Semaphore::new(config.store_reads.max(1))),
            streams: Arc::new(Semaphore::new(config.streams)),
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
            progress: Progress {
                delivered: cursor.after_seq(),
                committed: known_last_seq,
                pending: VecDeque::new(),
                end: None,
            },
            mode: Mode::CatchUp,
            catch_up: CatchUp {
                reader: None,
                backoff: Backoff::new(),
            },
            listening: Listening {
                subscription,
                last_heard: Instant::now(),
                expected_from_feed: None,
                status_check: None,
                delays: DelaySampler::default(),
            },
            shutdown: self.shutdown.child_token(),
        };
        futures::stream::unfold(follower, |mut follower| async move {
            follower.next().await.map(|event| (event, follower))
        })
    }

    /// Reads `process`'s messages after `after` up to `upto` (its last seq when the
    /// caller looked), at most `limit`, as a follow catches up: what a snapshot reads.
    /// Unlike a follower, its caller sees a read that fails; and a reading that is not
    /// a follow's goes on through the instance's shutdown, as any request does, within
    /// the shutdown's grace.
    pub fn read_history(
        self: &Arc<Self>,
        process: ProcessId,
        after: u64,
        upto: u64,
        limit: Option<usize>,
    ) -> HistoryReader {
        HistoryReader::new(
            self.clone(),
            process,
            (after, upto, upto),
            limit,
            CancellationToken::new(),
        )
    }
}

/// What a status read learned about a process, and when it began.
#[derive(Clone)]
struct StatusRead {
    started: Instant,
    known: Known,
}

/// Where a status read got its answer.
#[derive(Clone)]
enum Known {
    /// The store's status of the process.
    Store(ProcessInfo),
    /// How far the feed's publishing got.
    Feed(Published),
}

/// What a status check tells a follower.
enum Status {
    /// The store's status of the process.
    Stored(ProcessInfo),
    /// The feed holds nothing past what the follower delivered, and a republisher
    /// puts into it anything stored but unpublished: nothing to do.
    NothingNew,
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
    /// Reading the store (a [`HistoryReader`]) until it gave everything committed.
    CatchUp,
    /// Waiting on the feed, and on the status check under way, if any.
    Live,
    Done,
}

/// How recent a status read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    /// The answer decides something at once (after a catch-up, on an end marker): only a
    /// read that began after the check was asked will do.
    Fresh,
    /// A check because the feed was quiet: a read younger than the poll interval will do.
    Recent,
}

/// A status check under way, in a task of its own so that dropping the follower (or
/// starting another check) never drops a store call halfway.
struct StatusCheck {
    freshness: Freshness,
    answer: JoinHandle<Option<Status>>,
    /// Cancels the check's retries once nobody waits for it.
    _cancel: DropGuard,
}

/// How far a follower has got: what it delivered, what it knows is committed, and what
/// it has read but not delivered yet.
struct Progress {
    /// The seq of the last message delivered (or the cursor's).
    delivered: u64,
    /// The highest seq known to be committed (from a status read or the feed): a
    /// catch-up page from a read replica that ends short of it is completed from the
    /// primary.
    committed: u64,
    /// Messages read but not yet delivered, all above `delivered`, in order.
    pending: VecDeque<StoredMessage>,
    /// The end, once a status check found the process finished and everything delivered.
    end: Option<FollowEvent>,
}

impl Progress {
    /// The next event ready to deliver, if any.
    fn next_ready(&mut self) -> Option<FollowEvent> {
        if let Some(message) = self.pending.pop_front() {
            self.delivered = message.seq;
            return Some(FollowEvent::Message(message));
        }
        self.end.take()
    }
}

/// A follower's catch-up: its reading of the store, and how long it waits before asking
/// again after a read that failed.
struct CatchUp {
    /// This catch-up's reading of the store, from where the follower got to when it
    /// began; `None` while live.
    reader: Option<HistoryReader>,
    /// The wait before the next read after one that failed.
    backoff: Backoff,
}

/// One reading of a process's stored history after a seq, as a follower's catch-up and
/// a snapshot make it (adr/0019, adr/0022). While the history left is longer than a
/// first page and one of the followers' stream slots and a read permit are free, one
/// stream of the store's (one query whose rows are read as the caller takes them, in
/// batches, at most three held); else pages, that grow while they come back full, the
/// next one read while the one before goes out (at most two held). A stream that
/// stopped early (its caller left it waiting past `stream_stall`, or it lasted past
/// `stream_time`, or it failed) gives up its connection, and the reading goes on with
/// pages after the last message it gave.
///
/// A read that fails is answered as the error, and the reader stays where it was:
/// asking again reads again. So each caller decides what a failure means: a follower
/// waits for the store and asks again, a snapshot fails (a 503 before its head went
/// out, a body cut short after).
pub struct HistoryReader {
    shared: Arc<Followers>,
    process: ProcessId,
    /// The seq of the last message given (or the cursor's).
    after: u64,
    /// The highest seq known to be committed: a page that ends below it has more after
    /// it, and a store reading from a lagging replica completes it from the primary.
    known: u64,
    /// The last seq to give (`u64::MAX`: no bound, a follower's).
    upto: u64,
    /// Messages still to give, at most (a snapshot's `limit`).
    left: usize,
    /// Messages the next page asks for: grows while pages come back full.
    page: usize,
    /// The next page, being read.
    ahead: Option<ReadAhead>,
    /// The stream under way, if any.
    stream: Option<StreamRead>,
    /// Whether the reading chose between a stream and pages: it does once, so a stream
    /// that stopped early (its caller is slow) is not started again.
    chosen: bool,
    /// Every message wanted was given.
    finished: bool,
    /// Cancels the reads under way: a follower's shutdown.
    cancel: CancellationToken,
}

/// A reading of the store as one stream of the store's ([`MessageStore::stream_after`]),
/// in a task of its own that puts batches into a queue of one as the reader takes them.
struct StreamRead {
    batches: mpsc::Receiver<Vec<StoredMessage>>,
    /// Whether the store got to the end; `None` if it failed (or was cancelled).
    ended: JoinHandle<Option<bool>>,
    /// Cancels the stream once nobody waits for it.
    _cancel: DropGuard,
}

/// The next page, read while the one before goes out.
struct ReadAhead {
    /// The messages it asks for.
    limit: usize,
    page: JoinHandle<Result<Vec<StoredMessage>, StoreError>>,
    /// Cancels the read once nobody waits for it.
    _cancel: DropGuard,
}

impl HistoryReader {
    /// `process`'s messages after `after`, up to `upto` and at most `limit`, the seqs up
    /// to `known` known to be committed. Reads nothing until asked.
    fn new(
        shared: Arc<Followers>,
        process: ProcessId,
        (after, known, upto): (u64, u64, u64),
        limit: Option<usize>,
        cancel: CancellationToken,
    ) -> Self {
        let left = limit.unwrap_or(usize::MAX);
        Self {
            page: shared.config.catch_up_page.max(1),
            shared,
            process,
            after,
            known,
            upto,
            left,
            ahead: None,
            stream: None,
            chosen: false,
            finished: left == 0 || after >= upto,
            cancel,
        }
    }

    /// Whether every message wanted was given: [`Self::next_batch`] would answer `None`
    /// without reading.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The next messages, in seq order (never none); `None` once every message wanted
    /// was given. A read that failed is the error, and asking again reads again.
    ///
    /// Not cancel-safe: a call dropped halfway may lose a batch, so drop the reader
    /// with it.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<StoredMessage>>, StoreError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if !self.chosen {
                self.chosen = true;
                self.start_stream();
            }
            let batch = if self.stream.is_some() {
                self.next_streamed().await
            } else {
                self.next_page().await?
            };
            if !batch.is_empty() {
                return Ok(Some(batch));
            }
        }
    }

    /// The last seq wanted: `upto`, or sooner the `limit`'s last (seqs are gap-free).
    fn last_wanted(&self) -> u64 {
        let by_limit = u64::try_from(self.left).unwrap_or(u64::MAX);
        self.upto.min(self.after.saturating_add(by_limit))
    }

    /// What of `batch` is given: past the last message given, up to the last one wanted.
    /// Moves the reading on, and finishes it at its bound.
    fn give(&mut self, batch: Vec<StoredMessage>) -> Vec<StoredMessage> {
        let (after, upto) = (self.after, self.upto);
        let given: Vec<StoredMessage> = batch
            .into_iter()
            .skip_while(|message| message.seq <= after)
            .take_while(|message| message.seq <= upto)
            .take(self.left)
            .collect();
        self.left -= given.len();
        if let Some(last) = given.last() {
            self.after = last.seq;
        }
        self.finished |= self.left == 0 || self.after >= self.upto;
        given
    }

    /// Starts the stream, if the history wanted is longer than a first page and a
    /// stream slot and a read permit are free (a stream holds both until it ends); else
    /// the reading goes in pages.
    fn start_stream(&mut self) {
        let shared = &self.shared;
        let wanted = self.last_wanted().min(self.known);
        if wanted.saturating_sub(self.after) <= shared.config.catch_up_page as u64 {
            return;
        }
        let Ok(slot) = shared.streams.clone().try_acquire_owned() else {
            return;
        };
        let Ok(read) = shared.reads.clone().try_acquire_owned() else {
            return;
        };
        let config = &shared.config;
        let batch_bytes = CATCH_UP_BATCH_BYTES.min(config.catch_up_page_bytes);
        let until = Instant::now() + config.stream_time;
        let (sink, batches) = MessageSink::new(batch_bytes, config.stream_stall, until);
        let cancel = self.cancel.child_token();
        let (shared, process, stop) = (shared.clone(), self.process.clone(), cancel.clone());
        let (after, known, upto) = (self.after, self.known, self.last_wanted());
        let ended = tokio::spawn(async move {
            let _held = (slot, read);
            let (store, page) = (&shared.store, shared.config.catch_up_page);
            let streamed = tokio::select! {
                _ = stop.cancelled() => return None,
                streamed = store.stream_after(&process, after, known, upto, page, &sink) =>
                    streamed,
            };
            match streamed {
                Ok(to_the_end) => Some(to_the_end),
                Err(error) => {
                    tracing::debug!(%process, error = format!("{:#}", anyhow::Error::new(error)),
                        "a catch-up stream failed: going on with pages");
                    None
                }
            }
        });
        self.stream = Some(StreamRead {
            batches,
            ended,
            _cancel: cancel.drop_guard(),
        });
    }

    /// What the stream's next batch gives. Once the stream ended, nothing, and the
    /// reading is finished if the store got to the end, else it goes on with pages after
    /// the last message given.
    async fn next_streamed(&mut self) -> Vec<StoredMessage> {
        let Some(stream) = self.stream.as_mut() else {
            return Vec::new();
        };
        let batch = stream.batches.recv().await;
        let stream_ended = batch.is_none();
        let given = batch.map_or_else(Vec::new, |batch| {
            metrics::catch_up_page(batch.len());
            self.give(batch)
        });
        if stream_ended || self.finished {
            // At the last message wanted, the store's stream ends too: it is waited for,
            // so that its connection goes back to the pool rather than being closed.
            let ended = match self.stream.take() {
                Some(stream) => stream.ended.await.ok().flatten(),
                None => None,
            };
            let to_the_end = self.finished || (ended == Some(true) && self.after >= self.known);
            metrics::catch_up_stream(to_the_end);
            self.finished = to_the_end;
        }
        given
    }

    /// The next page: the one read ahead, or one read now. A page cut short by its bytes
    /// still has more after it, and so does one that ends below a seq known to be
    /// committed: the page after it is read while this one goes out. An empty page, or a
    /// short one that reaches `known`, finishes the reading.
    async fn next_page(&mut self) -> Result<Vec<StoredMessage>, StoreError> {
        let ahead = match &mut self.ahead {
            Some(ahead) => ahead,
            None => self.ahead.insert(self.read_page()),
        };
        let (page, limit) = ((&mut ahead.page).await, ahead.limit);
        self.ahead = None;
        let page = page.map_err(|error| StoreError::Unavailable(error.into()))??;
        metrics::catch_up_page(page.len());
        let full = page.len() >= limit;
        let page = self.give(page);
        match page.last().map(|message| message.seq) {
            Some(last) if !self.finished && (full || last < self.known) => {
                if full {
                    self.page = grown_page(self.page, self.shared.config.catch_up_page);
                }
                self.ahead = Some(self.read_page());
            }
            _ => self.finished = true,
        }
        Ok(page)
    }

    /// Starts reading the page after the last message given, in a task of its own that
    /// holds one of the followers' read permits while it reads, so that the store's
    /// round trip overlaps the delivery of the page before.
    fn read_page(&self) -> ReadAhead {
        let cancel = self.cancel.child_token();
        let (shared, process, stop) = (self.shared.clone(), self.process.clone(), cancel.clone());
        let wanted = usize::try_from(self.last_wanted() - self.after).unwrap_or(usize::MAX);
        let (after, known, limit) = (self.after, self.known, self.page.min(wanted).max(1));
        let page = tokio::spawn(async move {
            let (store, max_bytes) = (&shared.store, shared.config.catch_up_page_bytes);
            tokio::select! {
                _ = stop.cancelled() => Err(StoreError::Unavailable(anyhow::anyhow!(
                    "the read was cancelled"
                ))),
                page = async {
                    // The semaphore is never closed.
                    let _permit = shared.reads.acquire().await;
                    store.read_after(&process, after, known, limit, max_bytes).await
                } => page,
            }
        });
        ReadAhead {
            limit,
            page,
            _cancel: cancel.drop_guard(),
        }
    }
}

/// What a follower listens to while live: the feed, and the status checks that stand
/// in for it when it is quiet.
struct Listening {
    subscription: FeedSubscription,
    /// When the store or the feed last told this follower something.
    last_heard: Instant,
    /// The last seq a quiet-feed check saw committed, that the feed has one more
    /// interval to bring.
    expected_from_feed: Option<u64>,
    /// The status check under way, if any.
    status_check: Option<StatusCheck>,
    delays: DelaySampler,
}

struct Follower {
    shared: Arc<Followers>,
    process: ProcessId,
    progress: Progress,
    mode: Mode,
    catch_up: CatchUp,
    listening: Listening,
    shutdown: CancellationToken,
}

impl Follower {
    async fn next(&mut self) -> Option<FollowEvent> {
        loop {
            if let Some(event) = self.progress.next_ready() {
                if matches!(event, FollowEvent::End { .. }) {
                    self.mode = Mode::Done;
                }
                return Some(event);
            }
            if self.shutdown.is_cancelled() {
                return None;
            }
            match self.mode {
                Mode::CatchUp => {
                    if self.catch_up_more().await.is_break() {
                        return None;
                    }
                }
                Mode::Live => {
                    if self.wait_live().await.is_break() {
                        return None;
                    }
                }
                Mode::Done => return None,
            }
        }
    }

    /// Takes the catch-up's next messages from the store (its reading starts where the
    /// follower got to), and is caught up once the reading gave every one. A read that
    /// failed is asked again after a backoff: a follower waits for the store rather
    /// than failing. Stops on shutdown.
    async fn catch_up_more(&mut self) -> ControlFlow<()> {
        let reader = match &mut self.catch_up.reader {
            Some(reader) => reader,
            None => self.catch_up.reader.insert(HistoryReader::new(
                self.shared.clone(),
                self.process.clone(),
                (self.progress.delivered, self.progress.committed, u64::MAX),
                None,
                self.shutdown.child_token(),
            )),
        };
        let batch = tokio::select! {
            _ = self.shutdown.cancelled() => return ControlFlow::Break(()),
            batch = reader.next_batch() => batch,
        };
        match batch {
            Ok(Some(batch)) => {
                let finished = reader.finished();
                self.catch_up.backoff = Backoff::new();
                self.progress.pending.extend(batch);
                // The status check goes while the last messages go out.
                if finished {
                    self.caught_up();
                }
            }
            Ok(None) => self.caught_up(),
            Err(error) => {
                let (shutdown, process) = (&self.shutdown, &self.process);
                return self.catch_up.backoff.wait(shutdown, process, error).await;
            }
        }
        ControlFlow::Continue(())
    }

    /// Caught up: whether the process is finished decides what next.
    fn caught_up(&mut self) {
        self.check_status(Freshness::Fresh);
        self.mode = Mode::Live;
        self.catch_up.reader = None;
    }

    /// Starts a check of how far the process goes and whether it is finished (replacing
    /// one under way: its answer is no longer wanted).
    fn check_status(&mut self, freshness: Freshness) {
        let cancel = self.shutdown.child_token();
        let answer = tokio::spawn(read_status(
            self.shared.clone(),
            self.process.clone(),
            freshness,
            self.progress.delivered,
            self.poll_interval(),
            cancel.clone(),
        ));
        self.listening.status_check = Some(StatusCheck {
            freshness,
            answer,
            _cancel: cancel.drop_guard(),
        });
    }

    /// Acts on a status check's answer: catch up if the store has more than was
    /// delivered (a quiet-feed check first gives the feed one more interval), end if
    /// the process is finished and everything was delivered, else go on waiting. Stops
    /// if the check found nothing (shutdown).
    fn on_status(&mut self, status: Option<Status>, freshness: Freshness) -> ControlFlow<()> {
        let (progress, listening) = (&mut self.progress, &mut self.listening);
        let info = match status {
            None => return ControlFlow::Break(()),
            Some(Status::NothingNew) => {
                listening.last_heard = Instant::now();
                return ControlFlow::Continue(());
            }
            Some(Status::Stored(info)) => info,
        };
        listening.last_heard = Instant::now();
        progress.committed = progress.committed.max(info.last_seq);
        let behind = info.last_seq > progress.delivered;
        // A quiet-feed check often lands between a commit and its XADD: while the feed
        // is live, give it one more interval to deliver, and catch up only if what was
        // missing then is still missing.
        let wait_for_feed = behind
            && freshness == Freshness::Recent
            && self.shared.feed.is_live()
            && listening
                .expected_from_feed
                .is_none_or(|expected| progress.delivered >= expected);
        if wait_for_feed {
            listening.expected_from_feed = Some(info.last_seq);
        } else if behind {
            listening.expected_from_feed = None;
            self.mode = Mode::CatchUp;
        } else if let Some(status) = info.status.finished() {
            progress.end = Some(FollowEvent::End {
                stream_id: info.end_stream_id(),
                status: status.clone(),
            });
        }
        ControlFlow::Continue(())
    }

    /// How long the feed may stay silent before the store is asked. While the feed is
    /// down, nothing comes from it: ask the store more often.
    fn poll_interval(&self) -> Duration {
        let config = &self.shared.config;
        if self.shared.feed.is_live() {
            config.idle_poll
        } else {
            config.degraded_poll
        }
    }

    /// Waits for the feed's next useful event, the status check under way, or (with none
    /// under way) the time to check the status. Stops on shutdown.
    async fn wait_live(&mut self) -> ControlFlow<()> {
        // The feed can go down during the wait: check again at least that often.
        let interval = self.poll_interval();
        let last_heard = self.listening.last_heard;
        let wake = (last_heard + interval).min(Instant::now() + self.shared.config.degraded_poll);
        let checking = self.listening.status_check.is_some();
        let next = tokio::select! {
            _ = self.shutdown.cancelled() => return ControlFlow::Break(()),
            next = self.listening.subscription.next() => Some(next),
            answer = async { (&mut self.listening.status_check.as_mut()?.answer).await.ok() },
                if checking => {
                let freshness = self.listening.status_check.take().map_or(Freshness::Recent,
                    |check| check.freshness);
                return self.on_status(answer.flatten(), freshness);
            }
            _ = tokio::time::sleep_until(wake), if !checking => None,
        };
        let delivered = self.progress.delivered;
        match next {
            None if Instant::now() < last_heard + interval && self.shared.feed.is_live() => {}
            None => self.check_status(Freshness::Recent),
            Some(FeedNext::Event(FeedEvent::Message(message))) if message.seq == delivered + 1 => {
                let now = Instant::now();
                self.listening.last_heard = now;
                self.listening.delays.message(now, &message.json);
                self.progress.pending.push_back(message);
            }
            Some(FeedNext::Event(FeedEvent::Message(message))) if message.seq <= delivered => {}
            Some(FeedNext::Event(FeedEvent::Message(message))) => {
                tracing::debug!(process = %self.process, expected = delivered + 1,
                    got = message.seq, "gap in the live feed: filling it from the store");
                metrics::gap_fill();
                // Published after its commit: it and every seq below it are stored.
                self.progress.committed = self.progress.committed.max(message.seq);
                self.mode = Mode::CatchUp;
            }
            Some(FeedNext::FellBehind { missed }) => {
                tracing::debug!(process = %self.process, missed,
                    "follower fell behind its feed buffer: catching up from the store");
                metrics::lagged();
                self.mode = Mode::CatchUp;
            }
            // Too large for the feed: the store has it, and everything before it.
            Some(FeedNext::Event(FeedEvent::Stored { seq })) if seq > delivered => {
                self.listening.last_heard = Instant::now();
                self.progress.committed = self.progress.committed.max(seq);
                self.mode = Mode::CatchUp;
            }
            Some(FeedNext::Event(FeedEvent::Stored { .. })) => {}
            Some(FeedNext::Event(FeedEvent::End { .. })) => self.check_status(Freshness::Fresh),
            Some(FeedNext::Closed) => {
                self.listening.subscription = self.shared.feed.subscribe(&self.process, delivered);
                self.check_status(Freshness::Fresh);
            }
        }
        ControlFlow::Continue(())
    }
}

/// The size of the catch-up page after a full one of `limit` messages: twice as many,
/// up to [`CATCH_UP_GROWTH`] times the first page.
fn grown_page(limit: usize, first: usize) -> usize {
    limit
        .saturating_mul(2)
        .min(first.max(1).saturating_mul(CATCH_UP_GROWTH))
}

/// The process's status for a follower that delivered up to `delivered`: a store read
/// that began after this call, or for a [`Freshness::Recent`] check, any read younger
/// than `max_age`. A recent check asks the feed first while a republisher covers it
/// (see [`Followers`]), and the store only when the feed holds more than was delivered
/// or cannot tell. Reads of one process take turns, so followers asking together share
/// one. `None` once `cancel` is.
async fn read_status(
    shared: Arc<Followers>,
    process: ProcessId,
    freshness: Freshness,
    delivered: u64,
    max_age: Duration,
    cancel: CancellationToken,
) -> Option<Status> {
    let asked = Instant::now();
    let slot = shared.statuses.slot(&process, max_age);
    let mut last = tokio::select! {
        _ = cancel.cancelled() => return None,
        last = slot.lock() => last,
    };
    let recent = freshness == Freshness::Recent;
    let mut ask_feed = recent && shared.republished && shared.feed.is_live();
    if let Some(read) = last.as_ref() {
        let young = recent && read.started.elapsed() < max_age;
        match &read.known {
            Known::Store(info) if read.started >= asked || young => {
                return Some(Status::Stored(info.clone()));
            }
            Known::Feed(published) if young => {
                if published.nothing_past(delivered) {
                    return Some(Status::NothingNew);
                }
                // The feed was just asked, and it holds more than this follower has.
                ask_feed = false;
            }
            _ => {}
        }
    }
    if ask_feed {
        let started = Instant::now();
        let answer = tokio::select! {
            _ = cancel.cancelled() => return None,
            answer = shared.feed.published(std::slice::from_ref(&process)) => answer,
        };
        // A feed that does not answer tells nothing: the store does.
        let published = answer
            .ok()
            .and_then(|answer| answer.first().copied())
            .unwrap_or(Published::Unknown);
        *last = Some(StatusRead {
            started,
            known: Known::Feed(published),
        });
        if published.nothing_past(delivered) {
            return Some(Status::NothingNew);
        }
    }
    let started = Instant::now();
    let store = &shared.store;
    // A process not known yet waits as an empty running one for its first message.
    let info = retry(&cancel, &shared.reads, &process, || store.process(&process))
        .await?
        .unwrap_or_else(|| ProcessInfo::not_known_yet(process.clone()));
    *last = Some(StatusRead {
        started,
        known: Known::Store(info.clone()),
    });
    Some(Status::Stored(info))
}

/// Runs a store call, holding one of the followers' read permits, until it succeeds or
/// `shutdown` is cancelled (`None`), backing off while the store is unavailable: a
/// follower waits for the store rather than failing.
async fn retry<'a, T>(
    shutdown: &CancellationToken,
    reads: &Semaphore,
    process: &ProcessId,
    mut call: impl FnMut() -> BoxFuture<'a, Result<T, StoreError>>,
) -> Option<T> {
    let mut backoff = Backoff::new();
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
                if backoff.wait(shutdown, process, error).await.is_break() {
                    return None;
                }
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

    /// The memory store, counting status reads; `elects` says whether it elects a
    /// republisher (as PostgreSQL does).
    struct Counting {
        inner: MemoryStore,
        status_reads: AtomicUsize,
        elects: bool,
        /// Catch-up streams running now, and the most at once.
        streaming: AtomicUsize,
        most_streams: AtomicUsize,
        /// How each catch-up stream ended: to the end, or stopped.
        streams: Mutex<Vec<bool>>,
        /// Whether reads of messages fail, as from a store that is down.
        failing: std::sync::atomic::AtomicBool,
    }

    impl Counting {
        fn new(elects: bool) -> Arc<Self> {
            Arc::new(Self {
                inner: MemoryStore::new(),
                status_reads: AtomicUsize::new(0),
                elects,
                streaming: AtomicUsize::new(0),
                most_streams: AtomicUsize::new(0),
                streams: Mutex::new(Vec::new()),
                failing: std::sync::atomic::AtomicBool::new(false),
            })
        }
    }

    impl Counting {
        /// A read's failure while the store is `failing`.
        fn down(&self) -> Result<(), StoreError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable(anyhow::anyhow!(
                    "the store is down"
                )));
            }
            Ok(())
        }
    }

    /// The in-process feed, telling how far its publishing got as the test sets it (as
    /// Redis tells it).
    struct Telling {
        inner: InProcessFeed,
        published: Mutex<Published>,
    }

    #[async_trait]
    impl LiveFeed for Telling {
        async fn publish(
            &self,
            process: &ProcessId,
            messages: &[StoredMessage],
        ) -> Result<(), crate::ports::FeedError> {
            self.inner.publish(process, messages).await
        }
        async fn publish_end(
            &self,
            process: &ProcessId,
            last_seq: u64,
            status: &str,
        ) -> Result<(), crate::ports::FeedError> {
            self.inner.publish_end(process, last_seq, status).await
        }
        fn subscribe(&self, process: &ProcessId, after: u64) -> FeedSubscription {
            self.inner.subscribe(process, after)
        }
        fn tells_how_far(&self) -> bool {
            true
        }
        async fn published(
            &self,
            processes: &[ProcessId],
        ) -> Result<Vec<Published>, crate::ports::FeedError> {
            Ok(vec![*crate::sync::lock(&self.published); processes.len()])
        }
        async fn ping(&self) -> Result<(), crate::ports::FeedError> {
            Ok(())
        }
        fn is_live(&self) -> bool {
            true
        }
        fn name(&self) -> &'static str {
            "telling"
        }
    }

    /// Fifty followers of one quiet process, settled into their quiet-feed checks.
    async fn quiet_followers(
        store: Arc<Counting>,
        feed: Arc<dyn LiveFeed>,
    ) -> Vec<std::pin::Pin<Box<impl Stream<Item = FollowEvent>>>> {
        let config = FollowConfig {
            idle_poll: Duration::from_millis(100),
            ..FollowConfig::default()
        };
        let followers = Followers::new(store.clone(), feed, config, CancellationToken::new());
        let process = ProcessId::parse("quiet").unwrap();
        store.register(&process).await.unwrap();
        let mut follows: Vec<_> = (0..50)
            .map(|_| Box::pin(followers.follow(process.clone(), Cursor::default(), 0)))
            .collect();
        // Let every follower catch up and settle into its quiet-feed checks.
        for follow in &mut follows {
            let _ = tokio::time::timeout(Duration::from_millis(1), follow.next()).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        follows
    }

    /// Status reads the followers make in ten intervals, delivering nothing.
    async fn status_reads_in_ten_intervals(
        store: &Counting,
        follows: &mut [std::pin::Pin<Box<impl Stream<Item = FollowEvent>>>],
    ) -> usize {
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
        store.status_reads.load(Ordering::SeqCst) - before
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
            self.down()?;
            self.inner
                .read_after(process, after, known, limit, max_bytes)
                .await
        }
        async fn stream_after(
            &self,
            process: &ProcessId,
            after: u64,
            known: u64,
            upto: u64,
            page: usize,
            sink: &MessageSink,
        ) -> Result<bool, StoreError> {
            self.down()?;
            let now = self.streaming.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_streams.fetch_max(now, Ordering::SeqCst);
            let streamed = self
                .inner
                .stream_after(process, after, known, upto, page, sink)
                .await;
            self.streaming.fetch_sub(1, Ordering::SeqCst);
            if let Ok(to_the_end) = streamed {
                crate::sync::lock(&self.streams).push(to_the_end);
            }
            streamed
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
        fn elects_a_republisher(&self) -> bool {
            self.elects
        }
        fn name(&self) -> &'static str {
            "counting"
        }
    }

    /// Followers that wake together (they heard the same message) share one status
    /// read per idle interval instead of making one each.
    #[tokio::test(start_paused = true)]
    async fn followers_of_a_quiet_process_share_their_status_checks() {
        let store = Counting::new(false);
        let feed = Arc::new(InProcessFeed::new(16));
        let mut follows = quiet_followers(store.clone(), feed).await;
        let reads = status_reads_in_ten_intervals(&store, &mut follows).await;
        // Ten intervals: about one read each (fifty followers each reading would be 500).
        assert!(
            reads <= 20,
            "{reads} status reads for 50 idle followers in 10 intervals"
        );
    }

    /// With a republisher, a feed that holds nothing past what was delivered is
    /// believed: quiet followers ask the store nothing. A feed whose last entry is not
    /// the store's is not: they ask the store again.
    #[tokio::test(start_paused = true)]
    async fn with_a_republisher_quiet_followers_ask_the_feed_and_the_store_only_when_it_cannot_tell(
    ) {
        let store = Counting::new(true);
        let feed = Arc::new(Telling {
            inner: InProcessFeed::new(16),
            published: Mutex::new(Published::Nothing),
        });
        let mut follows = quiet_followers(store.clone(), feed.clone()).await;
        let reads = status_reads_in_ten_intervals(&store, &mut follows).await;
        assert_eq!(
            reads, 0,
            "the feed holds nothing new: the store is not asked"
        );

        *crate::sync::lock(&feed.published) = Published::Foreign;
        let reads = status_reads_in_ten_intervals(&store, &mut follows).await;
        assert!(
            (5..=20).contains(&reads),
            "{reads} status reads in 10 intervals once the feed cannot tell (about one each)"
        );
    }

    /// `count` messages of about 100 bytes, appended to `process` in `store`, which is
    /// then finished.
    async fn history(store: &Counting, process: &ProcessId, count: usize) {
        let messages: Vec<NewMessage> = (1..=count)
            .map(|n| {
                let raw = format!(
                    r#"{{"id":"m{n}","type":"T","payload":{{"text":"{}"}}}}"#,
                    "x".repeat(60)
                );
                NewMessage::parse(raw.as_bytes(), 1 << 20).unwrap()
            })
            .collect();
        store.append(process, &messages).await.unwrap();
        store
            .finish(process, &FinishStatus::parse("succeeded").unwrap())
            .await
            .unwrap();
    }

    /// Catch-ups of first pages of 10 and batches of 1 KiB, through the streams of
    /// `store`; `tune` adjusts the rest.
    fn streaming(store: Arc<Counting>, tune: impl FnOnce(&mut FollowConfig)) -> Arc<Followers> {
        let mut config = FollowConfig {
            catch_up_page: 10,
            catch_up_page_bytes: 1024,
            ..FollowConfig::default()
        };
        tune(&mut config);
        let feed = Arc::new(InProcessFeed::new(16));
        Followers::new(store, feed, config, CancellationToken::new())
    }

    /// Takes `follow`'s messages until its end (or `limit` of them); their seqs.
    async fn take(
        follow: &mut (impl Stream<Item = FollowEvent> + Unpin),
        limit: usize,
    ) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < limit {
            match tokio::time::timeout(Duration::from_secs(60), follow.next()).await {
                Ok(Some(FollowEvent::Message(message))) => seqs.push(message.seq),
                Ok(Some(FollowEvent::End { .. })) | Ok(None) => break,
                Err(_) => panic!("no event in a minute after {seqs:?}"),
            }
        }
        seqs
    }

    /// A follower that stops taking its catch-up stream for longer than the stall
    /// limit: the stream gives up (its connection with it), and the follower goes on
    /// with pages after the last message it took, each message once, in order.
    #[tokio::test(start_paused = true)]
    async fn a_follower_that_stops_taking_its_stream_goes_on_with_pages_and_gets_every_message_once(
    ) {
        let store = Counting::new(false);
        let process = ProcessId::parse("slow").unwrap();
        history(&store, &process, 300).await;
        let followers = streaming(store.clone(), |config| {
            config.stream_stall = Duration::from_millis(50);
        });
        let mut follow = Box::pin(followers.follow(process, Cursor::default(), 300));

        let mut seqs = take(&mut follow, 20).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *crate::sync::lock(&store.streams),
            vec![false],
            "one stream, stopped by the stall, none running"
        );
        seqs.extend(take(&mut follow, usize::MAX).await);
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
        assert_eq!(
            crate::sync::lock(&store.streams).len(),
            1,
            "the rest came in pages"
        );
    }

    /// Past `streams` catch-ups streaming at once, the others read pages; all get every
    /// message once, in order.
    #[tokio::test(start_paused = true)]
    async fn catch_ups_past_the_stream_cap_read_pages_and_all_get_every_message() {
        let store = Counting::new(false);
        let process = ProcessId::parse("many").unwrap();
        history(&store, &process, 300).await;
        let followers = streaming(store.clone(), |config| config.streams = 2);
        let mut follows: Vec<_> = (0..5)
            .map(|_| Box::pin(followers.follow(process.clone(), Cursor::default(), 300)))
            .collect();
        let mut seqs = Vec::new();
        for follow in &mut follows {
            seqs.push(take(follow, 1).await);
        }
        assert_eq!(
            store.most_streams.load(Ordering::SeqCst),
            2,
            "two streams at once, no more"
        );
        for (follow, seqs) in follows.iter_mut().zip(&mut seqs) {
            seqs.extend(take(follow, usize::MAX).await);
            assert_eq!(*seqs, (1..=300).collect::<Vec<_>>());
        }
        assert!(store.most_streams.load(Ordering::SeqCst) <= 2);
    }

    /// Every message `reader` gives, to its end; their seqs.
    async fn read_all(reader: &mut HistoryReader) -> Vec<u64> {
        let mut seqs = Vec::new();
        for _ in 0..10_000 {
            let batch = tokio::time::timeout(Duration::from_secs(60), reader.next_batch())
                .await
                .expect("a batch in a minute")
                .expect("the store answers");
            let Some(batch) = batch else {
                assert!(reader.finished());
                return seqs;
            };
            assert!(!batch.is_empty(), "a batch has messages");
            seqs.extend(batch.iter().map(|message| message.seq));
        }
        panic!("no end after 10,000 batches");
    }

    /// A snapshot's reading gives exactly the messages after its cursor up to its last
    /// seq and within its limit, whether it is long enough to stream or read in pages;
    /// a stream ends at that bound (to its end: its connection would go back to the pool).
    #[tokio::test(start_paused = true)]
    async fn a_history_reading_stops_exactly_at_its_last_seq_and_its_limit_streamed_or_in_pages() {
        let store = Counting::new(false);
        let process = ProcessId::parse("bounded").unwrap();
        history(&store, &process, 300).await;
        let followers = streaming(store.clone(), |_| {});
        let seqs = |range: std::ops::RangeInclusive<u64>| range.collect::<Vec<_>>();
        for (after, upto, limit, expected, streamed) in [
            (0, 300, None, seqs(1..=300), true),
            (50, 250, None, seqs(51..=250), true),
            (0, 300, Some(120), seqs(1..=120), true),
            (100, 300, Some(5), seqs(101..=105), false),
            (290, 300, None, seqs(291..=300), false),
            (300, 300, None, vec![], false),
            (0, 300, Some(0), vec![], false),
        ] {
            let before = crate::sync::lock(&store.streams).len();
            let mut reader = followers.read_history(process.clone(), after, upto, limit);
            assert_eq!(
                read_all(&mut reader).await,
                expected,
                "{after} {upto} {limit:?}"
            );
            let streams = crate::sync::lock(&store.streams)[before..].to_vec();
            let ended: Vec<bool> = if streamed { vec![true] } else { vec![] };
            assert_eq!(streams, ended, "{after} {upto} {limit:?}: streams");
        }
    }

    /// A reading past the stream cap reads pages, and gives as much.
    #[tokio::test(start_paused = true)]
    async fn a_history_reading_past_the_stream_cap_reads_pages_and_gives_every_message() {
        let store = Counting::new(false);
        let process = ProcessId::parse("capped").unwrap();
        history(&store, &process, 300).await;
        let followers = streaming(store.clone(), |config| config.streams = 1);
        let mut holding = followers.read_history(process.clone(), 0, 300, None);
        let first = holding.next_batch().await.unwrap().unwrap();
        assert_eq!(
            store.streaming.load(Ordering::SeqCst),
            1,
            "a stream holds the slot"
        );

        let mut paged = followers.read_history(process.clone(), 0, 300, None);
        assert_eq!(read_all(&mut paged).await, (1..=300).collect::<Vec<_>>());
        assert!(
            crate::sync::lock(&store.streams).is_empty(),
            "no stream ended: the second reading read pages"
        );
        assert_eq!(store.most_streams.load(Ordering::SeqCst), 1);

        let mut seqs: Vec<u64> = first.iter().map(|message| message.seq).collect();
        seqs.extend(read_all(&mut holding).await);
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    }

    /// A reading answers a read that failed (a snapshot makes it a 503), stays where it
    /// was, and reads again when asked; a follower waits for the store instead, and
    /// gets every message once it is back.
    #[tokio::test(start_paused = true)]
    async fn a_history_reading_answers_a_failed_read_and_a_follower_waits_for_the_store() {
        let store = Counting::new(false);
        let process = ProcessId::parse("down").unwrap();
        history(&store, &process, 300).await;
        let followers = streaming(store.clone(), |_| {});

        store.failing.store(true, Ordering::SeqCst);
        let mut reader = followers.read_history(process.clone(), 0, 300, None);
        assert!(
            reader.next_batch().await.is_err(),
            "the failure is answered"
        );
        assert!(
            reader.next_batch().await.is_err(),
            "and again while it lasts"
        );
        store.failing.store(false, Ordering::SeqCst);
        assert_eq!(read_all(&mut reader).await, (1..=300).collect::<Vec<_>>());

        store.failing.store(true, Ordering::SeqCst);
        let mut follow = Box::pin(followers.follow(process, Cursor::default(), 300));
        let waited = tokio::time::timeout(Duration::from_secs(3), follow.next()).await;
        assert!(
            waited.is_err(),
            "nothing while the store is down, and no end"
        );
        store.failing.store(false, Ordering::SeqCst);
        assert_eq!(
            take(&mut follow, usize::MAX).await,
            (1..=300).collect::<Vec<_>>()
        );
    }
}
