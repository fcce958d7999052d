//! [`Replica`]: a streaming read replica of the primary (`--database-read-url`), for
//! the heaviest reads: catch-up pages and snapshots (`read_after`). Statuses, appends
//! and finishes always go to the primary.
//!
//! A replica applies the primary's WAL in commit order, so what it shows of a process
//! is always a gap-free prefix of its messages (seqs commit in seq order: see the
//! parent module): it may lag, but it never shows seq `n` without every seq below it.
//! So a page read from it never skips or repeats a seq; the only risk is that it ends
//! too early. That is how lag is detected: the caller says the last seq it knows is
//! committed (`known`, from the primary's status or the live feed), and a page that
//! ends below it while the limit allowed more is completed from the primary
//! (`PostgresStore::read_after`). A replica that fails, does not answer within
//! [`READ_TIMEOUT`] or belongs to another database is rested for [`REST_AFTER_FAILURE`]:
//! meanwhile every page comes from the primary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio::time::Instant;

use super::{options, read_page, sql, stream_rows, StreamOutcome, Streamed, PING_IF_IDLE_FOR};
use crate::config::redact;
use crate::domain::{ProcessId, StoredMessage};
use crate::metrics::{self, ReplicaRead};
use crate::ports::{Epoch, MessageSink};

/// Longest a page read from the replica may take, waiting for its connection included,
/// before the primary is asked instead.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long reads go to the primary alone after the replica failed, before it is tried
/// again: a replica that is down costs one timeout per interval, not one per read.
pub const REST_AFTER_FAILURE: Duration = Duration::from_secs(5);

pub struct Replica {
    pool: PgPool,
    /// DATABASE_READ_URL without its secrets, for messages.
    redacted_url: String,
    /// Until when reads skip the replica, after it failed.
    resting_until: Mutex<Option<Instant>>,
    /// Whether the last read failed, so a failure and a recovery are logged once each.
    failing: AtomicBool,
}

impl Replica {
    /// Sets up a pool for `read_url` (read by the same rules as DATABASE_URL: TLS modes,
    /// root certificates); connections are opened on first use. Each connection checks
    /// that the replica holds the primary's database (the same store `epoch`), so a URL
    /// naming another database is never read from.
    pub fn connect_lazy(
        read_url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        epoch: Epoch,
    ) -> anyhow::Result<Self> {
        let options = options::connect_options(read_url, "DATABASE_READ_URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout.min(READ_TIMEOUT))
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        connection.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |connection, _| {
                let epoch = epoch.clone();
                Box::pin(async move {
                    let theirs: String = sqlx::query_scalar(sql::EPOCH)
                        .fetch_one(&mut *connection)
                        .await?;
                    if theirs != epoch.as_str() {
                        return Err(sqlx::Error::Configuration(
                            format!(
                                "its store epoch is {theirs}, the primary's is {}: it is not a \
                                    replica of DATABASE_URL's database",
                                epoch.as_str()
                            )
                            .into(),
                        ));
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            redacted_url: redact(read_url),
            resting_until: Mutex::new(None),
            failing: AtomicBool::new(false),
        })
    }

    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// A page of `process`'s messages after `after` from the replica, as the primary's
    /// `read_after` reads it; `None` (counted) when the replica rests, fails or is slow,
    /// and the primary must be asked.
    pub async fn page(
        &self,
        process: &ProcessId,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Option<Vec<StoredMessage>> {
        if self.resting() {
            metrics::replica_read(ReplicaRead::Fallback);
            return None;
        }
        let read = read_page(&self.pool, process, after, limit, max_bytes);
        let error = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(page)) => {
                self.answered();
                return Some(page);
            }
            Ok(Err(error)) => crate::report::one_line(&anyhow::Error::new(error)),
            Err(_) => format!("no answer in {READ_TIMEOUT:?}"),
        };
        self.failed(error);
        None
    }

    /// A catch-up stream of `process`'s messages after `after` (up to `upto`) from the replica, as the
    /// primary's `stream_after` reads it (each row within [`READ_TIMEOUT`]); `None`
    /// (counted) while the replica rests. A stream that failed is counted and rests the
    /// replica: its `last` says where the primary goes on.
    pub async fn stream(
        &self,
        process: &ProcessId,
        (after, upto): (u64, u64),
        sink: &MessageSink,
    ) -> Option<Streamed> {
        if self.resting() {
            metrics::replica_read(ReplicaRead::Fallback);
            return None;
        }
        let streamed =
            stream_rows(&self.pool, process, (after, upto), sink, Some(READ_TIMEOUT)).await;
        match &streamed.outcome {
            StreamOutcome::Failed(error) => self.failed(crate::report::one_line(error)),
            _ => self.answered(),
        }
        Some(streamed)
    }

    /// The replica answered: a recovery is logged once.
    fn answered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(replica = %self.redacted_url,
                "the read replica answers again: catch-up pages are read from it");
        }
    }

    /// The replica failed (`error`): counted, rested, logged once.
    fn failed(&self, error: String) {
        metrics::replica_read(ReplicaRead::Fallback);
        *self.lock_rest() = Some(Instant::now() + REST_AFTER_FAILURE);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(replica = %self.redacted_url, %error, rest = ?REST_AFTER_FAILURE,
                "the read replica failed: reading catch-up pages from the primary, trying the \
                replica again after the rest");
        }
    }

    fn resting(&self) -> bool {
        let mut until = self.lock_rest();
        match *until {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    fn lock_rest(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.resting_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
