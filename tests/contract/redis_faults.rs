//! The Redis contract, and Redis losing, trimming or refusing entries: it costs
//! latency, never a message. Real backends only, on one Redis server and on a Redis
//! Cluster (keys with their bucket's hash tag): these tests reach into Redis.

use std::time::Duration;

use serde_json::Value;

use agent_stream_testkit::app::{Backend, Format, TestApp};
use agent_stream_testkit::fixtures::{messages, process_id, seqs};

/// A stream entry as XRANGE returns it: its ID and its field-value pairs.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// Runs each test on the single Redis server (`mod real`) and on the Redis Cluster
/// (`mod cluster`).
macro_rules! on_redis_and_the_cluster {
    ($($name:ident),* $(,)?) => {
        agent_stream_testkit::on_every_backend!(
            @backend real, Real, agent_stream_testkit::app::TestApp::spawn; $($name),*
        );
        agent_stream_testkit::on_the_cluster!($($name),*);
    };
}

on_redis_and_the_cluster!(
    each_message_is_an_entry_with_its_seq_as_id_and_the_end_marker_follows,
    every_xadd_trims_the_stream_to_about_maxlen,
    resume_is_exact_after_the_stream_was_trimmed_to_nothing,
    messages_still_arrive_when_redis_refuses_every_xadd,
    a_deleted_stream_and_replayed_old_entries_cost_no_message_and_no_duplicate,
);

async fn each_message_is_an_entry_with_its_seq_as_id_and_the_end_marker_follows(mut app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 3)).await;
    app.finish(&process, "succeeded").await;
    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();

    let key = app.redis().key(&process);
    assert!(
        key.starts_with("test-") && key.ends_with(&format!("process:{process}:stream")),
        "{key}"
    );
    if app.backend == Backend::Cluster {
        assert!(
            key.contains("{b") && key.contains(&format!("}}process:{process}:stream")),
            "in a cluster the key carries its bucket's hash tag: {key}"
        );
    }
    let entries: Vec<Entry> = app
        .redis()
        .run(redis::cmd("XRANGE").arg(&key).arg("-").arg("+"))
        .await;
    let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["1-0", "2-0", "3-0", "3-1"]);
    for (i, (_, fields)) in entries[..3].iter().enumerate() {
        assert_eq!(fields[0].0, "message");
        let message: Value = serde_json::from_slice(&fields[0].1).unwrap();
        assert_eq!(message, stored[i]);
    }
    assert_eq!(entries[3].1[0].0, "end");
    assert_eq!(
        serde_json::from_slice::<Value>(&entries[3].1[0].1).unwrap(),
        serde_json::json!({ "status": "succeeded" })
    );

    let ttl: i64 = app.redis().run(redis::cmd("TTL").arg(&key)).await;
    assert!(
        (3500..=3600).contains(&ttl),
        "a finished stream expires after an hour, TTL {ttl}"
    );
}

async fn every_xadd_trims_the_stream_to_about_maxlen(mut app: TestApp) {
    let process = process_id();
    for batch in 0..25 {
        app.append_batch(&process, &messages(&format!("b{batch}"), 100))
            .await;
    }
    let key = app.redis().key(&process);
    let length: u64 = app.redis().run(redis::cmd("XLEN").arg(&key)).await;
    assert!(
        (1000..1200).contains(&length),
        "MAXLEN ~ 1000 keeps about 1000 entries, not {length}"
    );
    let (all, _) = {
        app.finish(&process, "succeeded").await;
        app.follow_to_end(&process, Format::Ndjson, Some("0")).await
    };
    assert_eq!(
        seqs(&all),
        (1..=2500).collect::<Vec<_>>(),
        "trimmed entries still come from PostgreSQL"
    );
}

async fn resume_is_exact_after_the_stream_was_trimmed_to_nothing(mut app: TestApp) {
    let process = process_id();
    app.append_batch(&process, &messages("m", 20)).await;
    let key = app.redis().key(&process);
    let _: i64 = app
        .redis()
        .run(redis::cmd("XTRIM").arg(&key).arg("MAXLEN").arg(0))
        .await;
    let mut follow = app.follow(&process, Format::Sse, Some("7-0")).await;
    assert_eq!(
        seqs(&follow.take_messages(13).await),
        (8..=20).collect::<Vec<_>>()
    );
    app.append(&process, &messages("after-trim", 2)).await;
    assert_eq!(seqs(&follow.take_messages(2).await), vec![21, 22]);
    let _: i64 = app
        .redis()
        .run(redis::cmd("XTRIM").arg(&key).arg("MAXLEN").arg(0))
        .await;
    app.finish(&process, "succeeded").await;
    let (rest, end) = follow.until_end().await;
    assert!(rest.is_empty());
    assert_eq!(end.stream_id, "22-1");
}

