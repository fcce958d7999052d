//! The live-feed port: pushes each stored message to every reader of its process, fast.
//! A feed may lose, trim, duplicate or reorder entries; readers check every event
//! against the seq they expect next and fill gaps from the store.

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::domain::{ProcessId, StoredMessage};

/// What a feed delivers to the readers of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    Message(StoredMessage),
    /// Message `seq` is stored but too large to come through the feed: read it from
    /// the store.
    Stored {
        seq: u64,
    },
    /// The process was finished after `last_seq` messages.
    End {
        last_seq: u64,
    },
}

/// What a reader's next wait on its subscription brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedNext {
    Event(FeedEvent),
    /// The reader fell behind its bounded buffer and `missed` events were dropped for
    /// it: it catches up from the store.
    FellBehind {
        missed: u64,
    },
    /// The feed dropped this subscription (the process's channel went): subscribe again.
    Closed,
}

/// A reader's end of a feed: the events of one process, in a bounded buffer of its own.
pub struct FeedSubscription {
    events: broadcast::Receiver<FeedEvent>,
}

impl FeedSubscription {
    /// Waits for the next event.
    pub async fn next(&mut self) -> FeedNext {
        match self.events.recv().await {
            Ok(event) => FeedNext::Event(event),
            Err(RecvError::Lagged(missed)) => FeedNext::FellBehind { missed },
            Err(RecvError::Closed) => FeedNext::Closed,
        }
    }
}

/// The sending end a feed adapter keeps for the readers of one process: every event
/// sent reaches each of its subscriptions, each buffering up to the capacity.
pub struct FeedSender {
    events: broadcast::Sender<FeedEvent>,
}

impl FeedSender {
    /// `capacity`: events a reader may fall behind before it is told it fell behind.
    pub fn new(capacity: usize) -> Self {
        Self {
            events: broadcast::channel(capacity.max(1)).0,
        }
    }

    pub fn subscribe(&self) -> FeedSubscription {
        FeedSubscription {
            events: self.events.subscribe(),
        }
    }

    /// Sends to every subscription; false when there is none.
    pub fn send(&self, event: FeedEvent) -> bool {
        self.events.send(event).is_ok()
    }

    /// How many subscriptions are open.
    pub fn receiver_count(&self) -> usize {
        self.events.receiver_count()
    }
}

/// How far a feed's publishing of one process got, as the feed holds it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The feed keeps nothing it could tell (in-process), or did not answer.
    Unknown,
    /// Nothing of the process: none of its messages was published, or the feed lost them.
    Nothing,
    /// Up to message `seq`, the last entry.
    UpTo(u64),
    /// Up to the end marker of a process finished after `last_seq` messages.
    End { last_seq: u64 },
    /// The last entry is not this store's (another deployment's, or from before the
    /// database was recreated): the feed may refuse this store's next seqs, so only
    /// the store can tell how far the process goes.
    Foreign,
}

impl Published {
    /// Whether the feed holds nothing past seq `delivered`: a follower that delivered
    /// it has nothing more to hear, as far as the feed knows.
    pub fn nothing_past(self, delivered: u64) -> bool {
        match self {
            Self::UpTo(seq) => seq <= delivered,
            Self::Nothing => delivered == 0,
            Self::Unknown | Self::End { .. } | Self::Foreign => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the live feed is unavailable")]
pub struct FeedError(#[source] pub anyhow::Error);

#[async_trait]
pub trait LiveFeed: Send + Sync + 'static {
    /// Publishes newly stored messages of one process, in seq order.
    async fn publish(
        &self,
        process: &ProcessId,
        messages: &[StoredMessage],
    ) -> Result<(), FeedError>;

    /// Publishes the end of a process finished after `last_seq` messages, and lets the
    /// feed forget the process after its retention time.
    async fn publish_end(
        &self,
        process: &ProcessId,
        last_seq: u64,
        status: &str,
    ) -> Result<(), FeedError>;

    /// Subscribes to the process's events after seq `after`. Events may still come
    /// from before it: readers drop what they already have.
    fn subscribe(&self, process: &ProcessId, after: u64) -> FeedSubscription;

    /// Whether [`Self::published`] tells how far publishing got (the feed keeps what it
    /// published); false for a feed that keeps nothing.
    fn tells_how_far(&self) -> bool {
        false
    }

    /// How far publishing got for each of `processes`, in order. A feed that keeps
    /// nothing answers [`Published::Unknown`] for each.
    async fn published(&self, processes: &[ProcessId]) -> Result<Vec<Published>, FeedError> {
        Ok(vec![Published::Unknown; processes.len()])
    }

    /// Answers when the feed does, for readiness checks.
    async fn ping(&self) -> Result<(), FeedError>;

    /// Whether the feed delivers as far as it knows; while it does not, readers ask the
    /// store more often.
    fn is_live(&self) -> bool;

    /// A short name for logs and readiness: `redis` or `in-process`.
    fn name(&self) -> &'static str;

    /// Sets the feed's gauges (see `crate::metrics`) as of now; called at each scrape
    /// of `/metrics`. A feed with nothing to report keeps the default.
    fn record_metrics(&self) {}
}
