//! The JSON array: no `Accept`, `*/*`, `application/json` or `follow=false`; every
//! message after the cursor, or at most `limit`, paged by `after`. Read from the store a
//! page at a time, so it is tested here across many small pages.

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
