//! The service's metrics, named in one place: each metric's name, its help text, and a
//! small function per event that records it, so call sites say what happened rather
//! than which counter moved. `GET /metrics` renders them in the Prometheus text format.
//!
//! The recorder is the `metrics` facade's global one, so metrics are **per process**:
//! [`install`] sets it up on first use and every server in the process (tests run
//! many) shares it. Until it is installed, recording does nothing (`agent-stream
//! append` never installs it).
//!
//! The fan-out path runs at ten thousand followers: a follow resolves its handles once
//! ([`FollowMetrics`]) and then only adds to atomics; delivery delay is sampled (see
//! [`DelaySampler`]). Gauges that describe a state (pool use, backends up, follows
//! polling PostgreSQL) are read at scrape time, not kept up to date on every change.
//! No metric carries a process id: cardinality stays fixed, and `/metrics` is open
//! without a token.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{Counter, Gauge, Unit};
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::time::Instant;

use crate::ports::StoreError;

/// Gauge `{format}`: follows open now, by format (`sse`, `ndjson`).
pub const FOLLOWS_ACTIVE: &str = "agent_stream_follows_active";
/// Counter `{format}`: follows started.
pub const FOLLOWS_STARTED: &str = "agent_stream_follows_total";
/// Gauge: follows polling PostgreSQL because the live feed is down.
pub const FOLLOWS_DEGRADED: &str = "agent_stream_follows_degraded";
/// Counter `{format}`: messages sent to followers.
pub const MESSAGES_DELIVERED: &str = "agent_stream_messages_delivered_total";
/// Histogram: seconds from a message's commit to a follower receiving it live.
pub const DELIVERY_DELAY: &str = "agent_stream_delivery_delay_seconds";
/// Counter: pages of messages (or batches of a stream) followers and snapshots read from
/// the store.
pub const CATCH_UP_PAGES: &str = "agent_stream_catch_up_pages_total";
/// Counter: messages in those pages.
pub const CATCH_UP_MESSAGES: &str = "agent_stream_catch_up_messages_total";
/// Counter `{outcome}`: catch-ups and snapshots read as one stream of the store's:
/// `ended` (to the end), `stopped` (gave up early: a slow client, the stream's time, a store error;
/// the rest came in pages).
pub const CATCH_UP_STREAMS: &str = "agent_stream_catch_up_streams_total";
/// Counter: gaps in the live feed that followers filled from the store.
pub const GAP_FILLS: &str = "agent_stream_gap_fills_total";
/// Counter: messages and end markers the republisher put into the live feed, stored
/// but never published (see `crate::republish`).
pub const REPUBLISHED: &str = "agent_stream_republished_total";
/// Counter: times a follower fell behind its feed buffer.
pub const LAGGED: &str = "agent_stream_lagged_followers_total";
/// Counter `{outcome}`: append calls that reached the store, by outcome.
pub const APPENDS: &str = "agent_stream_append_requests_total";
/// Counter: messages newly stored.
pub const MESSAGES_APPENDED: &str = "agent_stream_messages_appended_total";
/// Histogram: seconds per successful append, store commit and live publish.
pub const APPEND_DURATION: &str = "agent_stream_append_duration_seconds";
/// Counter: Redis writes (`XADD`, end markers) that failed or were skipped.
pub const REDIS_WRITE_FAILURES: &str = "agent_stream_redis_write_failures_total";
/// Gauge `{backend}`: 1 while a backing service answers, 0 while it is down.
pub const BACKEND_UP: &str = "agent_stream_backend_up";
/// Gauge `{state}`: the PostgreSQL pool's connections, `idle` or `in_use`.
pub const POSTGRES_CONNECTIONS: &str = "agent_stream_postgres_connections";
/// Gauge: the most connections the PostgreSQL pool opens.
pub const POSTGRES_MAX_CONNECTIONS: &str = "agent_stream_postgres_max_connections";
/// Gauge `{role}`: Redis connections open, `command` or `reader`.
pub const REDIS_CONNECTIONS: &str = "agent_stream_redis_connections";
/// Gauge: the Redis readers configured, each with at most one connection.
pub const REDIS_READERS: &str = "agent_stream_redis_readers";

/// Counter `{outcome}`: pages of messages (catch-up and snapshots) read while a read
/// replica is set (`--database-read-url`): see [`ReplicaRead`].
pub const REPLICA_READS: &str = "agent_stream_replica_reads_total";

