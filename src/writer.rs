//! The write path (the "worker adapter"): commit to the store, then publish to the live
//! feed. It backs the library API, `agent-stream append` and the HTTP write calls.
//!
//! The store's commit is the append: once it succeeds the message exists, whatever the
//! feed does next. A failed publish is logged and counted, and readers find the message
//! in the store at their next look. Appends are counted and timed here (see
//! [`crate::metrics`]), whichever surface made them.

use std::sync::Arc;
use std::time::Instant;

use crate::domain::{FinishStatus, NewMessage, ProcessId, ProcessInfo};
use crate::metrics;
use crate::ports::{AppendOutcome, LiveFeed, MessageStore, Registration, StoreError};

#[derive(Clone)]
pub struct Writer {
    store: Arc<dyn MessageStore>,
    feed: Arc<dyn LiveFeed>,
}

impl Writer {
    pub fn new(store: Arc<dyn MessageStore>, feed: Arc<dyn LiveFeed>) -> Self {
        Self { store, feed }
    }

    pub async fn register(&self, process: &ProcessId) -> Result<Registration, StoreError> {
        self.store.register(process).await
    }

    /// Appends messages in order, in one transaction; see [`MessageStore::append`].
    pub async fn append(
        &self,
        process: &ProcessId,
        messages: &[NewMessage],
    ) -> Result<AppendOutcome, StoreError> {
        let started = Instant::now();
        let outcome = self
            .store
            .append(process, messages)
            .await
            .inspect_err(metrics::append_failed)?;
        if !outcome.stored.is_empty() {
            if let Err(error) = self.feed.publish(process, &outcome.stored).await {
                tracing::debug!(%process, error = format!("{:#}", error.0),
                    "live feed did not take new messages; readers will find them in the store");
            }
        }
        metrics::appended(outcome.stored.len(), started.elapsed());
        Ok(outcome)
    }

    /// Finishes the process and publishes its end; the same status again is a no-op
    /// for the store, and publishes the end once more in case the first one was lost.
    pub async fn finish(
        &self,
        process: &ProcessId,
        status: &FinishStatus,
    ) -> Result<ProcessInfo, StoreError> {
        let info = self.store.finish(process, status).await?;
        if let Err(error) = self
            .feed
            .publish_end(process, info.last_seq, status.as_str())
            .await
        {
            tracing::debug!(%process, error = format!("{:#}", error.0),
                "live feed did not take the end marker; readers will find the status in the store");
        }
        Ok(info)
    }
}
