//! Follows over plain HTTP/1.1, which the lean responder serves instead of hyper
//! (adr/0018), read off raw sockets: the same bytes as hyper's answer, keep-alive and
//! pipelining, the client's close, every limit of the connection, and hyper still
//! serving whatever is not a whole follow head (split heads, `HEAD`, HTTP/1.0).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_stream::auth::{Scope, Verifier};
use axum::http::HeaderValue;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use agent_stream_testkit::app::{Backend, TestApp, WAIT};
use agent_stream_testkit::fixtures::{messages, process_id};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    a_follow_served_lean_is_byte_for_byte_what_hyper_serves,
    pipelined_requests_after_a_follow_are_answered_in_order,
    a_connection_serves_more_requests_after_a_finished_process_s_follow,
    head_and_http_1_0_requests_are_still_answered,
    shutdown_ends_a_lean_follow_with_its_retry_hint_and_closes_the_connection,
);

const BACKENDS: [Backend; 3] = Backend::ALL;

/// Past the lean responder's head buffer (`http::lean::HEAD_BYTES`): such a head goes
/// to hyper.
const PADDING: usize = 9_000;

fn address(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(address(app)).await.expect("connect")
}

/// `GET path` with `headers` (each a `name: value` line), HTTP/1.1.
fn get(path: &str, headers: &[&str]) -> String {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

/// One response as it came off the socket.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// Its header lines as sent, `date` left out (it changes by the second).
    headers: Vec<String>,
    /// The body, its chunks put together.
    body: Vec<u8>,
    chunked: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|line| {
            let (field, value) = line.split_once(": ")?;
            field.eq_ignore_ascii_case(name).then_some(value)
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The bytes of `stream` up to and with `delimiter`, from `pending` first.
async fn read_until(stream: &mut TcpStream, pending: &mut Vec<u8>, delimiter: &[u8]) -> Vec<u8> {
    loop {
        if let Some(at) = pending
            .windows(delimiter.len())
            .position(|window| window == delimiter)
        {
            return pending.drain(..at + delimiter.len()).collect();
        }
        read_more(stream, pending).await;
    }
}

async fn read_exactly(stream: &mut TcpStream, pending: &mut Vec<u8>, length: usize) -> Vec<u8> {
    while pending.len() < length {
        read_more(stream, pending).await;
    }
    pending.drain(..length).collect()
}

async fn read_more(stream: &mut TcpStream, pending: &mut Vec<u8>) {
    let mut buffer = [0u8; 16 * 1024];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buffer))
        .await
        .expect("the server answers within the wait")
        .expect("read");
    assert!(
        n > 0,
        "the server closed the connection mid-answer: {:?}",
        String::from_utf8_lossy(pending)
    );
    pending.extend_from_slice(&buffer[..n]);
}

/// The next response on `stream` (to a request that is not `HEAD`), with the bytes
/// read past it left in `pending`.
async fn read_answer(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Answer {
    let head = read_until(stream, pending, b"\r\n\r\n").await;
    let head = String::from_utf8(head).expect("a head in ASCII");
    let mut lines = head.trim_end().split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {status_line:?}"));
    let mut answer = Answer {
        status,
        headers: std::iter::once(status_line)
            .chain(lines.filter(|line| !line.starts_with("date: ")))
            .map(str::to_owned)
            .collect(),
        body: Vec::new(),
        chunked: false,
    };
    assert!(
        head.contains("\r\ndate: "),
        "every answer carries a date: {head}"
    );
    if matches!(status, 204 | 304) {
        return answer;
    }
    if answer.header("transfer-encoding") == Some("chunked") {
        answer.chunked = true;
        loop {
            let line = read_until(stream, pending, b"\r\n").await;
            let line = String::from_utf8(line).expect("a chunk size in ASCII");
            let size = usize::from_str_radix(line.trim_end(), 16)
                .unwrap_or_else(|_| panic!("a chunk size: {line:?}"));
            let chunk = read_exactly(stream, pending, size + 2).await;
            assert!(chunk.ends_with(b"\r\n"), "a chunk ends with CRLF");
            if size == 0 {
                return answer;
            }
            answer.body.extend_from_slice(&chunk[..size]);
        }
    }
    match answer.header("content-length") {
        Some(length) => {
            let length = length.parse().expect("a content-length");
            answer.body = read_exactly(stream, pending, length).await;
        }
        // HTTP/1.0: the body ends with the connection.
        None => {
            answer.body = std::mem::take(pending);
            tokio::time::timeout(WAIT, stream.read_to_end(&mut answer.body))
                .await
                .expect("the server closes within the wait")
                .expect("read");
        }
    }
    answer
}

/// Whether the server closes `stream` within the wait (nothing more sent).
async fn closes(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await,
        Ok(Ok(0))
    )
}