/// Counter: connections closed at once because --max-connections were open.
pub const CONNECTIONS_REFUSED: &str = "agent_stream_connections_refused_total";
/// Counter: connections closed because no request was in flight for their time limit.
pub const CONNECTIONS_IDLE_CLOSED: &str = "agent_stream_connections_idle_closed_total";
pub const CONNECTIONS_STALLED_CLOSED: &str = "agent_stream_connections_stalled_closed_total";

/// Counter: follows sent uncompressed although the client accepted an encoding,
/// because `--max-compressed-follows` were being compressed.
pub const FOLLOWS_UNCOMPRESSED: &str = "agent_stream_follows_uncompressed_total";
/// Counter: Redis entries dropped because they carry another store's epoch (another
/// deployment's, or a recreated database's; adr/0007).
pub const REDIS_FOREIGN_ENTRIES: &str = "agent_stream_redis_foreign_entries_total";

/// Histogram buckets of every `_seconds` metric: half a millisecond to ten seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often recorded histogram samples are folded into their buckets, so memory stays
/// bounded however rarely `/metrics` is scraped.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A follower records the delivery delay of at most one live message per this interval.
pub const DELAY_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The process's metrics handle: installs the recorder on first call, and returns the
/// same handle after. If another recorder was installed first (by an embedding
/// program), the handle renders an empty page and says so in the log.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the latency buckets are not empty");
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                Err(error) => {
                    tracing::warn!(%error,
                        "another metrics recorder is installed: /metrics stays empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                })
                .expect("spawn the metrics upkeep thread");
            describe();
            start_at_zero();
            handle
        })
        .clone()
}

fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(FOLLOWS_ACTIVE, "Follows open now, by format (sse, ndjson).");
    describe_counter!(FOLLOWS_STARTED, "Follows started, by format.");
    describe_gauge!(
        FOLLOWS_DEGRADED,
        "Follows polling PostgreSQL because the live feed is down (as of the scrape)."
    );
    describe_counter!(MESSAGES_DELIVERED, "Messages sent to followers, by format.");
    describe_histogram!(
        DELIVERY_DELAY,
        Unit::Seconds,
        "From a message's commit (its created_at) to a follower receiving it from the live feed; \
            each follower samples at most one message a second."
    );
    describe_counter!(
        CATCH_UP_PAGES,
        "Pages of messages followers and snapshots read from the store (each follow's first read, \
            gap fills, lag, polls, snapshots)."
    );
    describe_counter!(
        CATCH_UP_MESSAGES,
        "Messages followers and snapshots read from the store."
    );
    describe_counter!(
        CATCH_UP_STREAMS,
        "Catch-ups and snapshots read as one stream of the store's, by outcome: ended, or \
            stopped early (the rest in pages)."
    );
    describe_counter!(
        GAP_FILLS,
        "Gaps in the live feed (a message ahead of the next seq) filled from the store."
    );
    describe_counter!(
        REPUBLISHED,
        "Messages and end markers stored but never published (a lost XADD) that the republisher \
            put into the live feed."
    );
    describe_counter!(
        REPLICA_READS,
        "Pages of messages read while a read replica is set, by outcome: replica (whole from it), \
            completed (it lagged: the rest from the primary), fallback (it failed or rests: from \
            the primary)."
    );
    describe_counter!(
        LAGGED,
        "Times a follower fell behind its feed buffer and caught up from the store."
    );
    describe_counter!(
        APPENDS,
        "Append calls that reached the store, by outcome (ok, rejected, busy, unavailable)."
    );
    describe_counter!(MESSAGES_APPENDED, "Messages newly stored.");
    describe_histogram!(
        APPEND_DURATION,
        Unit::Seconds,
        "Successful appends: store commit plus live publish."
    );
    describe_counter!(
        REDIS_WRITE_FAILURES,
        "Redis writes (XADD, end markers) that failed or were skipped while Redis was down."
    );
    describe_gauge!(
        BACKEND_UP,
        "1 while a backing service (postgres, redis) answers, 0 while it is down."
    );
    describe_gauge!(
        POSTGRES_CONNECTIONS,
        "PostgreSQL pool connections, by state (idle, in_use)."
    );
    describe_gauge!(
        POSTGRES_MAX_CONNECTIONS,
        "The most connections the PostgreSQL pool opens."
    );
    describe_gauge!(
        REDIS_CONNECTIONS,
        "Redis connections open, by role (command: the shared one, counted while Redis answers; \
            reader: blocking XREAD connections)."
    );
    describe_counter!(
        REDIS_FOREIGN_ENTRIES,
        "Redis entries not delivered because they carry another store's epoch (another deployment \
            on the same Redis and prefix, or a database since recreated)."
    );
    describe_counter!(
        FOLLOWS_UNCOMPRESSED,
        "Follows sent uncompressed although the client accepted an encoding, because \
            --max-compressed-follows were being compressed."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed as soon as accepted, because --max-connections were open."
    );
    describe_counter!(
        CONNECTIONS_IDLE_CLOSED,
        "Connections closed for sending no request in time (--header-read-timeout from accept, \
            --idle-timeout after a request)."
    );
    describe_counter!(
        CONNECTIONS_STALLED_CLOSED,
        "Connections closed because a response made no progress for --write-timeout (an HTTP/2 \
            stream whose client keeps its window shut, or a client that stopped reading)."
    );
    describe_gauge!(
        REDIS_READERS,
        "Redis readers configured, each holding at most one connection."
    );
}

