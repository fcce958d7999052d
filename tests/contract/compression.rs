//! Compression by `Accept-Encoding`: snapshots and follows in gzip, brotli or zstd, each
//! live event and heartbeat flushed at once, and small or metric answers left alone.

use std::time::Duration;

use reqwest::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, VARY};

use agent_stream_testkit::app::{Backend, Format, Item, TestApp};
use agent_stream_testkit::fixtures::{messages, process_id, session};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    snapshots_and_follows_are_compressed_with_the_codec_the_client_asks_for,
    a_compressed_follow_delivers_each_live_message_before_the_next_is_sent,
    the_fixtures_catch_up_and_snapshot_take_at_most_30_percent_of_their_bytes_compressed,
    metrics_and_tiny_answers_go_uncompressed,
);
mod one_compressed_follow {
    agent_stream_testkit::on_every_backend!(
        spawn = super::spawn_compressing_one_follow;
        past_the_budget_of_compressed_follows_a_follow_goes_uncompressed_and_whole,
    );
    use super::*;
}
mod quick_heartbeats {
    agent_stream_testkit::on_every_backend!(
        spawn = super::spawn_with_quick_heartbeats;
        a_compressed_follow_passes_each_heartbeat_on_at_once,
    );
    use super::*;
}

/// The codecs the server offers, by their `Accept-Encoding` token.
const CODECS: [&str; 3] = ["gzip", "br", "zstd"];
/// How long a live message may take to come through a compressed follow here.
const PROMPTLY: Duration = Duration::from_secs(1);
/// The issue's target: compressed catch-up bytes against identity ones.
const MOST_COMPRESSED_SHARE: f64 = 0.30;

fn ids(messages: &[serde_json::Value]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .map(|message| message["id"].clone())
        .collect()
}

/// A client that sends `Accept-Encoding` as told and hands back the bytes as sent.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .build()
        .expect("a client")
}

/// A client that asks for `codec` alone and decodes it, as a browser does.
fn decoding_client(codec: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .gzip(codec == "gzip")
        .brotli(codec == "br")
        .zstd(codec == "zstd")
        .build()
        .expect("a client")
}

fn accept_of(format: Format) -> &'static str {
    match format {
        Format::Sse => "text/event-stream",
        Format::Ndjson => "application/x-ndjson",
    }
}

/// The bytes of a read as they cross the wire, with `encoding` asked for.
async fn wire_bytes(
    app: &TestApp,
    path: &str,
    accept: &str,
    encoding: &str,
) -> (usize, Option<String>) {
    let response = raw_client()
        .get(app.url(path))
        .header(ACCEPT, accept)
        .header(ACCEPT_ENCODING, encoding)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200, "{path} with {encoding}");
    let encoding = response
        .headers()
        .get(CONTENT_ENCODING)
        .map(|value| value.to_str().expect("text").to_owned());
    let bytes = response.bytes().await.expect("the whole body");
    (bytes.len(), encoding)
}

async fn snapshots_and_follows_are_compressed_with_the_codec_the_client_asks_for(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 5)).await;
    for codec in CODECS {
        for accept in [
            "application/json",
            "text/event-stream",
            "application/x-ndjson",
        ] {
            let response = raw_client()
                .get(app.url(&format!("/processes/{process}/messages")))
                .header(ACCEPT, accept)
                .header(ACCEPT_ENCODING, codec)
                .timeout(Duration::from_secs(20))
                .send()
                .await
                .expect("GET");
            assert_eq!(response.status(), 200);
            assert_eq!(
                response
                    .headers()
                    .get(CONTENT_ENCODING)
                    .map(|v| v.as_bytes()),
                Some(codec.as_bytes()),
                "{accept} in {codec}"
            );
            let vary = response
                .headers()
                .get_all(VARY)
                .iter()
                .map(|v| v.to_str().unwrap_or_default().to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(", ");
            assert!(
                vary.contains("accept-encoding"),
                "{accept}: Vary is {vary:?}"
            );
        }
        // And decoded, the snapshot is the messages.
        let snapshot: Vec<serde_json::Value> = decoding_client(codec)
            .get(app.url(&format!("/processes/{process}/messages")))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("a JSON array once decoded");
        assert_eq!(ids(&snapshot), ids(&messages("m", 5)), "{codec}");
    }
}

async fn a_compressed_follow_delivers_each_live_message_before_the_next_is_sent(app: TestApp) {
    for codec in CODECS {
        for format in [Format::Sse, Format::Ndjson] {
            let process = process_id();
            let mut follow = app
                .follow_request(
                    format,
                    decoding_client(codec).get(app.url(&format!("/processes/{process}/messages"))),
                )
                .await;
            for message in messages("live", 3) {
                app.append(&process, std::slice::from_ref(&message)).await;
                let delivered = loop {
                    match follow.next_within(PROMPTLY).await {
                        Some(Some(Item::Heartbeat)) => continue,
                        Some(Some(Item::Message(delivered))) => {
                            break Some(delivered["id"].clone())
                        }
                        _ => break None,
                    }
                };
                assert_eq!(
                    delivered,
                    Some(message["id"].clone()),
                    "{format:?} in {codec}: the message did not come through before the next one"
                );
            }
        }
    }
}

