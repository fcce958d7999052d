//! The JSON array: no `Accept`, `*/*`, `application/json` or `follow=false`; every
//! message after the cursor, or at most `limit`, paged by `after`. Read from the store as
//! a follow catches up (adr/0022): a short history in pages, a long one as one stream of
//! the store's while a stream slot is free; so it is tested here across many small pages,
//! and as a stream.

use serde_json::Value;

use agent_stream_testkit::app::{Backend, TestApp};
use agent_stream_testkit::fixtures::{messages, process_id, seqs};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    a_snapshot_pages_by_limit_and_after,
    accept_json_asks_for_a_snapshot,
    a_snapshot_from_a_cursor_has_exactly_what_follows_it,
);

async fn a_snapshot_pages_by_limit_and_after(app: TestApp) {
    let process = process_id();
    app.append_batch(&process, &messages("m", 25)).await;
    let mut after = "0-0".to_owned();
    let mut pages = Vec::new();
    loop {
        let response = app
            .snapshot(&process, &format!("&limit=10&after={after}"))
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let page: Vec<Value> = response.json().await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap()["stream_id"]
            .as_str()
            .unwrap()
            .to_owned();
        pages.push(seqs(&page));
    }
    assert_eq!(
        pages,
        vec![
            (1..=10).collect::<Vec<_>>(),
            (11..=20).collect(),
            (21..=25).collect()
        ]
    );
}

async fn accept_json_asks_for_a_snapshot(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 3)).await;
    let response = app
        .http
        .get(app.url(&format!("/processes/{process}/messages")))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page: Vec<Value> = response.json().await.unwrap();
    assert_eq!(
        seqs(&page),
        vec![1, 2, 3],
        "a snapshot of a running process returns without waiting"
    );
}

async fn a_snapshot_from_a_cursor_has_exactly_what_follows_it(app: TestApp) {
    let process = process_id();
    app.append_batch(&process, &messages("m", 5)).await;
    for (cursor, expected) in [
        ("0", vec![1, 2, 3, 4, 5]),
        ("2", vec![3, 4, 5]),
        ("2-0", vec![3, 4, 5]),
        ("5-0", vec![]),
        ("9", vec![]),
    ] {
        let page: Vec<Value> = app
            .snapshot(&process, &format!("&after={cursor}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(seqs(&page), expected, "after={cursor}");
    }
}

/// Every message after the cursor, each once and in order, in one valid JSON array,
/// however many store pages (of messages, or of bytes) it takes to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_without_limit_has_every_message_after_the_cursor_across_store_pages() {
    for backend in Backend::ALL {
        let app = TestApp::spawn_with(backend, |config| {
            config.follow.catch_up_page = 3;
            // About two of these messages: some pages are cut by bytes, not count.
            config.follow.catch_up_page_bytes = 500;
        })
        .await;
        let process = process_id();
        let n = 47u64;
        app.append_batch(&process, &messages("m", n as usize)).await;
        for (query, expected) in [
            ("", (1..=n).collect::<Vec<_>>()),
            ("&after=7-0", (8..=n).collect()),
            ("&after=46", vec![47]),
            ("&after=47-0", vec![]),
            ("&after=90", vec![]),
            ("&limit=1", vec![1]),
            ("&limit=4&after=2", (3..=6).collect()),
            ("&limit=10000", (1..=n).collect()),
        ] {
            let response = app.snapshot(&process, query).await;
            assert_eq!(response.status(), 200, "{query} on {backend:?}");
            assert_eq!(response.headers()["content-type"], "application/json");
            let page: Vec<Value> = serde_json::from_slice(&response.bytes().await.unwrap())
                .unwrap_or_else(|e| panic!("{query} on {backend:?}: not a JSON array: {e}"));
            assert_eq!(seqs(&page), expected, "{query} on {backend:?}");
        }
        // The UI's poller sends no Accept of its own (so `*/*`) and no query.
        let page: Vec<Value> = app
            .http
            .get(app.url(&format!("/processes/{process}/messages")))
            .header("accept", "*/*")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seqs(&page), (1..=n).collect::<Vec<_>>(), "{backend:?}");
        assert_eq!(page[46]["id"], "m-47");
    }
}

/// Snapshots of a history of several hundred pages, read as a follow catches up
/// (adr/0022): as one stream of the store's while a stream slot is free, else in pages.
mod streamed {
    use std::time::Duration;

    use serde_json::Value;
    use tokio::io::AsyncReadExt;

    use agent_stream_testkit::app::{Backend, TestApp};
    use agent_stream_testkit::fixtures::{kib_messages, process_id, seqs};
    use agent_stream_testkit::on_every_backend;

