//! Catch-up streams (adr/0019): a follow of a long history reads it as one stream of the
//! store's, with memory bounded; a reader too slow for its stream goes on with pages
//! after the last message it took, and still gets every message once, in order.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;

use agent_stream_testkit::app::{Backend, Format, TestApp};
use agent_stream_testkit::fixtures::{kib_messages, process_id, seqs};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    spawn = super::spawn_streaming;
    a_long_history_is_streamed_and_every_message_arrives_once_in_order,
    a_reader_too_slow_for_its_stream_goes_on_with_pages_and_gets_every_message_once,
);

/// First pages of ten messages, batches of about 4 KiB, and a stream that gives up on a
/// reader who took nothing for 100 ms: a few hundred messages make a long history.
async fn spawn_streaming(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |config| {
        config.follow.catch_up_page = 10;
        config.follow.catch_up_page_bytes = 4096;
        config.follow.stream_stall = Duration::from_millis(100);
        // The slow reader below is slow, not gone.
        config.limits.write_timeout = Duration::from_secs(30);
        config.limits.tcp_unsent_bytes = 16 * 1024;
    })
    .await
}

/// The catch-up stream counter of the app's `/metrics`, by outcome (ended, stopped).
async fn streams(app: &TestApp) -> [u64; 2] {
    app.counters("agent_stream_catch_up_streams_total", ["ended", "stopped"])
        .await
}

async fn a_long_history_is_streamed_and_every_message_arrives_once_in_order(app: TestApp) {
    let process = process_id();
    for chunk in kib_messages("old", 600).chunks(200) {
        app.append_batch(&process, chunk).await;
    }
    assert_eq!(app.finish(&process, "succeeded").await.status(), 200);
    let [ended, _] = streams(&app).await;

    for format in [Format::Ndjson, Format::Sse] {
        let (followed, end) = app.follow_to_end(&process, format, None).await;
        assert_eq!(seqs(&followed), (1..=600).collect::<Vec<_>>(), "{format:?}");
        assert_eq!(end.status, "succeeded");
    }
    let (from_the_middle, _) = app
        .follow_to_end(&process, Format::Ndjson, Some("250"))
        .await;
    assert_eq!(seqs(&from_the_middle), (251..=600).collect::<Vec<_>>());

    let [ended_now, _] = streams(&app).await;
    assert!(
        ended_now >= ended + 3,
        "each of the three catch-ups was one stream, to its end"
    );
}

async fn a_reader_too_slow_for_its_stream_goes_on_with_pages_and_gets_every_message_once(
    app: TestApp,
) {
    let process = process_id();
    for chunk in kib_messages("old", 1000).chunks(250) {
        app.append_batch(&process, chunk).await;
    }
    assert_eq!(app.finish(&process, "succeeded").await.status(), 200);
    let [_, stopped] = streams(&app).await;

    // A reader with a small receive buffer that takes nothing for a while: the server's
    // writes block, the stream's batches wait past its stall limit, and it stops.
    let mut slow = app.slow_follow(&process).await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut received))
        .await
        .expect("read to the end in time")
        .expect("read");
    let text = String::from_utf8_lossy(&received);
    let followed: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|value| value.get("stream_id").is_some() && value.get("event").is_none())
        .collect();
    assert_eq!(
        seqs(&followed),
        (1..=1000).collect::<Vec<_>>(),
        "every message once, in order, after the fallback to pages"
    );
    assert!(text.contains("\"event\":\"end\""), "then the end");
    // Counted once the follower saw its stream end, when the reader took up again.
    let [_, stopped_now] = streams(&app).await;
    assert!(
        stopped_now > stopped,
        "the stream stopped for the slow reader"
    );
}