/// Puts the counters and the follow gauges on the page at 0 (adding nothing), so they are on the
/// page (and
/// `rate()` works) before their first event.
fn start_at_zero() {
    for format in ["sse", "ndjson"] {
        ::metrics::gauge!(FOLLOWS_ACTIVE, "format" => format).increment(0.0);
        ::metrics::counter!(FOLLOWS_STARTED, "format" => format).increment(0);
        ::metrics::counter!(MESSAGES_DELIVERED, "format" => format).increment(0);
    }
    for outcome in ["ok", "rejected", "busy", "unavailable"] {
        ::metrics::counter!(APPENDS, "outcome" => outcome).increment(0);
    }
    for outcome in ReplicaRead::ALL {
        ::metrics::counter!(REPLICA_READS, "outcome" => outcome.as_str()).increment(0);
    }
    for outcome in ["ended", "stopped"] {
        ::metrics::counter!(CATCH_UP_STREAMS, "outcome" => outcome).increment(0);
    }
    for counter in [
        CATCH_UP_PAGES,
        CATCH_UP_MESSAGES,
        GAP_FILLS,
        REPUBLISHED,
        LAGGED,
        MESSAGES_APPENDED,
        REDIS_WRITE_FAILURES,
        CONNECTIONS_REFUSED,
        CONNECTIONS_IDLE_CLOSED,
        CONNECTIONS_STALLED_CLOSED,
        REDIS_FOREIGN_ENTRIES,
        FOLLOWS_UNCOMPRESSED,
    ] {
        ::metrics::counter!(counter).increment(0);
    }
}

/// The metrics of one follow: counted as active from [`FollowMetrics::start`] until
/// dropped. Its handles are resolved once, so counting a delivery is one atomic add.
pub struct FollowMetrics {
    active: Gauge,
    delivered: Counter,
}

impl FollowMetrics {
    pub fn start(format: &'static str) -> Self {
        ::metrics::counter!(FOLLOWS_STARTED, "format" => format).increment(1);
        let active = ::metrics::gauge!(FOLLOWS_ACTIVE, "format" => format);
        active.increment(1.0);
        Self {
            active,
            delivered: ::metrics::counter!(MESSAGES_DELIVERED, "format" => format),
        }
    }

    pub fn delivered(&self) {
        self.delivered.increment(1);
    }
}

impl Drop for FollowMetrics {
    fn drop(&mut self) {
        self.active.decrement(1.0);
    }
}

/// Samples one follower's delivery delays: at most one live message per
/// [`DELAY_SAMPLE_EVERY`], so that ten thousand followers of a busy process parse ten
/// thousand timestamps a second, not one per message each.
#[derive(Debug, Default)]
pub struct DelaySampler {
    last: Option<Instant>,
}

impl DelaySampler {
    /// A live message reached the follower at `now`: record its delay if a sample is due.
    pub fn message(&mut self, now: Instant, json: &[u8]) {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < DELAY_SAMPLE_EVERY)
        {
            return;
        }
        self.last = Some(now);
        if let Some(created_at) = created_at(json) {
            // Clocks of different hosts may disagree: a negative delay counts as none.
            let delay = (Utc::now() - created_at).to_std().unwrap_or_default();
            ::metrics::histogram!(DELIVERY_DELAY).record(delay.as_secs_f64());
        }
    }
}

