//! The JSON snapshot: `follow=false` or `Accept: application/json`, paged by `after`.

use serde_json::Value;

use crate::on_every_backend;
use crate::support::{messages, process_id, seqs, TestApp};

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
