//! Limits and shutdown: every resource a client can take is bounded, with a clear error
//! past the bound, and a shutdown ends follows so their clients resume elsewhere.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use agent_stream_testkit::app::{Backend, Format, Item, TestApp};
use agent_stream_testkit::fixtures::{messages, process_id, seqs};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    an_array_over_the_batch_limit_is_a_413_and_stores_nothing,
    shutdown_ends_follows_and_sse_says_when_to_reconnect,
);

const BACKENDS: [Backend; 3] = Backend::ALL;

async fn an_array_over_the_batch_limit_is_a_413_and_stores_nothing(app: TestApp) {
    let process = process_id();
    let response = app
        .post_messages(&process, Value::from(messages("m", 1001)).to_string())
        .await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_messages");
    assert_eq!(app.get_process(&process).await.status(), 404);
    assert_eq!(
        app.append_batch(&process, &messages("m", 1000)).await.len(),
        1000
    );
}

async fn shutdown_ends_follows_and_sse_says_when_to_reconnect(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    let mut sse = app.follow(&process, Format::Sse, None).await;
    let mut ndjson = app.follow(&process, Format::Ndjson, None).await;
    assert_eq!(seqs(&sse.take_messages(2).await), vec![1, 2]);
    assert_eq!(seqs(&ndjson.take_messages(2).await), vec![1, 2]);
    app.shut_down();
    assert_eq!(
        sse.next().await,
        Some(Item::Retry(1000)),
        "the last SSE frame is a retry hint"
    );
    assert_eq!(
        sse.next().await,
        None,
        "then the response ends, without an end event"
    );
    assert_eq!(ndjson.next().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_past_the_instance_limit_are_a_503() {
    for backend in BACKENDS {
        let app = TestApp::spawn_with(backend, |config| config.limits.max_follows = 2).await;
        let process = process_id();
        app.put_process(&process).await;
        let first = app.follow(&process, Format::Sse, None).await;
        let _second = app.follow(&process, Format::Ndjson, None).await;
        let refused = app
            .http
            .get(app.url(&format!("/processes/{process}/messages/stream")))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 503, "{backend:?}");
        assert!(refused.headers().contains_key("retry-after"));
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_many_follows");
        assert_eq!(
            app.snapshot(&process, "").await.status(),
            200,
            "snapshots take no follow slot"
        );

        drop(first);
        // The slot is freed when the server notices the client left.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let retry = app
                .http
                .get(app.url(&format!("/processes/{process}/messages")))
                .send()
                .await
                .unwrap();
            if retry.status() == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the slot of a follow whose client left is never freed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_reads_pages_bounded_in_bytes_and_stays_exact() {
    for backend in BACKENDS {
        let app = TestApp::spawn_with(backend, |config| {
            config.follow.catch_up_page_bytes = 2048;
            config.follow.catch_up_page = 7;
        })
        .await;
        let process = process_id();
        let big: Vec<Value> = (1..=40)
            .map(|i| serde_json::json!({ "id": format!("b{i}"), "type": "T", "payload": { "text": "x".repeat(i * 40) } }))
            .collect();
        app.append_batch(&process, &big).await;
        app.finish(&process, "succeeded").await;
        for cursor in [0u64, 1, 13, 39, 40] {
            let (got, end) = app
                .follow_to_end(&process, Format::Ndjson, Some(&cursor.to_string()))
                .await;
            assert_eq!(
                seqs(&got),
                (cursor + 1..=40).collect::<Vec<_>>(),
                "{backend:?} from {cursor}"
            );
            assert_eq!(end.stream_id, "40-1");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_does_not_hold_back_the_others() {
    for backend in BACKENDS {
        let app = TestApp::spawn(backend).await;
        let process = process_id();
        app.put_process(&process).await;
        // A client that asks for a follow, then never reads a byte.
        let mut stalled = TcpStream::connect(app.base.trim_start_matches("http://"))
            .await
            .unwrap();
        let request = format!("GET /processes/{process}/messages HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n");
        stalled.write_all(request.as_bytes()).await.unwrap();

        let follow = app.follow(&process, Format::Ndjson, None).await;
        let reader = tokio::spawn(follow.until_end());
        let text = "y".repeat(16 * 1024);
        for batch in 0..40 {
            let batch: Vec<Value> = (0..10)
                .map(|i| serde_json::json!({ "id": format!("{batch}-{i}"), "type": "T", "payload": { "text": text } }))
                .collect();
            app.append_batch(&process, &batch).await;
        }
        app.finish(&process, "succeeded").await;
        let (got, _) = tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .expect("the live follower is not held back")
            .unwrap();
        assert_eq!(seqs(&got), (1..=400).collect::<Vec<_>>(), "{backend:?}");
        drop(stalled);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_headers_too_slowly_is_disconnected() {
    let app = TestApp::spawn_with(Backend::Memory, |config| {
        config.limits.header_read_timeout = Duration::from_millis(300)
    })
    .await;
    let mut slow = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection is still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let app = TestApp::spawn_with(Backend::Memory, |config| {
        config.limits.max_header_bytes = 8192
    })
    .await;
    let padded = |bytes: usize| {
        app.http
            .get(app.url("/healthz"))
            .header("x-padding", "z".repeat(bytes))
    };
    let response = padded(10_000).send().await.unwrap();
    assert_eq!(response.status(), 431);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "headers_too_large");
    let past_the_hard_limit = padded(20_000).send().await.unwrap();
    assert_eq!(
        past_the_hard_limit.status(),
        431,
        "past twice the limit the connection layer answers, bare"
    );
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_too_slowly_is_cut_off_by_the_request_timeout() {
    for backend in BACKENDS {
        let app = TestApp::spawn_with(backend, |config| {
            config.limits.request_timeout = Duration::from_millis(300)
        })
        .await;
        let process = process_id();
        let mut slow = TcpStream::connect(app.base.trim_start_matches("http://"))
            .await
            .unwrap();
        let head = format!("POST /processes/{process}/messages HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"type\":");
        slow.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut answer))
            .await
            .expect("answered in time")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("\"timeout\""), "{answer}");
        assert_eq!(
            app.get_process(&process).await.status(),
            404,
            "{backend:?}: nothing stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    for backend in BACKENDS {
        let app = TestApp::spawn_with(backend, |config| {
            config.limits.write_timeout = Duration::from_millis(500);
            config.limits.tcp_unsent_bytes = 16 * 1024;
        })
        .await;
        let process = process_id();
        app.put_process(&process).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let address = app.base.trim_start_matches("http://").parse().unwrap();
        let mut stalled = socket.connect(address).await.unwrap();
        let request = format!("GET /processes/{process}/messages HTTP/1.1\r\nHost: test\r\n\r\n");
        stalled.write_all(request.as_bytes()).await.unwrap();

        let text = "z".repeat(8 * 1024);
        for batch in 0..20 {
            let batch: Vec<Value> = (0..10)
                .map(|i| serde_json::json!({ "id": format!("{batch}-{i}"), "type": "T", "payload": { "text": text } }))
                .collect();
            app.append_batch(&process, &batch).await;
        }
        // Long enough for the server's writes to block, then to time out.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut received = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut received)).await;
        assert!(
            read.is_ok(),
            "{backend:?}: the connection of a client that stopped reading is never closed"
        );
        let text = String::from_utf8_lossy(&received);
        let delivered = text.matches("\"stream_id\":\"").count();
        assert!(
            delivered < 200,
            "{backend:?}: it was cut short, not served to the end ({delivered})"
        );
        assert!(!text.contains("\"event\":\"end\""));
    }
}