async fn messages_still_arrive_when_redis_refuses_every_xadd(mut app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("before", 2)).await;
    // An entry with a higher ID than any seq: Redis refuses every XADD of this process.
    let key = app.redis().key(&process);
    let _: String = app
        .redis()
        .run(
            redis::cmd("XADD")
                .arg(&key)
                .arg("9000000000-0")
                .arg("other")
                .arg("x"),
        )
        .await;
    let mut follow = app.follow(&process, Format::Ndjson, Some("1")).await;
    assert_eq!(seqs(&follow.take_messages(1).await), vec![2]);
    let ids = app.append(&process, &messages("refused", 3)).await;
    assert_eq!(
        ids,
        ["3-0", "4-0", "5-0"],
        "a refused XADD never fails an append"
    );
    assert_eq!(
        seqs(&follow.take_messages(3).await),
        vec![3, 4, 5],
        "the idle poll finds them in PostgreSQL"
    );
    app.finish(&process, "succeeded").await;
    let (rest, end) = follow.until_end().await;
    assert!(rest.is_empty());
    assert_eq!(end.stream_id, "5-1");
}

async fn a_deleted_stream_and_replayed_old_entries_cost_no_message_and_no_duplicate(
    mut app: TestApp,
) {
    let process = process_id();
    app.append(&process, &messages("m", 3)).await;
    let mut early = app.follow(&process, Format::Sse, None).await;
    assert_eq!(seqs(&early.take_messages(3).await), vec![1, 2, 3]);

    let key = app.redis().key(&process);
    let _: i64 = app.redis().run(redis::cmd("DEL").arg(&key)).await;
    // Replay old entries into the fresh key, as a restored backup or a confused writer
    // would: readers must drop them.
    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    for message in &stored {
        let id = message["stream_id"].as_str().unwrap().to_owned();
        let _: String = app
            .redis()
            .run(
                redis::cmd("XADD")
                    .arg(&key)
                    .arg(id)
                    .arg("message")
                    .arg(message.to_string()),
            )
            .await;
    }
    let mut late = app.follow(&process, Format::Ndjson, Some("1")).await;
    assert_eq!(seqs(&late.take_messages(2).await), vec![2, 3]);
    app.append(&process, &messages("after", 2)).await;
    assert_eq!(seqs(&early.take_messages(2).await), vec![4, 5]);
    assert_eq!(seqs(&late.take_messages(2).await), vec![4, 5]);
    app.finish(&process, "succeeded").await;
    for follow in [early, late] {
        let (rest, end) = follow.until_end().await;
        assert!(rest.is_empty(), "no duplicate after the replay: {rest:?}");
        assert_eq!(end.stream_id, "5-1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delivery_goes_through_redis_not_the_idle_poll() {
    live_delivery_through_redis(Backend::Real).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delivery_goes_through_the_cluster_not_the_idle_poll() {
    live_delivery_through_redis(Backend::Cluster).await
}

async fn live_delivery_through_redis(backend: Backend) {
    // With an idle poll of a minute, only the Redis feed can deliver in time.
    let app = TestApp::spawn_with(backend, |config| {
        config.follow.idle_poll = Duration::from_secs(60)
    })
    .await;
    let process = process_id();
    app.put_process(&process).await;
    let mut follows = Vec::new();
    for format in [Format::Sse, Format::Ndjson] {
        follows.push(app.follow(&process, format, None).await);
    }
    for i in 1..=5u64 {
        app.append(&process, &messages(&format!("live{i}"), 1))
            .await;
        for follow in &mut follows {
            let got = tokio::time::timeout(Duration::from_secs(1), follow.take_messages(1))
                .await
                .expect("delivered by Redis, well before the idle poll");
            assert_eq!(seqs(&got), vec![i]);
        }
    }
}
