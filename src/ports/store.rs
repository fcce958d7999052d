//! The store port: durable, ordered messages per process, and each process's status.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::domain::{
    FinishStatus, NewMessage, ProcessId, ProcessInfo, ProcessStatus, RecentProcess, StoredMessage,
    StreamId,
};

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
    /// The store answers, but every connection stayed busy past the wait limit: an
    /// overload, not an outage. Nothing was stored.
    #[error("the store is busy")]
    Busy,
}

/// The store's epoch: an id made once per database (by a migration for PostgreSQL, at
/// start for the memory store). The live feed stamps it on every entry and delivers
/// only entries that carry its own, so a feed shared with another store, or kept from
/// a database since recreated, never passes off their entries as this store's
/// (adr/0007).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch(String);

impl Epoch {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// A fresh epoch, for a store that lives as long as the process.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Epoch {
    fn default() -> Self {
        Self::generate()
    }
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

impl AppendOutcome {
    /// Plans an append, the same for every store: a message whose id the process
    /// already has (`stored_seq`) keeps its seq; each new one takes the next seq after
    /// `last_seq` and is rendered with `created_at` (an id repeated within the batch is
    /// stored once). A finished process refuses the append if any message is new; a
    /// pure retry of stored messages is answered as it was.
    pub fn plan(
        process: &ProcessId,
        status: &ProcessStatus,
        messages: &[NewMessage],
        last_seq: u64,
        created_at: DateTime<Utc>,
        stored_seq: impl Fn(&str) -> Option<u64>,
    ) -> Result<Self, StoreError> {
        let mut new_seqs: HashMap<&str, u64> = HashMap::new();
        let mut outcome = Self::default();
        for message in messages {
            let id = message.id.as_str();
            let (seq, created) = match stored_seq(id).or_else(|| new_seqs.get(id).copied()) {
                Some(seq) => (seq, false),
                None => {
                    let seq = last_seq + new_seqs.len() as u64 + 1;
                    new_seqs.insert(id, seq);
                    outcome.stored.push(message.render(seq, created_at));
                    (seq, true)
                }
            };
            outcome.results.push(Appended {
                id: message.id.clone(),
                stream_id: StreamId::message(seq),
                created,
            });
        }
        outcome.refuse_if_finished(process, status)
    }

    /// The append rule's last step, for every store: a finished process refuses an
    /// append that would store anything, and answers a pure retry of stored messages
    /// as it was answered.
    pub fn refuse_if_finished(
        self,
        process: &ProcessId,
        status: &ProcessStatus,
    ) -> Result<Self, StoreError> {
        match status.finished() {
            Some(status) if !self.stored.is_empty() => Err(StoreError::Finished {
                process: process.clone(),
                status: status.clone(),
            }),
            _ => Ok(self),
        }
    }
}

/// Where [`MessageStore::stream_after`] puts the messages it reads: batches of up to
/// `batch_bytes` of JSON, in seq order, into a queue of one that the reader empties as
/// its client takes them. So a stream is held back by its slowest part, and its memory
/// is a batch being read, one queued and one being written. It also says when to stop:
/// a reader that left, a batch nobody took for `stall`, or a stream past `until` (a
/// slow client may not hold a store connection for ever: its reader goes on with pages
/// from the last message it took).
pub struct MessageSink {
    batches: mpsc::Sender<Vec<StoredMessage>>,
    batch_bytes: usize,
    stall: Duration,
    until: Instant,
}

impl MessageSink {
    /// A sink and the reader's end of its queue.
    pub fn new(
        batch_bytes: usize,
        stall: Duration,
        until: Instant,
    ) -> (Self, mpsc::Receiver<Vec<StoredMessage>>) {
        let (batches, taken) = mpsc::channel(1);
        let sink = Self {
            batches,
            batch_bytes: batch_bytes.max(1),
            stall,
            until,
        };
        (sink, taken)
    }

