//! [`Health`]: whether a backing service answers, as last seen, and [`TrackedStore`],
//! a store that keeps one. An outage is logged once
//! when it starts and once when it ends, not once per failed call, and callers can
//! skip a service that is down instead of waiting on it every time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::{
    FinishStatus, NewMessage, ProcessId, ProcessInfo, RecentProcess, StoredMessage,
};
use crate::ports::{AppendOutcome, MessageSink, MessageStore, Registration, StoreError};

#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    /// When it was last seen failing, in milliseconds since `epoch`.
    failed_at: AtomicU64,
    /// What the log says when it goes down, and when it comes back.
    down_effect: &'static str,
    up_effect: &'static str,
    service: &'static str,
}

/// While a service is down, one call per this interval goes through to see whether it
/// is back; the others fail (or skip it) at once.
pub const RETRY_WHILE_DOWN: Duration = Duration::from_millis(500);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Health {
    pub fn new(service: &'static str, down_effect: &'static str, up_effect: &'static str) -> Self {
        Self {
            up: AtomicBool::new(true),
            failed_at: AtomicU64::new(0),
            down_effect,
            up_effect,
            service,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether to call the service now: always while it is up; while it is down, once
    /// per `retry_after` (the caller that gets `true` is the probe, and the interval
    /// starts again), so a dead service costs one call per interval instead of a
    /// timeout per request.
    pub fn should_try(&self, retry_after: Duration) -> bool {
        if self.is_up() {
            return true;
        }
        let failed_at = self.failed_at.load(Ordering::Relaxed);
        let now = now_ms();
        now.saturating_sub(failed_at) >= retry_after.as_millis() as u64
            && self
                .failed_at
                .compare_exchange(failed_at, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(
                service = self.service,
                "{} answers again: {}",
                self.service,
                self.up_effect
            );
        }
    }

    pub fn mark_down(&self, what: &str, error: &dyn std::fmt::Display) {
        self.failed_at.store(now_ms(), Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(service = self.service, %error, "{} failed ({what}): {}", self.service,
                self.down_effect);
        }
    }
}

/// A store that reports to a [`Health`]: an outage of the store behind it is logged
/// once when it starts and once when it ends, and while it lasts calls fail at once
/// (503 for appends; followers back off and retry) but for one probe per interval.
/// `ping` always goes through, so `/readyz` tells the truth.
pub struct TrackedStore<S> {
    inner: S,
    health: Health,
    /// When the store last answered a call (success or a refusal of its own), in
    /// milliseconds since `epoch`.
    answered_at: AtomicU64,
    busy_but_up_for: Duration,
}

/// A store that is busy (no connection freed up in time) but answered other calls
/// within this long is overloaded, not down: its calls are refused as busy and its
/// health is left alone. Past it, busy means unreachable.
pub const BUSY_BUT_UP_FOR: Duration = Duration::from_secs(2);

impl<S: MessageStore> TrackedStore<S> {
    pub fn new(inner: S, health: Health) -> Self {
        Self {
            inner,
            health,
            answered_at: AtomicU64::new(now_ms()),
            busy_but_up_for: BUSY_BUT_UP_FOR,
        }
    }

    /// Fails at once while the store is known down, but for one probe per interval.
    fn admit(&self) -> Result<(), StoreError> {
        if self.health.should_try(RETRY_WHILE_DOWN) {
            Ok(())
        } else {
            Err(StoreError::Unavailable(anyhow::anyhow!(
                "{} is down",
                self.health.service
            )))
        }
    }

    fn observe<T>(&self, what: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(StoreError::Unavailable(error)) => {
                self.health
                    .mark_down(what, &crate::report::one_line(&error));
                Err(StoreError::Unavailable(error))
            }
            Err(StoreError::Busy) => {
                let silent = now_ms().saturating_sub(self.answered_at.load(Ordering::Relaxed));
                if silent < self.busy_but_up_for.as_millis() as u64 {
                    return Err(StoreError::Busy);
                }
                let error = anyhow::anyhow!(
                    "no connection to it freed up, and it has answered nothing for {silent} ms"
                );
                self.health.mark_down(what, &error);
                Err(StoreError::Unavailable(error))
            }
            answered => {
                self.answered_at.store(now_ms(), Ordering::Relaxed);
                self.health.mark_up();
                answered
            }
        }
    }
}

#[async_trait]
impl<S: MessageStore> MessageStore for TrackedStore<S> {
    async fn register(&self, process: &ProcessId) -> Result<Registration, StoreError> {
        self.admit()?;
        self.observe("register", self.inner.register(process).await)
    }

    async fn append(
        &self,
        process: &ProcessId,
        messages: &[NewMessage],
    ) -> Result<AppendOutcome, StoreError> {
        self.admit()?;
        self.observe("append", self.inner.append(process, messages).await)
    }

    async fn finish(
        &self,
        process: &ProcessId,
        status: &FinishStatus,
    ) -> Result<ProcessInfo, StoreError> {
        self.admit()?;
        self.observe("finish", self.inner.finish(process, status).await)
    }

    async fn process(&self, process: &ProcessId) -> Result<Option<ProcessInfo>, StoreError> {
        self.admit()?;
        self.observe("read a process", self.inner.process(process).await)
    }

    async fn read_after(
        &self,
        process: &ProcessId,
        after: u64,
        known: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.admit()?;
        self.observe(
            "read messages",
            self.inner
                .read_after(process, after, known, limit, max_bytes)
                .await,
        )
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
        self.admit()?;
        self.observe(
            "stream messages",
            self.inner
                .stream_after(process, after, known, upto, page, sink)
                .await,
        )
    }

    async fn recent(
        &self,
        limit: usize,
        only: Option<&[ProcessId]>,
    ) -> Result<Vec<RecentProcess>, StoreError> {
        self.admit()?;
        self.observe(
            "list recent processes",
            self.inner.recent(limit, only).await,
        )
    }

    fn elects_a_republisher(&self) -> bool {
        self.inner.elects_a_republisher()
    }

    async fn changed_if_republisher(
        &self,
        within: Duration,
        limit: usize,
    ) -> Result<Option<Vec<ProcessInfo>>, StoreError> {
        self.admit()?;
        self.observe(
            "list changed processes",
            self.inner.changed_if_republisher(within, limit).await,
        )
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.observe("ping", self.inner.ping().await)
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn record_metrics(&self) {
        crate::metrics::backend_up(self.inner.name(), self.health.is_up());
        self.inner.record_metrics();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_down_service_is_tried_again_only_after_the_interval() {
        let health = Health::new("test", "down", "up");
        assert!(health.should_try(Duration::from_secs(60)));
        health.mark_down("a call", &"refused");
        assert!(!health.is_up());
        assert!(!health.should_try(Duration::from_secs(60)));
        assert!(health.should_try(Duration::ZERO));
        health.mark_up();
        assert!(health.should_try(Duration::from_secs(60)));
    }

    /// A pool timeout is an overload while the store answers other calls, and an outage
    /// once it has answered nothing for a while.
    #[test]
    fn busy_is_an_overload_while_the_store_answers_and_an_outage_when_it_does_not() {
        let mut store = TrackedStore::new(
            crate::adapters::memory::MemoryStore::new(),
            Health::new("test", "down", "up"),
        );
        let busy = || Err::<(), _>(StoreError::Busy);
        assert!(matches!(
            store.observe("a call", busy()),
            Err(StoreError::Busy)
        ));
        assert!(store.health.is_up());

        store.busy_but_up_for = Duration::ZERO;
        assert!(matches!(
            store.observe("a call", busy()),
            Err(StoreError::Unavailable(_))
        ));
        assert!(!store.health.is_up());
        assert!(store.observe("a call", Ok(())).is_ok());
        assert!(store.health.is_up());
    }
}
