//! Redis is never the truth (issue 10, F3): an entry in a process's stream is delivered
//! only when it carries the epoch of the follower's own database. Two deployments on
//! one Redis without a prefix, or a database dropped and recreated while Redis keeps
//! its old stream, cost latency, never a wrong or a lost message.

use serde_json::Value;

use agent_stream_testkit::app::{fresh_database, recreate_database, Format, TestApp};
use agent_stream_testkit::fixtures::{messages, process_id};

fn ids(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["id"].as_str().expect("an id"))
        .collect()
}

fn expected(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_on_one_redis_without_a_prefix_each_deliver_only_their_own_messages() {
    let a = TestApp::spawn_real(fresh_database().await, String::new(), |_| {}).await;
    let b = TestApp::spawn_real(fresh_database().await, String::new(), |_| {}).await;
    let process = process_id();
    a.put_process(&process).await;
    b.put_process(&process).await;
    let follow_a = a.follow(&process, Format::Ndjson, None).await;
    let follow_b = b.follow(&process, Format::Sse, None).await;
    // A writes first, so every seq B takes is already in the shared stream (A's).
    for i in 1..=4 {
        a.append(&process, &messages("a", 4)[i - 1..i]).await;
        b.append(&process, &messages("b", 4)[i - 1..i]).await;
    }
    a.append(&process, &messages("a", 6)[4..]).await;
    a.finish(&process, "succeeded").await;
    b.finish(&process, "succeeded").await;

    let (got_a, end_a) = follow_a.until_end().await;
    let (got_b, end_b) = follow_b.until_end().await;
    assert_eq!(ids(&got_a), expected("a", 6), "A's follower");
    assert_eq!(ids(&got_b), expected("b", 4), "B's follower");
    assert_eq!(
        (end_a.stream_id.as_str(), end_b.stream_id.as_str()),
        ("6-1", "4-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_database_never_delivers_the_old_stream_redis_kept() {
    let database = fresh_database().await;
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let process = process_id();
    let before = TestApp::spawn_real(database.clone(), prefix.clone(), |_| {}).await;
    before.append(&process, &messages("old", 5)).await;
    // The process stays running: its stream is still in Redis.
    drop(before);
    recreate_database(&database).await;

    let mut after = TestApp::spawn_real(database, prefix, |_| {}).await;
    let key = after.redis().key(&process);
    let kept: usize = after.redis().run(redis::cmd("XLEN").arg(&key)).await;
    assert_eq!(kept, 5, "Redis kept the old stream");
    after.put_process(&process).await;
    let follow = after.follow(&process, Format::Ndjson, None).await;
    let resumed = after.follow(&process, Format::Sse, Some("2")).await;
    for i in 1..=7 {
        after.append(&process, &messages("new", 7)[i - 1..i]).await;
    }
    after.finish(&process, "succeeded").await;
    let (got, end) = follow.until_end().await;
    assert_eq!(ids(&got), expected("new", 7));
    assert_eq!(end.stream_id, "7-1");
    let (got, _) = resumed.until_end().await;
    assert_eq!(ids(&got), expected("new", 7)[2..].to_vec());
}