    /// Bytes of JSON a batch gathers before it is sent (past its first message).
    pub fn batch_bytes(&self) -> usize {
        self.batch_bytes
    }

    /// Hands `batch` to the reader, waiting while its queue is full; false when the
    /// stream must stop here: the reader left, took nothing for the stall limit, or the
    /// stream's time is up. The batch is then not delivered.
    pub async fn send(&self, batch: Vec<StoredMessage>) -> bool {
        let batch = match self.batches.try_send(batch) {
            Ok(()) => return Instant::now() < self.until,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(batch)) => batch,
        };
        let give_up = self.until.min(Instant::now() + self.stall);
        matches!(
            tokio::time::timeout_at(give_up, self.batches.send(batch)).await,
            Ok(Ok(()))
        )
    }
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
    /// whatever the messages' sizes. `known` is the last seq the caller knows to be
    /// committed (from the process's status or the live feed; 0 if none): a store
    /// that reads from a replica returns no page that ends short of it while
    /// `limit` allows more, so a lagging replica never passes for the end.
    async fn read_after(
        &self,
        process: &ProcessId,
        after: u64,
        known: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// The messages with a seq above `after` and at most `upto` (`u64::MAX`: no bound),
    /// in seq order, put into `sink` as it takes them, until every one committed when the
    /// call began is in (at least up to `known`, as in [`Self::read_after`]), or the sink
    /// says stop. Returns whether it got to that end; stopped by the sink, it returns at
    /// once, and the reader goes on after the last message it took. A store that holds a
    /// connection for the stream gives it up as soon as it stops, without reading the
    /// rest.
    ///
    /// By default, pages of [`Self::read_after`] of `page` messages (and the sink's
    /// batch bytes); a store that can stream one query's rows to the sink overrides it.
    async fn stream_after(
        &self,
        process: &ProcessId,
        after: u64,
        known: u64,
        upto: u64,
        page: usize,
        sink: &MessageSink,
    ) -> Result<bool, StoreError> {
        let (mut after, known, max_bytes) = (after, known.min(upto), sink.batch_bytes());
        while after < upto {
            let limit = page
                .max(1)
                .min(usize::try_from(upto - after).unwrap_or(usize::MAX));
            let batch = self
                .read_after(process, after, known, limit, max_bytes)
                .await?;
            let Some(last) = batch.last().map(|message| message.seq) else {
                return Ok(true);
            };
            let more = batch.len() >= limit || last < known;
            if !sink.send(batch).await {
                return Ok(false);
            }
            if !more {
                return Ok(true);
            }
            after = last;
        }
        Ok(true)
    }

    /// The `limit` processes last active (registered, appended to or finished), the
    /// most recent first; ties in process id order. With `only`, among those processes.
    async fn recent(
        &self,
        limit: usize,
        only: Option<&[ProcessId]>,
    ) -> Result<Vec<RecentProcess>, StoreError>;

    /// Whether the instances on this store elect one republisher among them (see
    /// [`crate::republish`]): true for a store a fleet shares.
    fn elects_a_republisher(&self) -> bool {
        false
    }

    /// For the republisher: the processes appended to or finished within the last
    /// `within`, the most recent first, at most `limit`; but only while this instance
    /// holds the store's republisher lease (taken when free, kept while the instance
    /// lives), else `None`. So one instance of a fleet republishes at a time.
    async fn changed_if_republisher(
        &self,
        _within: Duration,
        _limit: usize,
    ) -> Result<Option<Vec<ProcessInfo>>, StoreError> {
        Ok(None)
    }

    /// Answers when the store does, for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// A short name for logs and readiness: `postgres` or `memory`.
    fn name(&self) -> &'static str;

    /// Sets the store's gauges (see `crate::metrics`) as of now; called at each scrape
    /// of `/metrics`. A store with nothing to report keeps the default.
    fn record_metrics(&self) {}
}
