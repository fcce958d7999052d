//! Concurrent writers to one process get distinct, gap-free seqs in commit order.

use std::time::Instant;

use serde_json::Value;

use agent_stream_testkit::app::{Format, TestApp};
use agent_stream_testkit::fixtures::{messages, process_id, seqs};
use agent_stream_testkit::on_every_backend;

on_every_backend!(concurrent_writers_get_distinct_gap_free_seqs_in_commit_order);

const WRITERS: usize = 8;
const APPENDS: usize = 25;

/// One append as a writer saw it: when it was sent, when it was answered, its seq.
struct Observed {
    sent: Instant,
    answered: Instant,
    seq: u64,
}

async fn concurrent_writers_get_distinct_gap_free_seqs_in_commit_order(app: TestApp) {
    let process = process_id();
    app.put_process(&process).await;
    let follower = app.follow(&process, Format::Ndjson, None).await;
    let follower = tokio::spawn(async move { follower.until_end().await });

    let writers = (0..WRITERS).map(|w| {
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/processes/{process}/messages")),
        );
        tokio::spawn(async move {
            let mut observed = Vec::new();
            for message in messages(&format!("w{w}"), APPENDS) {
                let sent = Instant::now();
                let response = http
                    .post(&url)
                    .body(message.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                let body: Value = response.json().await.unwrap();
                let seq = body["stream_id"]
                    .as_str()
                    .unwrap()
                    .strip_suffix("-0")
                    .unwrap()
                    .parse()
                    .unwrap();
                observed.push(Observed {
                    sent,
                    answered: Instant::now(),
                    seq,
                });
            }
            observed
        })
    });
    let observed: Vec<Observed> = futures::future::join_all(writers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();

    let mut all: Vec<u64> = observed.iter().map(|o| o.seq).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=(WRITERS * APPENDS) as u64).collect::<Vec<_>>(),
        "distinct and gap-free"
    );
    for a in &observed {
        for b in &observed {
            if a.answered < b.sent {
                assert!(
                    a.seq < b.seq,
                    "an append answered before another was sent has the lower seq ({} vs {})",
                    a.seq,
                    b.seq
                );
            }
        }
    }

    app.finish(&process, "succeeded").await;
    let (followed, _) = follower.await.unwrap();
    assert_eq!(
        seqs(&followed),
        (1..=(WRITERS * APPENDS) as u64).collect::<Vec<_>>(),
        "a live follower saw every seq once, in order"
    );
    for w in 0..WRITERS {
        let own: Vec<&str> = followed
            .iter()
            .filter_map(|m| m["id"].as_str())
            .filter(|id| id.starts_with(&format!("w{w}-")))
            .collect();
        let expected: Vec<String> = (1..=APPENDS).map(|i| format!("w{w}-{i}")).collect();
        assert_eq!(own, expected, "writer {w}'s messages keep its order");
    }
}