/// How a request head reaches the server.
#[derive(Debug, Clone, Copy)]
enum Sent {
    /// In one write: the lean responder serves it.
    Whole,
    /// With a header past the lean responder's buffer: hyper serves it.
    Padded,
    /// In two writes 100 ms apart: hyper serves it (unless the server looks only
    /// after the second, when the lean responder does).
    Split,
}

/// Sends `request` as `sent` says on a new connection and reads its answer; then,
/// with `Connection: close`, checks that the server closes.
async fn answer_as(app: &TestApp, request: &str, sent: Sent) -> Answer {
    let mut stream = connect(app).await;
    match sent {
        Sent::Whole => stream.write_all(request.as_bytes()).await.unwrap(),
        Sent::Padded => {
            let padding = format!("x-padding: {}\r\n\r\n", "z".repeat(PADDING));
            let padded = format!("{}{padding}", request.strip_suffix("\r\n").unwrap());
            stream.write_all(padded.as_bytes()).await.unwrap();
        }
        Sent::Split => {
            let (first, second) = request.split_at(request.find("Host").unwrap());
            stream.write_all(first.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            stream.write_all(second.as_bytes()).await.unwrap();
        }
    }
    let mut pending = Vec::new();
    let answer = read_answer(&mut stream, &mut pending).await;
    if request.contains("Connection: close") {
        assert!(pending.is_empty());
        assert!(
            closes(&mut stream).await,
            "{sent:?}: closed after the answer"
        );
    }
    answer
}

async fn a_follow_served_lean_is_byte_for_byte_what_hyper_serves(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 5)).await;
    app.finish(&process, "succeeded").await;
    let sse = "Accept: text/event-stream";
    let requests = [
        (format!("/processes/{process}/messages"), vec![sse]),
        (format!("/processes/{process}/messages/stream"), vec![]),
        (
            format!("/processes/{process}/messages?follow=true&after=2-0"),
            vec!["Accept: application/x-ndjson"],
        ),
        // The end's id: 204.
        (
            format!("/processes/{process}/messages"),
            vec![sse, "Last-Event-ID: 5-1"],
        ),
        // A malformed cursor: the contract's 400, with its length.
        (format!("/processes/{process}/messages?after=x"), vec![sse]),
    ];
    for (path, headers) in &requests {
        for close in [false, true] {
            let mut headers = headers.clone();
            // The same id on every copy, so that the heads can be compared.
            headers.push("x-request-id: lean-1");
            if close {
                headers.push("Connection: close");
            }
            let request = get(path, &headers);
            let lean = answer_as(&app, &request, Sent::Whole).await;
            for sent in [Sent::Padded, Sent::Split] {
                assert_eq!(
                    answer_as(&app, &request, sent).await,
                    lean,
                    "{path} {headers:?} {sent:?}"
                );
            }
            assert_eq!(
                lean.header("connection") == Some("close"),
                close,
                "{path}: {lean:?}"
            );
        }
    }
    let follow = answer_as(&app, &get(&requests[0].0, &[sse]), Sent::Whole).await;
    assert_eq!(follow.status, 200);
    assert!(follow.chunked);
    assert_eq!(follow.text().matches("event: message").count(), 5);
    assert!(follow.text().contains("event: end"), "{}", follow.text());
}

async fn pipelined_requests_after_a_follow_are_answered_in_order(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 3)).await;
    app.finish(&process, "failed").await;
    let follow = format!("/processes/{process}/messages");
    let requests = [
        get(&follow, &["Accept: text/event-stream"]),
        get(&format!("{follow}/stream"), &[]),
        get("/healthz", &[]),
        get(&follow, &["Accept: application/json"]),
        get(&follow, &["Accept: application/x-ndjson"]),
    ];
    let mut stream = connect(&app).await;
    stream
        .write_all(requests.concat().as_bytes())
        .await
        .unwrap();
    let mut pending = Vec::new();
    let mut answers = Vec::new();
    for _ in &requests {
        answers.push(read_answer(&mut stream, &mut pending).await);
    }
    assert!(
        answers.iter().all(|answer| answer.status == 200),
        "{answers:?}"
    );
    assert!(answers[0].text().contains("event: end"));
    assert_eq!(
        answers[1].text().lines().count(),
        4,
        "{}",
        answers[1].text()
    );
    assert!(answers[2].text().contains("ok"), "{}", answers[2].text());
    let snapshot: Vec<Value> = serde_json::from_slice(&answers[3].body).unwrap();
    assert_eq!(snapshot.len(), 3);
    assert_eq!(answers[4].body, answers[1].body);
}

async fn a_connection_serves_more_requests_after_a_finished_process_s_follow(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    app.finish(&process, "succeeded").await;
    let follow = get(
        &format!("/processes/{process}/messages"),
        &["Accept: text/event-stream"],
    );
    let mut stream = connect(&app).await;
    let mut pending = Vec::new();
    for request in [follow.clone(), follow, get("/healthz", &[])] {
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream, &mut pending).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("connection"), None);
    }
}

