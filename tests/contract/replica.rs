//! A read replica (`--database-read-url`, issue 11): catch-up pages and snapshots are
//! read from a streaming replica that lags, and stay exact. `bash .ci/test` makes the
//! replica with `pg_basebackup -R` and has it apply each commit two seconds late
//! (`recovery_min_apply_delay`), so it always lags behind appends (it reads
//! AGENT_STREAM_TEST_REPLICA_DATABASE_URL, _DATA, _PORT; these tests fail without
//! them). Each test's database is made on the primary and waited for on the replica.
//! The tests take turns: one stops the replica, and they read shared counters.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;

use agent_stream_testkit::app::*;
use agent_stream_testkit::fixtures::*;

/// One replica test at a time.
static REPLICA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Catch-up pages are this small, so a catch-up is many pages.
const PAGE: usize = 20;

/// Bound on waiting for the replica to apply something (it lags by about two seconds).
const REPLICA_WAIT: Duration = Duration::from_secs(60);

/// A server whose store reads from the replica, on a fresh database that the replica
/// has (with its migrations) by the time this returns; and the replica's URL for it.
async fn spawn_on_replica() -> (TestApp, String) {
    let database_url = fresh_database().await;
    let name = database_url
        .rsplit_once('/')
        .map(|(_, name)| name.to_owned())
        .expect("a database name");
    let replica_admin = required_env("AGENT_STREAM_TEST_REPLICA_DATABASE_URL");
    let (server, _) = replica_admin
        .rsplit_once('/')
        .expect("the replica URL has a database path");
    let read_url = format!("{server}/{name}");
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let app = TestApp::spawn_replicated(
        database_url.clone(),
        Some(read_url.clone()),
        prefix,
        |config| {
            config.follow.catch_up_page = PAGE;
        },
    )
    .await;
    let epoch = query_text(&database_url, "SELECT epoch FROM store_epoch").await;
    wait_for(&read_url, "the replica to have the test database", |url| {
        let epoch = epoch.clone();
        async move {
            try_query_text(&url, "SELECT epoch FROM store_epoch")
                .await
                .ok()
                == Some(epoch)
        }
    })
    .await;
    (app, read_url)
}

async fn try_query_text(url: &str, sql: &str) -> Result<String, sqlx::Error> {
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let text: String = sqlx::query_scalar(sql).fetch_one(&mut connection).await?;
    let _ = connection.close().await;
    Ok(text)
}

async fn query_text(url: &str, sql: &str) -> String {
    try_query_text(url, sql).await.expect(sql)
}

/// The process's last seq as the replica shows it now (0 if it has not got it yet).
async fn replica_last_seq(read_url: &str, process: &str) -> u64 {
    let sql = format!(
        "SELECT coalesce(max(last_seq), 0)::text FROM processes WHERE process_id = '{process}'"
    );
    query_text(read_url, &sql).await.parse().expect("a seq")
}

