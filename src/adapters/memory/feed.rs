//! [`InProcessFeed`]: the live-feed port on one [`FeedSender`] per followed process.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::{ProcessId, StoredMessage};
use crate::ports::{FeedError, FeedEvent, FeedSender, FeedSubscription, LiveFeed};

/// Channels exist only while someone follows the process: a channel nobody listens to
/// is dropped when next published to, at the end of its process, or by the sweep that
/// runs whenever the map has doubled; memory is bounded by the followed processes.
pub struct InProcessFeed {
    channels: Mutex<Channels>,
    capacity: usize,
}

#[derive(Default)]
struct Channels {
    by_process: HashMap<ProcessId, FeedSender>,
    sweep_at: usize,
}

impl InProcessFeed {
    /// `capacity`: events a reader may fall behind before it catches up from the store.
    pub fn new(capacity: usize) -> Self {
        Self {
            channels: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Channels> {
        crate::sync::lock(&self.channels)
    }

    /// Sends to the process's readers, if any; `last` drops the channel afterwards
    /// (readers still get what was sent, then `Closed`).
    fn send(&self, process: &ProcessId, events: impl IntoIterator<Item = FeedEvent>, last: bool) {
        let mut channels = self.lock();
        let Some(sender) = channels.by_process.get(process) else {
            return;
        };
        for event in events {
            // An error only means every reader has just left.
            let _ = sender.send(event);
        }
        if last || sender.receiver_count() == 0 {
            channels.by_process.remove(process);
        }
    }
}

#[async_trait]
impl LiveFeed for InProcessFeed {
    async fn publish(
        &self,
        process: &ProcessId,
        messages: &[StoredMessage],
    ) -> Result<(), FeedError> {
        self.send(
            process,
            messages.iter().cloned().map(FeedEvent::Message),
            false,
        );
        Ok(())
    }

    async fn publish_end(
        &self,
        process: &ProcessId,
        last_seq: u64,
        _status: &str,
    ) -> Result<(), FeedError> {
        self.send(process, [FeedEvent::End { last_seq }], true);
        Ok(())
    }

    fn subscribe(&self, process: &ProcessId, _after: u64) -> FeedSubscription {
        let mut channels = self.lock();
        if channels.by_process.len() >= channels.sweep_at {
            channels
                .by_process
                .retain(|_, sender| sender.receiver_count() > 0);
            channels.sweep_at = (channels.by_process.len() * 2).max(1024);
        }
        let capacity = self.capacity;
        channels
            .by_process
            .entry(process.clone())
            .or_insert_with(|| FeedSender::new(capacity))
            .subscribe()
    }

    async fn ping(&self) -> Result<(), FeedError> {
        Ok(())
    }

    fn is_live(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "in-process"
    }
}
