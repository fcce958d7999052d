//! The live-feed port: pushes each stored message to every reader of its process, fast.
//! A feed may lose, trim, duplicate or reorder entries; readers check every event
//! against the seq they expect next and fill gaps from the store.

use async_trait::async_trait;
use tokio::sync::broadcast;

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

/// A reader's end of a feed. Bounded: a reader that falls behind gets
/// `RecvError::Lagged` and catches up from the store.
pub type FeedSubscription = broadcast::Receiver<FeedEvent>;

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
