//! The store port: durable, ordered messages per process, and each process's status.

use async_trait::async_trait;

use crate::domain::{FinishStatus, NewMessage, ProcessId, ProcessInfo, StoredMessage, StreamId};

/// Why a store call did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("process {0} is not known")]
    UnknownProcess(ProcessId),
    #[error("process {process} is finished ({status}) and takes no more messages")]
    Finished {
        process: ProcessId,
        status: FinishStatus,
    },
    #[error("process {process} is already finished as {current}")]
    StatusConflict {
        process: ProcessId,
        current: FinishStatus,
    },
    /// The backing store did not answer or failed: nothing was stored.
    #[error("the store is unavailable")]
    Unavailable(#[source] anyhow::Error),
}

/// Whether `register` created the process or found it.
#[derive(Debug, Clone)]
pub enum Registration {
    Created(ProcessInfo),
    Existing(ProcessInfo),
}

/// The result of appending one message of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub id: String,
    pub stream_id: StreamId,
    /// False when a message with this id was already stored: nothing was stored again.
    pub created: bool,
}

/// The result of an append: one [`Appended`] per message sent, in order, and the
/// messages newly stored, in seq order, for the live feed.
#[derive(Debug, Clone, Default)]
pub struct AppendOutcome {
    pub results: Vec<Appended>,
    pub stored: Vec<StoredMessage>,
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Makes the process known; idempotent.
    async fn register(&self, process: &ProcessId) -> Result<Registration, StoreError>;

    /// Appends messages in order, in one transaction, registering the process if needed.
    /// Each new message takes the next seq; a message whose id is already stored for the
    /// process keeps its original seq and is not stored again. If any message is new
    /// and the process is finished, nothing is stored.
    async fn append(
        &self,
        process: &ProcessId,
        messages: &[NewMessage],
    ) -> Result<AppendOutcome, StoreError>;

    /// Finishes the process with `status`; the same status again changes nothing.
    async fn finish(
        &self,
        process: &ProcessId,
        status: &FinishStatus,
    ) -> Result<ProcessInfo, StoreError>;

    /// The process, if known.
    async fn process(&self, process: &ProcessId) -> Result<Option<ProcessInfo>, StoreError>;

    /// The messages with a seq above `after`, in seq order: at most `limit`, and past
    /// the first, at most `max_bytes` of JSON in all, so a page's memory is bounded
    /// whatever the messages' sizes.
    async fn read_after(
        &self,
        process: &ProcessId,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Answers when the store does, for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// A short name for logs and readiness: `postgres` or `memory`.
    fn name(&self) -> &'static str;
}
