//! `GET /metrics`: the process's metrics in the Prometheus text format, open without a
//! token. Metrics are per process and the tests share one, so counters are checked by
//! how much they grew (at least what this test did), and the scrapes that set gauges
//! for their own instance take turns.

use std::sync::Arc;
use std::time::Duration;

use agent_stream::adapters::memory::{InProcessFeed, MemoryStore};
use agent_stream::auth::{Secret, Verifier};
use agent_stream::domain::{ProcessId, StoredMessage};
use agent_stream::ports::{FeedError, FeedSubscription, LiveFeed};
use agent_stream::startup::Backends;
use async_trait::async_trait;

use agent_stream_testkit::app::{Backend, Format, TestApp, WAIT};
use agent_stream_testkit::fixtures::{messages, process_id};
use agent_stream_testkit::on_every_backend;

/// Held across a scrape whose instance gauges (degraded follows, pools) are checked:
/// every scrape sets them for its own instance.
static SCRAPES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A scraped page, by series (`name{labels}`).
struct Scrape(String);

impl Scrape {
    fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(value.parse().expect("a sample value"))
        })
    }

    /// The series' value; 0 if it was never recorded.
    fn get(&self, series: &str) -> f64 {
        self.value(series).unwrap_or(0.0)
    }
}

async fn scrape(app: &TestApp) -> Scrape {
    let response = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    Scrape(response.text().await.expect("a text body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_open_without_a_token_when_auth_is_on() {
    let secret = Secret::new("metrics-test-secret-0123456789abcdef").expect("a long secret");
    let app = TestApp::spawn_with(Backend::Memory, |config| {
        config.auth = Some(Arc::new(Verifier::new(&secret)));
    })
    .await;
    let process = process_id();
    let refused = app.put_process(&process).await;
    assert_eq!(refused.status(), 401, "the API still wants a token");

    let page = scrape(&app).await;
    assert!(
        page.0.contains("# TYPE agent_stream_follows_active gauge"),
        "{}",
        page.0
    );
    // Counters are on the page from the start, at 0 if nothing happened yet.
    for series in [
        "agent_stream_follows_active{format=\"ndjson\"}",
        "agent_stream_gap_fills_total",
        "agent_stream_lagged_followers_total",
        "agent_stream_redis_write_failures_total",
        "agent_stream_append_requests_total{outcome=\"unavailable\"}",
        "agent_stream_follows_degraded",
    ] {
        assert!(
            page.value(series).is_some(),
            "{series} missing:\n{}",
            page.0
        );
    }
}

async fn appends_and_follows_move_their_counters(app: TestApp) {
    let process = process_id();
    let before = scrape(&app).await;
    app.append_batch(&process, &messages("m", 3)).await;
    let mut follow = app.follow(&process, Format::Sse, None).await;
    assert_eq!(follow.take_messages(3).await.len(), 3);
    // Live messages: the first to reach the follower from the feed is timed.
    app.append(&process, &messages("live", 3)).await;
    assert_eq!(follow.take_messages(3).await.len(), 3);

    let after = scrape(&app).await;
    let grew = |series: &str| after.get(series) - before.get(series);
    assert!(grew("agent_stream_append_requests_total{outcome=\"ok\"}") >= 4.0);
    assert!(grew("agent_stream_messages_appended_total") >= 6.0);
    assert!(grew("agent_stream_follows_total{format=\"sse\"}") >= 1.0);
    assert!(grew("agent_stream_messages_delivered_total{format=\"sse\"}") >= 6.0);
    assert!(grew("agent_stream_delivery_delay_seconds_count") >= 1.0);
    assert!(grew("agent_stream_catch_up_pages_total") >= 1.0);
    assert!(grew("agent_stream_catch_up_messages_total") >= 3.0);
    assert!(grew("agent_stream_append_duration_seconds_count") >= 4.0);
    assert!(
        after.get("agent_stream_follows_active{format=\"sse\"}") >= 1.0,
        "this test's follow is open"
    );
    assert!(
        after
            .0
            .contains("agent_stream_append_duration_seconds_bucket{le=\"0.0005\"}"),
        "latency buckets start at half a millisecond"
    );
}

async fn an_append_to_a_finished_process_counts_as_rejected(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 1)).await;
    assert!(app
        .finish(&process, "succeeded")
        .await
        .status()
        .is_success());
    let before = scrape(&app).await;
    let refused = app
        .post_messages(&process, serde_json::to_vec(&messages("late", 1)).unwrap())
        .await;
    assert_eq!(refused.status(), 409);
    let after = scrape(&app).await;
    let series = "agent_stream_append_requests_total{outcome=\"rejected\"}";
    assert!(after.get(series) - before.get(series) >= 1.0);
}