async fn the_fixtures_catch_up_and_snapshot_take_at_most_30_percent_of_their_bytes_compressed(
    app: TestApp,
) {
    let process = process_id();
    app.append_batch(&process, &session()).await;
    app.finish(&process, "succeeded").await;
    let path = format!("/processes/{process}/messages");
    for (read, accept) in [
        ("snapshot", "application/json"),
        ("SSE catch-up", accept_of(Format::Sse)),
        ("NDJSON catch-up", accept_of(Format::Ndjson)),
    ] {
        let (identity, encoding) = wire_bytes(&app, &path, accept, "identity").await;
        assert_eq!(encoding, None);
        let mut figures = vec![format!("identity {identity}")];
        for codec in CODECS {
            let (compressed, encoding) = wire_bytes(&app, &path, accept, codec).await;
            assert_eq!(encoding.as_deref(), Some(codec));
            let share = compressed as f64 / identity as f64;
            assert!(
                share <= MOST_COMPRESSED_SHARE,
                "{read} in {codec}: {compressed} of {identity} bytes ({share:.2})"
            );
            figures.push(format!("{codec} {compressed} ({:.1}%)", share * 100.0));
        }
        // The figures of docs/contract.md (`-- --nocapture` shows them).
        println!("{:?} fixture {read}: {}", app.backend, figures.join(", "));
    }
}

async fn metrics_and_tiny_answers_go_uncompressed(app: TestApp) {
    let process = process_id();
    for (path, accept) in [
        ("/metrics".to_owned(), "*/*"),
        // `[]`: two bytes.
        (format!("/processes/{process}/messages"), "application/json"),
    ] {
        let (_, encoding) = wire_bytes(&app, &path, accept, "gzip, br, zstd").await;
        assert_eq!(encoding, None, "{path}");
    }
}

async fn spawn_compressing_one_follow(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |config| config.limits.max_compressed_follows = 1).await
}

/// A follow of `process` asking for `codec`, as it comes (undecoded), and the encoding
/// it is answered in.
async fn follow_encoding(
    app: &TestApp,
    process: &str,
    codec: &str,
) -> (Option<String>, reqwest::Response) {
    let response = raw_client()
        .get(app.url(&format!("/processes/{process}/messages")))
        .header(ACCEPT, accept_of(Format::Ndjson))
        .header(ACCEPT_ENCODING, codec)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let encoding = response
        .headers()
        .get(CONTENT_ENCODING)
        .map(|value| value.to_str().expect("text").to_owned());
    (encoding, response)
}

async fn past_the_budget_of_compressed_follows_a_follow_goes_uncompressed_and_whole(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 3)).await;
    app.finish(&process, "succeeded").await;
    let holder = raw_client()
        .get(app.url(&format!("/processes/{}/messages", process_id())))
        .header(ACCEPT, accept_of(Format::Sse))
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("GET");
    assert_eq!(
        holder.headers().get(CONTENT_ENCODING).map(|v| v.as_bytes()),
        Some(&b"gzip"[..]),
        "the first follow takes the one compressed slot"
    );

    let (encoding, response) = follow_encoding(&app, &process, "zstd").await;
    assert_eq!(encoding, None, "a second follow goes as it is");
    let vary = response.headers().get_all(VARY).iter().count();
    assert!(vary > 0, "Vary still names what the answer depends on");
    let body = response.text().await.expect("the whole follow");
    let delivered: Vec<serde_json::Value> = body
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).expect("an NDJSON line"))
        .filter(|line: &serde_json::Value| line.get("event").is_none())
        .collect();
    assert_eq!(ids(&delivered), ids(&messages("m", 3)));

    // The slot comes back when the first follow goes.
    drop(holder);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (encoding, _) = follow_encoding(&app, &process, "zstd").await;
        if encoding.as_deref() == Some("zstd") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot of a closed follow was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn spawn_with_quick_heartbeats(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |config| {
        config.follow.heartbeat = Duration::from_millis(200);
    })
    .await
}

async fn a_compressed_follow_passes_each_heartbeat_on_at_once(app: TestApp) {
    for codec in CODECS {
        for format in [Format::Sse, Format::Ndjson] {
            let process = process_id();
            let mut follow = app
                .follow_request(
                    format,
                    decoding_client(codec).get(app.url(&format!("/processes/{process}/messages"))),
                )
                .await;
            for _ in 0..2 {
                assert_eq!(
                    follow.next_within(PROMPTLY).await,
                    Some(Some(Item::Heartbeat)),
                    "{format:?} in {codec}"
                );
            }
        }
    }
}