/// The `created_at` of a stored message's wire JSON, which always ends with
/// `"created_at":"<RFC 3339>"}` (see `StoredMessage::from_head`): found from the end,
/// without parsing the rest.
pub fn created_at(json: &[u8]) -> Option<DateTime<Utc>> {
    let body = json.strip_suffix(b"\"}")?;
    let start = body.iter().rposition(|&byte| byte == b'"')? + 1;
    if !body[..start].ends_with(b"\"created_at\":\"") {
        return None;
    }
    let text = std::str::from_utf8(&body[start..]).ok()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

/// A follower or a snapshot read a page (or a stream's batch) of `messages` from the
/// store.
pub fn catch_up_page(messages: usize) {
    ::metrics::counter!(CATCH_UP_PAGES).increment(1);
    ::metrics::counter!(CATCH_UP_MESSAGES).increment(messages as u64);
}

/// A catch-up stream (a follower's or a snapshot's) ended: `to_the_end`, or stopped early.
pub fn catch_up_stream(to_the_end: bool) {
    let outcome = if to_the_end { "ended" } else { "stopped" };
    ::metrics::counter!(CATCH_UP_STREAMS, "outcome" => outcome).increment(1);
}

/// Where a page of messages came from, with a read replica set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaRead {
    /// Whole from the replica.
    Replica,
    /// The replica's page ended short of a seq known to be committed (it lags): the
    /// rest was read from the primary.
    Completed,
    /// From the primary alone: the replica failed, timed out, or rests after a failure.
    Fallback,
}

impl ReplicaRead {
    const ALL: [Self; 3] = [Self::Replica, Self::Completed, Self::Fallback];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replica => "replica",
            Self::Completed => "completed",
            Self::Fallback => "fallback",
        }
    }
}

/// A page of messages was read with a read replica set.
pub fn replica_read(outcome: ReplicaRead) {
    ::metrics::counter!(REPLICA_READS, "outcome" => outcome.as_str()).increment(1);
}

pub fn gap_fill() {
    ::metrics::counter!(GAP_FILLS).increment(1);
}

/// The republisher put `entries` (messages or an end marker) into the live feed.
pub fn republished(entries: usize) {
    ::metrics::counter!(REPUBLISHED).increment(entries as u64);
}

/// A follow went uncompressed: the budget of compressed follows was spent.
pub fn follow_uncompressed() {
    ::metrics::counter!(FOLLOWS_UNCOMPRESSED).increment(1);
}

/// A follower fell behind its feed buffer.
pub fn lagged() {
    ::metrics::counter!(LAGGED).increment(1);
}

/// An append stored `stored` new messages in `took`.
pub fn appended(stored: usize, took: Duration) {
    ::metrics::counter!(APPENDS, "outcome" => "ok").increment(1);
    ::metrics::counter!(MESSAGES_APPENDED).increment(stored as u64);
    ::metrics::histogram!(APPEND_DURATION).record(took.as_secs_f64());
}

/// An append the store refused or could not take.
pub fn append_failed(error: &StoreError) {
    ::metrics::counter!(APPENDS, "outcome" => append_outcome(error)).increment(1);
}

fn append_outcome(error: &StoreError) -> &'static str {
    match error {
        StoreError::UnknownProcess(_)
        | StoreError::Finished { .. }
        | StoreError::StatusConflict { .. } => "rejected",
        StoreError::Busy => "busy",
        StoreError::Unavailable(_) => "unavailable",
    }
}

/// A Redis write failed, or was skipped while Redis is down.
pub fn redis_write_failed() {
    ::metrics::counter!(REDIS_WRITE_FAILURES).increment(1);
}

/// A Redis entry of another store's epoch was read and dropped.
pub fn foreign_entry() {
    ::metrics::counter!(REDIS_FOREIGN_ENTRIES).increment(1);
}

/// A connection was closed as soon as accepted: the server was at its cap.
pub fn connection_refused() {
    ::metrics::counter!(CONNECTIONS_REFUSED).increment(1);
}

/// A connection was closed for sending no request in time.
pub fn connection_closed_idle() {
    ::metrics::counter!(CONNECTIONS_IDLE_CLOSED).increment(1);
}