on_every_backend!(
    appends_and_follows_move_their_counters,
    an_append_to_a_finished_process_counts_as_rejected
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_backends_report_their_pools_and_health() {
    let app = TestApp::spawn(Backend::Real).await;
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    let mut follow = app.follow(&process, Format::Ndjson, None).await;
    follow.take_messages(2).await;

    let _turn = SCRAPES.lock().await;
    let page = scrape(&app).await;
    assert_eq!(
        page.value("agent_stream_backend_up{backend=\"postgres\"}"),
        Some(1.0)
    );
    assert_eq!(
        page.value("agent_stream_backend_up{backend=\"redis\"}"),
        Some(1.0)
    );
    // TestApp's pool opens at most 8 connections; it has opened some by now.
    assert_eq!(
        page.value("agent_stream_postgres_max_connections"),
        Some(8.0)
    );
    let in_use = page.value("agent_stream_postgres_connections{state=\"in_use\"}");
    let idle = page.value("agent_stream_postgres_connections{state=\"idle\"}");
    let open = in_use.expect("in_use") + idle.expect("idle");
    assert!((1.0..=8.0).contains(&open), "{open} connections open");
    assert_eq!(page.value("agent_stream_redis_readers"), Some(2.0));
    assert_eq!(
        page.value("agent_stream_redis_connections{role=\"command\"}"),
        Some(1.0)
    );
    let readers = page.value("agent_stream_redis_connections{role=\"reader\"}");
    assert!((0.0..=2.0).contains(&readers.expect("reader connections")));
    assert_eq!(page.value("agent_stream_follows_degraded"), Some(0.0));
}

/// The in-process feed, reporting itself down: followers poll the store.
struct DownFeed(InProcessFeed);

#[async_trait]
impl LiveFeed for DownFeed {
    async fn publish(
        &self,
        process: &ProcessId,
        messages: &[StoredMessage],
    ) -> Result<(), FeedError> {
        self.0.publish(process, messages).await
    }
    async fn publish_end(
        &self,
        process: &ProcessId,
        last_seq: u64,
        status: &str,
    ) -> Result<(), FeedError> {
        self.0.publish_end(process, last_seq, status).await
    }
    fn subscribe(&self, process: &ProcessId, after: u64) -> FeedSubscription {
        self.0.subscribe(process, after)
    }
    async fn ping(&self) -> Result<(), FeedError> {
        Err(FeedError(anyhow::anyhow!("down for the test")))
    }
    fn is_live(&self) -> bool {
        false
    }
    fn name(&self) -> &'static str {
        "down"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_feed_is_down_every_open_follow_counts_as_degraded() {
    let backends = Backends {
        store: Arc::new(MemoryStore::new()),
        feed: Arc::new(DownFeed(InProcessFeed::new(16))),
    };
    let app = TestApp::spawn_on(Backend::Memory, backends, None, |_| {}).await;
    let process = process_id();
    app.append(&process, &messages("m", 1)).await;
    let mut follows = Vec::new();
    for format in [Format::Sse, Format::Ndjson] {
        let mut follow = app.follow(&process, format, None).await;
        follow.take_messages(1).await;
        follows.push(follow);
    }

    let _turn = SCRAPES.lock().await;
    assert_eq!(
        scrape(&app).await.value("agent_stream_follows_degraded"),
        Some(2.0)
    );
    drop(follows);
    // The server notices a closed follow when it next writes to it: a heartbeat or,
    // here, a message.
    app.append(&process, &messages("after", 1)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let degraded = scrape(&app).await.value("agent_stream_follows_degraded");
        if degraded == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed follows still counted: {degraded:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