    on_every_backend!(
        spawn = super::spawn_streaming;
        a_long_snapshot_is_one_stream_and_has_exactly_the_messages_asked_for_in_order,
        a_snapshot_past_the_stream_cap_is_read_in_pages_and_is_as_complete,
    );

    /// First pages of ten messages, pages and batches of about 4 KiB, and one stream
    /// at a time, held for 30 s by a reader who takes nothing: a few hundred messages
    /// make a long history.
    async fn spawn_streaming(backend: Backend) -> TestApp {
        TestApp::spawn_with(backend, |config| {
            config.follow.catch_up_page = 10;
            config.follow.catch_up_page_bytes = 4096;
            config.follow.streams = 1;
            config.follow.stream_stall = Duration::from_secs(30);
            config.follow.stream_time = Duration::from_secs(60);
            config.limits.write_timeout = Duration::from_secs(30);
            config.limits.tcp_unsent_bytes = 16 * 1024;
        })
        .await
    }

    /// A finished process with `count` messages of about 1 KiB; what was sent.
    async fn long_history(app: &TestApp, count: usize) -> (String, Vec<Value>) {
        let process = process_id();
        let sent = kib_messages("old", count);
        for chunk in sent.chunks(250) {
            app.append_batch(&process, chunk).await;
        }
        assert_eq!(app.finish(&process, "succeeded").await.status(), 200);
        (process, sent)
    }

    /// The catch-up streams that ended, on the app's `/metrics`.
    async fn streams(app: &TestApp) -> [u64; 1] {
        app.counters("agent_stream_catch_up_streams_total", ["ended"])
            .await
    }

    /// The snapshot `query` (and `Last-Event-ID`, if any) answers: one valid JSON array.
    async fn array(
        app: &TestApp,
        process: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Vec<Value> {
        let mut request = app.http.get(app.url(&format!(
            "/processes/{process}/messages?follow=false{query}"
        )));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("GET snapshot");
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.bytes().await.expect("the whole body");
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{query}: not a JSON array: {e}"))
    }

    /// Each snapshot holds exactly the messages sent in `seqs`' range, as sent.
    fn assert_exact(
        got: &[Value],
        sent: &[Value],
        expected: std::ops::RangeInclusive<u64>,
        what: &str,
    ) {
        assert_eq!(seqs(got), expected.clone().collect::<Vec<_>>(), "{what}");
        for (message, seq) in got.iter().zip(expected) {
            let original = &sent[seq as usize - 1];
            assert_eq!(message["id"], original["id"], "{what}");
            assert_eq!(message["payload"], original["payload"], "{what}");
        }
    }

    async fn a_long_snapshot_is_one_stream_and_has_exactly_the_messages_asked_for_in_order(
        app: TestApp,
    ) {
        let (process, sent) = long_history(&app, 600).await;
        let [ended] = streams(&app).await;

        let cases: [(&str, Option<&str>, std::ops::RangeInclusive<u64>); 5] = [
            ("", None, 1..=600),
            ("&after=250-0", None, 251..=600),
            ("", Some("250-0"), 251..=600),
            ("&limit=300", None, 1..=300),
            ("&after=100&limit=350", None, 101..=450),
        ];
        for (query, last_event_id, expected) in &cases {
            let got = array(&app, &process, query, *last_event_id).await;
            assert_exact(
                &got,
                &sent,
                expected.clone(),
                &format!("{query} {last_event_id:?}"),
            );
        }

        // The counter is the test process's, shared with the tests running beside this one.
        let [ended_now] = streams(&app).await;
        assert!(
            ended_now >= ended + cases.len() as u64,
            "each snapshot was one stream, to the last message it asked for"
        );
    }

    async fn a_snapshot_past_the_stream_cap_is_read_in_pages_and_is_as_complete(app: TestApp) {
        let (process, sent) = long_history(&app, 1000).await;

        // A follower with a small receive buffer that takes a little and then nothing:
        // its catch-up holds the one stream slot (for the stall limit, 30 s).
        let mut slow = app.slow_follow(&process).await;
        let mut first = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut first))
            .await
            .expect("the follow's first bytes in time")
            .expect("read");
        assert!(read > 0, "the follow answered");

        // Well within the stall limit: a snapshot that waited for the stream slot instead
        // of reading pages would not be done in time.
        for (query, expected) in [("", 1..=1000), ("&after=400&limit=500", 401..=900)] {
            let got =
                tokio::time::timeout(Duration::from_secs(10), array(&app, &process, query, None))
                    .await
                    .unwrap_or_else(|_| panic!("{query}: the snapshot did not read pages"));
            assert_exact(&got, &sent, expected, query);
        }
        drop(slow);
    }
}
