//! The follow algorithm, written once against the two ports: deliver every message of a
//! process after a cursor, in order, each once, then each new one as it is appended,
//! then the end once the process is finished.
//!
//! The reader always knows which seq comes next (`last + 1`), because seqs are gap-free.
//! So the live feed is only a hint: an event with the next seq is delivered, an older
//! one is a duplicate and dropped, a newer one reveals a gap that is filled from the
//! store (seqs commit in order, so everything below it is there). When the feed says
//! nothing for `idle_poll`, the store is asked directly, which catches a message whose
//! publish never happened and a feed that is down. A reader that falls behind its
//! bounded feed buffer (a slow client) is told it lagged and catches up from the store
//! in pages, so memory stays bounded however slowly it reads.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::{Cursor, FinishStatus, ProcessId, StoredMessage, StreamId};
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

/// Follows `process` from `cursor`. `known_last_seq` is the process's last seq as the
/// caller last saw it: the feed is joined there, and the store fills in the rest.
/// The stream ends after the end event, or when `shutdown` is cancelled.
pub fn follow(
    store: Arc<dyn MessageStore>,
    feed: Arc<dyn LiveFeed>,
    process: ProcessId,
    cursor: Cursor,
    known_last_seq: u64,
    config: FollowConfig,
    shutdown: CancellationToken,
) -> impl Stream<Item = FollowEvent> + Send + 'static {
    let subscription = feed.subscribe(&process, known_last_seq.max(cursor.after_seq()));
    let follower = Follower {
        store,
        feed,
        process,
        subscription,
        last: cursor.after_seq(),
        pending: VecDeque::new(),
        mode: Mode::CatchUp,
        heard_at: Instant::now(),
        config,
        shutdown,
    };
    futures::stream::unfold(follower, |mut follower| async move {
        follower.next().await.map(|event| (event, follower))
    })
}

enum Mode {
    /// Reading pages from the store until a short page.
    CatchUp,
    /// Asking the store how far the process goes and whether it is finished.
    Check,
    /// Waiting on the feed.
    Live,
    Done,
}

struct Follower {
    store: Arc<dyn MessageStore>,
    feed: Arc<dyn LiveFeed>,
    process: ProcessId,
    subscription: FeedSubscription,
    /// The seq of the last message delivered (or the cursor's).
    last: u64,
    /// Messages read but not yet delivered, all above `last`, in order.
    pending: VecDeque<StoredMessage>,
    mode: Mode,
    /// When the store or the feed last told this follower something.
    heard_at: Instant,
    config: FollowConfig,
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
                    let (store, process, after) = (&self.store, &self.process, self.last);
                    let (limit, max_bytes) = (self.config.page_size, self.config.page_bytes);
                    let page = retry(&self.shutdown, || {
                        store.read_after(process, after, limit, max_bytes)
                    })
                    .await?;
                    if page.len() < limit {
                        self.mode = Mode::Check;
                    }
                    self.pending.extend(page);
                }
                Mode::Check => {
                    let (store, process) = (&self.store, &self.process);
                    let info = retry(&self.shutdown, || store.process(process)).await??;
                    self.heard_at = Instant::now();
                    if info.last_seq > self.last {
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

    /// Waits for the feed's next useful event, or for the time to check the store.
    async fn wait_live(&mut self) -> Option<()> {
        // While the feed is down, nothing comes from it: ask the store more often. The
        // feed can go down during the wait, so look again at least that often.
        let quiet = if self.feed.is_live() {
            self.config.idle_poll
        } else {
            self.config.degraded_poll
        };
        let wake = (self.heard_at + quiet).min(Instant::now() + self.config.degraded_poll);
        let event = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            event = self.subscription.recv() => Some(event),
            _ = tokio::time::sleep_until(wake) => None,
        };
        match event {
            None if Instant::now() < self.heard_at + quiet && self.feed.is_live() => {}
            None => self.mode = Mode::Check,
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
            Some(Ok(FeedEvent::End { .. })) => self.mode = Mode::Check,
            Some(Err(RecvError::Closed)) => {
                self.subscription = self.feed.subscribe(&self.process, self.last);
                self.mode = Mode::Check;
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