/// A connection was closed because one of its responses made no progress.
pub fn connection_closed_stalled() {
    ::metrics::counter!(CONNECTIONS_STALLED_CLOSED).increment(1);
}

/// Whether `backend` (a port's `name()`) answers, as last seen.
pub fn backend_up(backend: &'static str, up: bool) {
    ::metrics::gauge!(BACKEND_UP, "backend" => backend).set(f64::from(u8::from(up)));
}

/// The follows of the scraped instance that poll PostgreSQL now.
pub fn follows_degraded(follows: usize) {
    ::metrics::gauge!(FOLLOWS_DEGRADED).set(follows as f64);
}

/// The PostgreSQL pool's connections.
pub fn postgres_pool(in_use: u32, idle: u32, max: u32) {
    ::metrics::gauge!(POSTGRES_CONNECTIONS, "state" => "in_use").set(f64::from(in_use));
    ::metrics::gauge!(POSTGRES_CONNECTIONS, "state" => "idle").set(f64::from(idle));
    ::metrics::gauge!(POSTGRES_MAX_CONNECTIONS).set(f64::from(max));
}

/// The Redis feed's connections: the shared command connection (`command`, 0 or 1) and
/// the readers' (`readers_connected` of `readers`).
pub fn redis_connections(command: bool, readers_connected: usize, readers: usize) {
    ::metrics::gauge!(REDIS_CONNECTIONS, "role" => "command").set(f64::from(u8::from(command)));
    ::metrics::gauge!(REDIS_CONNECTIONS, "role" => "reader").set(readers_connected as f64);
    ::metrics::gauge!(REDIS_READERS).set(readers as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StoredMessage;

    #[test]
    fn created_at_is_read_from_the_end_of_a_stored_message() {
        let message = StoredMessage::from_head(
            r#"{"id":"m1","payload":{"created_at":"1999-01-01T00:00:00Z"}"#,
            7,
            "2026-11-27T10:15:03.123456Z",
        );
        let expected = DateTime::parse_from_rfc3339("2026-11-27T10:15:03.123456Z").unwrap();
        assert_eq!(
            created_at(&message.json),
            Some(expected.with_timezone(&Utc))
        );
    }

    #[test]
    fn json_without_a_trailing_created_at_has_none() {
        assert_eq!(created_at(br#"{"id":"m1"}"#), None);
        assert_eq!(created_at(br#"{"created_at":"yesterday"}"#), None);
        assert_eq!(created_at(b""), None);
    }

    #[test]
    fn append_errors_are_told_apart_by_who_can_fix_them() {
        let process = crate::domain::ProcessId::parse("p").unwrap();
        assert_eq!(
            append_outcome(&StoreError::UnknownProcess(process)),
            "rejected"
        );
        assert_eq!(append_outcome(&StoreError::Busy), "busy");
        assert_eq!(
            append_outcome(&StoreError::Unavailable(anyhow::anyhow!("down"))),
            "unavailable"
        );
    }

    #[test]
    fn a_follow_counts_as_active_until_it_is_dropped() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let page = recorder.handle();
        let follow = ::metrics::with_local_recorder(&recorder, || FollowMetrics::start("sse"));
        follow.delivered();
        follow.delivered();
        let open = page.render();
        assert!(
            open.contains("agent_stream_follows_active{format=\"sse\"} 1\n"),
            "{open}"
        );
        assert!(
            open.contains("agent_stream_follows_total{format=\"sse\"} 1\n"),
            "{open}"
        );
        assert!(
            open.contains("agent_stream_messages_delivered_total{format=\"sse\"} 2\n"),
            "{open}"
        );
        drop(follow);
        let closed = page.render();
        assert!(
            closed.contains("agent_stream_follows_active{format=\"sse\"} 0\n"),
            "{closed}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_samples_at_most_one_delay_per_interval() {
        let mut sampler = DelaySampler::default();
        let start = Instant::now();
        sampler.message(start, b"{}");
        assert_eq!(sampler.last, Some(start));
        sampler.message(start + DELAY_SAMPLE_EVERY / 2, b"{}");
        assert_eq!(sampler.last, Some(start), "too soon for another sample");
        sampler.message(start + DELAY_SAMPLE_EVERY, b"{}");
        assert_eq!(sampler.last, Some(start + DELAY_SAMPLE_EVERY));
    }
}
