//! Concurrent writers to one process get distinct, gap-free seqs in commit order, and
//! writers racing to store the same ids store each once.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::Value;

use agent_stream_testkit::app::{Format, TestApp};
use agent_stream_testkit::fixtures::{messages, process_id, seq_of, seqs};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    concurrent_writers_get_distinct_gap_free_seqs_in_commit_order,
    concurrent_batches_sharing_ids_store_each_id_once_with_gap_free_seqs,
);

const WRITERS: usize = 8;
const APPENDS: usize = 25;
/// Batches each of the racing writers sends.
const BATCHES: usize = 12;

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

/// Writers that send batches sharing ids with each other's (as retries racing their
/// original would): each id is stored once, every answer for an id names the seq it is
/// stored at, and the seqs are gap-free.
async fn concurrent_batches_sharing_ids_store_each_id_once_with_gap_free_seqs(app: TestApp) {
    let process = process_id();
    let shared = messages("shared", BATCHES + 1);
    let writers = (0..WRITERS).map(|w| {
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/processes/{process}/messages")),
        );
        let own = messages(&format!("w{w}"), BATCHES);
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut answered = Vec::new();
            for b in 0..BATCHES {
                // Two ids the other writers send too, around one of its own.
                let batch = vec![shared[b].clone(), own[b].clone(), shared[b + 1].clone()];
                let response = http
                    .post(&url)
                    .body(Value::from(batch).to_string())
                    .send()
                    .await
                    .unwrap();
                assert!(
                    [200, 201].contains(&response.status().as_u16()),
                    "{}",
                    response.status()
                );
                let body: Value = response.json().await.unwrap();
                for item in body.as_array().unwrap() {
                    answered.push((
                        item["id"].as_str().unwrap().to_owned(),
                        seq_of(item["stream_id"].as_str().unwrap()).unwrap(),
                    ));
                }
            }
            answered
        })
    });
    let answered: Vec<(String, u64)> = futures::future::join_all(writers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();

    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    let distinct = BATCHES + 1 + WRITERS * BATCHES;
    assert_eq!(
        seqs(&stored),
        (1..=distinct as u64).collect::<Vec<_>>(),
        "each id stored once, gap-free"
    );
    let stored_at: HashMap<&str, u64> = stored
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap(),
                seq_of(m["stream_id"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(stored_at.len(), distinct, "no id stored twice");
    for (id, seq) in &answered {
        assert_eq!(
            stored_at.get(id.as_str()),
            Some(seq),
            "the answer for {id} names where it is stored"
        );
    }
}
