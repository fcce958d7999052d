//! Connections a client opens and leaves silent (issue 10, F1): each is closed once it
//! sits past its time limit, and past the cap a new one is closed at once, so silent
//! sockets can never use up the descriptors the server needs. A connection whose
//! response makes no progress is closed after the write timeout, HTTP/2 streams whose
//! client keeps their window shut included (F2).

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use agent_stream_testkit::app::{Backend, TestApp};
use agent_stream_testkit::fixtures::{messages, process_id};

const BACKENDS: [Backend; 3] = Backend::ALL;

/// HTTP/2's connection preface, then an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Reads until the server closes `stream`; `None` if it is still open after `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = Vec::new();
    match tokio::time::timeout(wait, stream.read_to_end(&mut sink)).await {
        Ok(_) => Some(started.elapsed()),
        Err(_) => None,
    }
}

fn address(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_byte_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(Backend::Memory, |config| {
        config.limits.header_read_timeout = Duration::from_millis(300)
    })
    .await;
    let mut silent = TcpStream::connect(address(&app)).await.unwrap();
    let closed = closed_within(&mut silent, Duration::from_secs(5)).await;
    let closed = closed.expect("a silent connection is still open after 5 s");
    assert!(
        closed >= Duration::from_millis(250),
        "closed after {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_only_sends_its_preface_is_closed_when_idle() {
    let app = TestApp::spawn_with(Backend::Memory, |config| {
        config.limits.idle_timeout = Duration::from_millis(300);
        config.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = TcpStream::connect(address(&app)).await.unwrap();
    silent.write_all(H2_PREFACE).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "an HTTP/2 connection with no stream is still open after 5 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_a_follow_open_is_not_idle() {
    let app = TestApp::spawn_with(Backend::Memory, |config| {
        config.limits.idle_timeout = Duration::from_millis(200);
        config.limits.header_read_timeout = Duration::from_millis(200);
        config.follow.heartbeat = Duration::from_secs(60);
    })
    .await;
    let process = agent_stream_testkit::fixtures::process_id();
    app.put_process(&process).await;
    let mut follow = app
        .follow(&process, agent_stream_testkit::app::Format::Ndjson, None)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    app.append(
        &process,
        &agent_stream_testkit::fixtures::messages("late", 1),
    )
    .await;
    assert_eq!(
        agent_stream_testkit::fixtures::seqs(&follow.take_messages(1).await),
        vec![1],
        "the follow outlived five idle limits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_new_connection_is_closed_at_once() {
    let app = TestApp::spawn_with(Backend::Memory, |config| {
        config.connection_cap = 4;
        config.limits.header_read_timeout = Duration::from_secs(2);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(address(&app)).await.unwrap());
    }
    let mut extra = TcpStream::connect(address(&app)).await.unwrap();
    let closed = closed_within(&mut extra, Duration::from_secs(1))
        .await
        .expect("the fifth connection is still open after 1 s");
    assert!(closed < Duration::from_secs(1));
    // Once the silent ones are closed, there is room again.
    for silent in &mut held {
        closed_within(silent, Duration::from_secs(5))
            .await
            .expect("a silent connection outlived its header timeout");
    }
    let healthz = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(healthz.status(), 200);
}

/// The probe's scenario: the real binary under `ulimit -n 200`, on PostgreSQL and
/// Redis, and 250 sockets that never send a byte. Some are closed at once (the cap),
/// the rest after the header timeout, and `/healthz` answers within 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_200_descriptors_250_silent_sockets_leave_healthz_answering_within_15_s() {
    let app = TestApp::spawn(Backend::Real).await;
    let config = app.backend_config.clone().expect("real backends");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 200 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_agent-stream"))
        .args(["serve", "--no-auth", "--listen", &listen])
        .env("DATABASE_URL", config.database_url.as_deref().unwrap())
        .env("REDIS_URL", config.redis_url.as_deref().unwrap())
        .env("AGENT_STREAM_REDIS_PREFIX", &config.redis_prefix)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run agent-stream serve");
    let healthz = format!("http://{listen}/healthz");
    let answers = || async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        matches!(client.get(&healthz).send().await, Ok(r) if r.status() == 200)
    };
    let started = Instant::now();
    while !answers().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.id().unwrap()))
        .expect("the server's limits");
    assert!(
        limits
            .lines()
            .any(|line| line.starts_with("Max open files") && line.contains(" 200 ")),
        "the server runs with 200 descriptors: {limits}"
    );

    let mut silent = Vec::new();
    for _ in 0..250 {
        silent.push(TcpStream::connect(&listen).await.expect("connect"));
    }
    let attacked = Instant::now();
    let mut answered = None;
    while attacked.elapsed() < Duration::from_secs(15) {
        if answers().await {
            answered = Some(attacked.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answered = answered.expect("/healthz did not answer within 15 s of 250 silent sockets");
    eprintln!("/healthz answered {answered:?} after 250 silent sockets");

    // Every silent socket is closed by now or soon: the cap closed some at once, the
    // header timeout the others.
    for socket in &mut silent {
        closed_within(socket, Duration::from_secs(15))
            .await
            .expect("a silent socket is still open");
    }
    assert!(
        server.try_wait().unwrap().is_none(),
        "the server is still running"
    );
    server.kill().await.unwrap();
}

/// An HTTP/2 connection to `app` whose streams start with `window` bytes of
/// flow-control window (0: the server may send no body byte until the client says
/// so), and the moment the server closes it.
async fn h2_connection(
    app: &TestApp,
    window: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Instant>,
) {
    let tcp = TcpStream::connect(address(app)).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .expect("HTTP/2 handshake");
    let closed = tokio::spawn(async move {
        let _ = connection.await;
        Instant::now()
    });
    (client.ready().await.unwrap(), closed)
}

/// Opens `GET path` on `client`, its head answered.
async fn h2_get(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    app: &TestApp,
    path: &str,
    accept: &str,
) -> axum::http::Response<h2::RecvStream> {
    let request = axum::http::Request::get(app.url(path))
        .header("accept", accept)
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("the head within 5 s")
        .expect("a head");
    assert_eq!(response.status(), 200);
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_keeps_its_window_shut_is_disconnected_after_the_write_timeout() {
    let write_timeout = Duration::from_millis(500);
    let heartbeat = Duration::from_millis(200);
    for backend in BACKENDS {
        let app = TestApp::spawn_with(backend, |config| {
            config.limits.write_timeout = write_timeout;
            config.follow.heartbeat = heartbeat;
        })
        .await;
        let (full, empty) = (process_id(), process_id());
        app.put_process(&full).await;
        app.put_process(&empty).await;
        app.append(&full, &messages("page", 20)).await;

        // A snapshot: its first page is taken at once and can never be sent.
        let (mut client, snapshot_closed) = h2_connection(&app, 0).await;
        let opened = Instant::now();
        // Kept: a client that drops a response resets its stream.
        let _snapshot = h2_get(
            &mut client,
            &app,
            &format!("/processes/{full}/messages?follow=false"),
            "application/json",
        )
        .await;
        // A follow with nothing to send: its first heartbeat can never be sent.
        let (mut client, follow_closed) = h2_connection(&app, 0).await;
        let _follow = h2_get(
            &mut client,
            &app,
            &format!("/processes/{empty}/messages"),
            "application/x-ndjson",
        )
        .await;

        for (what, closed, at_most) in [
            ("snapshot", snapshot_closed, write_timeout),
            ("follow", follow_closed, heartbeat + write_timeout),
        ] {
            let closed = tokio::time::timeout(Duration::from_secs(10), closed)
                .await
                .unwrap_or_else(|_| {
                    panic!("{backend:?}: a stalled HTTP/2 {what} is still open after 10 s")
                })
                .unwrap();
            let after = closed - opened;
            assert!(
                after >= write_timeout.mul_f32(0.8) && after < at_most + Duration::from_secs(2),
                "{backend:?}: the {what}'s connection closed after {after:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_http2_follow_that_only_gets_heartbeats_stays_open() {
    for backend in BACKENDS {
        let app = TestApp::spawn_with(backend, |config| {
            config.limits.write_timeout = Duration::from_millis(500);
            config.follow.heartbeat = Duration::from_millis(200);
        })
        .await;
        let process = process_id();
        app.put_process(&process).await;
        let (mut client, closed) = h2_connection(&app, 65_535).await;
        let mut body = h2_get(
            &mut client,
            &app,
            &format!("/processes/{process}/messages"),
            "application/x-ndjson",
        )
        .await
        .into_body();

        // Read (and give the window back) for four write timeouts: heartbeats only.
        let quiet = Instant::now() + Duration::from_secs(2);
        let mut heartbeats = 0;
        while let Ok(Some(chunk)) =
            tokio::time::timeout(quiet.saturating_duration_since(Instant::now()), body.data()).await
        {
            let chunk = chunk.expect("the follow goes on");
            body.flow_control().release_capacity(chunk.len()).unwrap();
            assert!(chunk.iter().all(|byte| *byte == b'\n'), "{chunk:?}");
            heartbeats += 1;
        }
        assert!(heartbeats >= 3, "{backend:?}: {heartbeats} heartbeat(s)");
        assert!(
            !closed.is_finished(),
            "{backend:?}: the idle follow's connection was closed"
        );

        app.append(&process, &messages("late", 1)).await;
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&received).contains("late") {
            let chunk = tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                body.data(),
            )
            .await
            .unwrap_or_else(|_| panic!("{backend:?}: no message within 5 s"))
            .expect("the follow goes on")
            .unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            received.extend_from_slice(&chunk);
        }
    }
}