async fn head_and_http_1_0_requests_are_still_answered(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    app.finish(&process, "succeeded").await;
    let path = format!("/processes/{process}/messages");

    let mut stream = connect(&app).await;
    let head = format!("HEAD {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let answer = read_until(&mut stream, &mut pending, b"\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("content-type: text/event-stream"),
        "{answer}"
    );
    // No body: the next answer on the connection is the next request's.
    stream
        .write_all(get("/healthz", &[]).as_bytes())
        .await
        .unwrap();
    let healthz = read_answer(&mut stream, &mut pending).await;
    assert!(healthz.text().contains("ok"), "{healthz:?}");

    let mut stream = connect(&app).await;
    let old = format!("GET {path} HTTP/1.0\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(old.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new()).await;
    assert_eq!(answer.headers[0], "HTTP/1.0 200 OK");
    assert_eq!(answer.text().matches("event: message").count(), 2);
    assert!(answer.text().contains("event: end"));
}

async fn shutdown_ends_a_lean_follow_with_its_retry_hint_and_closes_the_connection(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 1)).await;
    let mut stream = connect(&app).await;
    let request = get(
        &format!("/processes/{process}/messages"),
        &["Accept: text/event-stream"],
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    read_until(&mut stream, &mut pending, b"event: message").await;
    app.shut_down();
    let rest = read_until(&mut stream, &mut pending, b"\r\n0\r\n\r\n").await;
    assert!(
        String::from_utf8_lossy(&rest).contains("retry: 1000"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    assert!(closes(&mut stream).await, "the connection is closed after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_mid_follow_gives_its_follow_back() {
    for backend in BACKENDS {
        let app = TestApp::spawn_with(backend, |config| config.limits.max_follows = 1).await;
        let process = process_id();
        app.put_process(&process).await;
        let request = get(
            &format!("/processes/{process}/messages"),
            &["Accept: application/x-ndjson"],
        );
        let mut open = connect(&app).await;
        open.write_all(request.as_bytes()).await.unwrap();
        let mut pending = Vec::new();
        read_until(&mut open, &mut pending, b"\r\n\r\n").await;

        let refused = answer_as(&app, &request, Sent::Whole).await;
        assert_eq!(refused.status, 503, "{backend:?}: one follow at most");
        drop(open);
        let left = Instant::now();
        loop {
            let mut again = connect(&app).await;
            again.write_all(request.as_bytes()).await.unwrap();
            let status = read_until(&mut again, &mut Vec::new(), b"\r\n").await;
            if status.starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(
                left.elapsed() < Duration::from_secs(5),
                "{backend:?}: the follow of a client that left is still held"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lean_follow_whose_client_stops_reading_is_cut_by_the_write_timeout() {
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
        let mut stalled = socket
            .connect(address(&app).parse().unwrap())
            .await
            .unwrap();
        let request = get(
            &format!("/processes/{process}/messages"),
            &["Accept: text/event-stream"],
        );
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
        let delivered = String::from_utf8_lossy(&received)
            .matches("event: message")
            .count();
        assert!(
            delivered < 200,
            "{backend:?}: it was cut short, not served to the end ({delivered})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_after_a_lean_follow_is_closed_after_the_idle_limit() {
    let app = TestApp::spawn_with(Backend::Memory, |config| {
        config.limits.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let process = process_id();
    app.append(&process, &messages("m", 1)).await;
    app.finish(&process, "succeeded").await;
    let mut stream = connect(&app).await;
    let request = get(
        &format!("/processes/{process}/messages"),
        &["Accept: text/event-stream"],
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(&mut stream, &mut Vec::new()).await;
    let idle = Instant::now();
    assert!(closes(&mut stream).await, "an idle connection stays open");
    assert!(
        idle.elapsed() >= Duration::from_millis(250),
        "{:?}",
        idle.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_cors_apply_to_a_lean_follow() {
    let origin = "http://app.example.test:3000";
    let app = TestApp::spawn_with(Backend::Memory, |config| {
        config.auth = Some(Arc::new(Verifier::new(&crate::auth::secret())));
        config.allowed_origins = vec![HeaderValue::from_static(origin)];
    })
    .await;
    let process = process_id();
    let path = format!("/processes/{process}/messages");
    let origin_header = format!("Origin: {origin}");
    let accept = "Accept: text/event-stream";

    let refused = answer_as(&app, &get(&path, &[accept, &origin_header]), Sent::Whole).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.header("access-control-allow-origin"), Some(origin));
    let error: Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(error["error"]["code"], "unauthorized", "{error}");

    let token = crate::auth::token(&[&process], Scope::Read);
    let bearer = format!("Authorization: Bearer {token}");
    let mut stream = connect(&app).await;
    stream
        .write_all(get(&path, &[accept, &origin_header, &bearer]).as_bytes())
        .await
        .unwrap();
    let head = read_until(&mut stream, &mut Vec::new(), b"\r\n\r\n").await;
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("access-control-allow-origin: {origin}\r\n")),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
}
