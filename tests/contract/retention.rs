//! What a process's Redis stream may hold (issue 10, F7): large messages go through
//! Redis as their seq alone, so a stream's size is bounded in bytes as well as entries,
//! and a running process's stream expires when no append refreshes it.

use serde_json::json;

use agent_stream_testkit::app::{Backend, Format, TestApp};
use agent_stream_testkit::fixtures::{process_id, seqs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_messages_of_900_kib_keep_the_stream_under_8_mib_and_all_reach_followers() {
    let mut app = TestApp::spawn(Backend::Real).await;
    let process = process_id();
    app.put_process(&process).await;
    let follow = app.follow(&process, Format::Ndjson, None).await;
    let big = "x".repeat(900 * 1024);
    let sent: Vec<_> = (1..=20)
        .map(|i| json!({"id": format!("big-{i}"), "type": "ToolResult", "payload": {"text": big}}))
        .collect();
    app.append(&process, &sent).await;

    let key = app.redis().key(&process);
    let bytes: u64 = app
        .redis()
        .run(redis::cmd("MEMORY").arg("USAGE").arg(&key))
        .await;
    assert!(
        bytes < 8 << 20,
        "the stream of 20 × 900 KiB messages takes {bytes} bytes of Redis"
    );
    let entries: u64 = app.redis().run(redis::cmd("XLEN").arg(&key)).await;
    assert_eq!(entries, 20, "every message still has its entry");

    app.finish(&process, "succeeded").await;
    let (got, _) = follow.until_end().await;
    assert_eq!(seqs(&got), (1..=20).collect::<Vec<_>>());
    assert!(got
        .iter()
        .all(|m| m["payload"]["text"].as_str() == Some(big.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_append_sets_the_running_streams_expiry() {
    let mut app = TestApp::spawn(Backend::Real).await;
    let process = process_id();
    app.append(&process, &agent_stream_testkit::fixtures::messages("m", 1))
        .await;
    let key = app.redis().key(&process);
    let _: i64 = app.redis().run(redis::cmd("PERSIST").arg(&key)).await;
    app.append(&process, &agent_stream_testkit::fixtures::messages("n", 1))
        .await;
    let ttl: i64 = app.redis().run(redis::cmd("TTL").arg(&key)).await;
    // The test servers run with a running-stream TTL of an hour.
    assert!(
        (3000..=3600).contains(&ttl),
        "a running process's stream has no expiry refreshed by appends (TTL {ttl})"
    );
}