/// Polls `ready` (given `url`) every 100 ms until it is true, failing after REPLICA_WAIT.
async fn wait_for<F, Fut>(url: &str, what: &str, ready: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + REPLICA_WAIT;
    while !ready(url.to_owned()).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {REPLICA_WAIT:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until_replicated(read_url: &str, process: &str, seq: u64) {
    let process = process.to_owned();
    wait_for(read_url, "the replica to apply the appends", |url| {
        let process = process.clone();
        async move { replica_last_seq(&url, &process).await >= seq }
    })
    .await;
}

/// The replica read counters, by outcome (replica, completed, fallback).
async fn replica_reads(app: &TestApp) -> [u64; 3] {
    app.counters(
        "agent_stream_replica_reads_total",
        ["replica", "completed", "fallback"],
    )
    .await
}

fn grew(before: [u64; 3], after: [u64; 3]) -> [u64; 3] {
    [0, 1, 2].map(|i| after[i] - before[i])
}

/// Appends `count` messages `from` on, in batches of ten, a little apart.
async fn append_slowly(app: &TestApp, process: &str, tag: &str, count: usize) {
    let batch = messages(tag, count);
    for chunk in batch.chunks(10) {
        app.append_batch(process, chunk).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_exact(messages: &[Value], upto: u64, what: &str) {
    assert_eq!(
        seqs(messages),
        (1..=upto).collect::<Vec<_>>(),
        "{what}: every seq once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_from_zero_on_a_lagging_replica_gets_every_message_once_in_order() {
    let _turn = REPLICA.lock().await;
    let (app, read_url) = spawn_on_replica().await;
    let process = process_id();
    // The first hundred are on the replica; the next hundred not yet (it lags).
    app.append_batch(&process, &messages("old", 100)).await;
    wait_until_replicated(&read_url, &process, 100).await;
    for chunk in messages("new", 100).chunks(PAGE) {
        app.append_batch(&process, chunk).await;
    }
    let lag = replica_last_seq(&read_url, &process).await;
    assert!(
        lag < 200,
        "the replica should lag behind the appends (it shows {lag} of 200)"
    );
    let before = replica_reads(&app).await;

    let follow = app.follow(&process, Format::Ndjson, None).await;
    append_slowly(&app, &process, "live", 100).await;
    assert_eq!(app.finish(&process, "completed").await.status(), 200);
    let (followed, end) = follow.until_end().await;
    assert_exact(&followed, 300, "the follow from 0");
    assert_eq!(end.status, "completed");

    let [replica, completed, fallback] = grew(before, replica_reads(&app).await);
    println!("replica lag test: the replica showed {lag} of 200 seqs when the follow began; pages read: {replica} whole from the replica, {completed} completed from the primary, {fallback} from the primary alone");
    assert!(replica >= 1, "the first pages come whole from the replica");
    assert!(
        completed >= 1,
        "the replica's lag is detected and completed from the primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_right_after_appends_has_them_all_not_the_replicas_stale_view() {
    let _turn = REPLICA.lock().await;
    let (app, read_url) = spawn_on_replica().await;
    let process = process_id();
    app.append_batch(&process, &messages("old", 50)).await;
    wait_until_replicated(&read_url, &process, 50).await;
    app.append_batch(&process, &messages("new", 50)).await;
    let before = replica_reads(&app).await;

    let response = app.snapshot(&process, "").await;
    assert_eq!(response.status(), 200);
    let snapshot: Vec<Value> = response.json().await.expect("a JSON array");
    let stale = replica_last_seq(&read_url, &process).await;
    assert!(
        stale < 100,
        "the replica should still lag (it shows {stale} of 100)"
    );
    assert_exact(&snapshot, 100, "the snapshot");

    let [replica, completed, _] = grew(before, replica_reads(&app).await);
    println!("replica snapshot test: replica at {stale} of 100; pages: {replica} whole from the replica, {completed} completed from the primary");
    assert!(
        replica >= 1 && completed >= 1,
        "read from the replica, completed from the primary"
    );
}

/// The replica of `.ci/test`, stopped until dropped (then started again and waited for,
/// so the tests after find it).
struct StoppedReplica {
    data: PathBuf,
}

impl StoppedReplica {
    fn stop() -> Self {
        let data = PathBuf::from(required_env("AGENT_STREAM_TEST_REPLICA_DATA"));
        pg_ctl(&data, &["-m", "immediate", "-w", "-t", "30", "stop"]);
        Self { data }
    }
}

impl Drop for StoppedReplica {
    fn drop(&mut self) {
        let log = self.data.with_file_name("replica.log");
        let log = log.to_string_lossy().into_owned();
        pg_ctl(&self.data, &["-l", &log, "-w", "-t", "60", "start"]);
    }
}

/// Runs `pg_ctl -D data …` as the PostgreSQL user of `.ci/test`, from the data's parent.
fn pg_ctl(data: &std::path::Path, args: &[&str]) {
    let bindir = PathBuf::from(required_env("AGENT_STREAM_TEST_PG_BINDIR"));
    let user = required_env("AGENT_STREAM_TEST_PG_USER");
    let me = Command::new("id").arg("-un").output().expect("id -un");
    let pg_ctl = bindir.join("pg_ctl");
    let mut command = if String::from_utf8_lossy(&me.stdout).trim() == user {
        Command::new(&pg_ctl)
    } else {
        let mut command = Command::new("runuser");
        command.args(["-u", &user, "--"]).arg(&pg_ctl);
        command
    };
    let status = command
        .arg("-D")
        .arg(data)
        .args(args)
        .current_dir(data.parent().expect("the data dir's parent"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run pg_ctl");
    assert!(status.success(), "pg_ctl {args:?} failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_replica_stopped_reads_fall_back_to_the_primary_and_stay_exact() {
    let _turn = REPLICA.lock().await;
    let (app, read_url) = spawn_on_replica().await;
    let process = process_id();
    app.append_batch(&process, &messages("old", 30)).await;
    wait_until_replicated(&read_url, &process, 30).await;
    let before = replica_reads(&app).await;

    let stopped = StoppedReplica::stop();
    assert!(
        try_query_text(&read_url, "SELECT 1::text").await.is_err(),
        "the replica is down"
    );
    app.append_batch(&process, &messages("down", 50)).await;
    let follow = app.follow(&process, Format::Sse, None).await;
    append_slowly(&app, &process, "live", 50).await;
    let response = app.snapshot(&process, "").await;
    assert_eq!(response.status(), 200);
    let snapshot: Vec<Value> = response.json().await.expect("a JSON array");
    assert_exact(&snapshot, 130, "the snapshot with the replica down");
    assert_eq!(app.finish(&process, "failed").await.status(), 200);
    let (followed, end) = follow.until_end().await;
    assert_exact(&followed, 130, "the follow with the replica down");
    assert_eq!(end.status, "failed");

    let [_, _, fallback] = grew(before, replica_reads(&app).await);
    println!("replica down test: {fallback} pages read from the primary alone");
    assert!(fallback >= 1, "reads fell back to the primary");
    drop(stopped);
    wait_for(&read_url, "the replica to answer again", |url| async move {
        try_query_text(&url, "SELECT 1::text").await.is_ok()
    })
    .await;
}
