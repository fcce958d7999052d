//! `agent-stream tail PROCESS`: the binary follows a process of a running server, prints
//! each message once and in order (resuming by itself after a drop), and exits with the
//! process's status: 0 for `succeeded`, 1 for any other, 2 when it cannot follow.

use std::process::Stdio;

use agent_stream::domain::{NewMessage, ProcessId};
use agent_stream::tail::format;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;

use agent_stream_testkit::app::{TestApp, WAIT};
use agent_stream_testkit::fixtures::{messages, process_id, session};
use agent_stream_testkit::on_every_backend;

/// A running `agent-stream tail`, read line by line.
struct Tail {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: mpsc::UnboundedReceiver<String>,
    stderr_seen: Vec<String>,
}

impl Tail {
    fn start(app: &TestApp, process: &str, extra: &[&str]) -> Self {
        Self::start_at(&app.base, process, extra)
    }

    fn start_at(base: &str, process: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-stream"))
            .arg("tail")
            .arg(process)
            .args(["--url", base])
            .args(extra)
            .env_remove("AGENT_STREAM_TOKEN")
            .env_remove("AGENT_STREAM_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run agent-stream tail");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let (send, stderr) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = send.send(line);
            }
        });
        Self {
            child,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// Waits until it says `needle` on stderr.
    async fn says(&mut self, needle: &str) {
        while !self.stderr_seen.iter().any(|line| line.contains(needle)) {
            let line = tokio::time::timeout(WAIT, self.stderr.recv())
                .await
                .unwrap_or_else(|_| panic!("tail never said {needle:?}: {:?}", self.stderr_seen))
                .expect("tail is running");
            self.stderr_seen.push(line);
        }
    }

    /// The next `n` lines it prints.
    async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        while lines.len() < n {
            let line = tokio::time::timeout(WAIT, self.stdout.next_line())
                .await
                .expect("tail printed nothing for 20 s")
                .expect("read tail's stdout")
                .unwrap_or_else(|| panic!("tail stopped printing after {lines:?}"));
            lines.push(line);
        }
        lines
    }

    /// Waits for it to exit: the rest of its stdout, its stderr and its exit code.
    async fn exit(mut self) -> (Vec<String>, String, i32) {
        let mut rest = Vec::new();
        while let Some(line) = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("tail did not exit within 20 s")
            .expect("read tail's stdout")
        {
            rest.push(line);
        }
        while let Some(line) = tokio::time::timeout(WAIT, self.stderr.recv())
            .await
            .expect("tail's stderr closes when it exits")
        {
            self.stderr_seen.push(line);
        }
        let stderr = self.stderr_seen.join("\n");
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("tail exits")
            .unwrap();
        (rest, stderr, status.code().expect("an exit code"))
    }
}

/// What tail prints for these messages as the server stored them.
fn readable(stored: &[Value]) -> Vec<String> {
    stored
        .iter()
        .map(|m| format::message(m).render(220, false))
        .collect()
}

async fn stored(app: &TestApp, process: &str) -> Vec<Value> {
    app.snapshot(process, "").await.json().await.unwrap()
}

on_every_backend!(
    tail_prints_history_then_live_messages_each_once_in_order_and_exits_0_on_success,
    tail_json_prints_exactly_the_messages_and_exits_1_when_the_process_failed,
    tail_from_a_stream_id_starts_right_after_it,
    tail_resumes_after_the_server_restarts_without_losing_or_repeating_a_message,
    tail_of_a_process_not_known_yet_waits_for_its_first_message,
);

async fn tail_prints_history_then_live_messages_each_once_in_order_and_exits_0_on_success(
    app: TestApp,
) {
    let process = process_id();
    let session = session();
    app.append(&process, &session[..3]).await;
    let mut tail = Tail::start(&app, &process, &[]);
    let history = tail.lines(3).await;

    app.append(&process, &session[3..]).await;
    app.finish(&process, "succeeded").await;
    let (live, stderr, code) = tail.exit().await;

    let stored = stored(&app, &process).await;
    assert_eq!(stored.len(), session.len());
    let mut expected = readable(&stored);
    expected.push(format!(
        "{:>7}  end        succeeded",
        format!("{}-1", session.len())
    ));
    let printed: Vec<String> = history.into_iter().chain(live).collect();
    assert_eq!(printed, expected, "stderr: {stderr}");
    assert_eq!(code, 0, "stderr: {stderr}");
}

async fn tail_json_prints_exactly_the_messages_and_exits_1_when_the_process_failed(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    let mut tail = Tail::start(&app, &process, &["--json"]);
    let first = tail.lines(2).await;
    app.append_batch(&process, &messages("n", 3)).await;
    app.finish(&process, "failed").await;
    let (rest, stderr, code) = tail.exit().await;

    let printed: Vec<Value> = first
        .iter()
        .chain(&rest)
        .map(|line| serde_json::from_str(line).expect("each line is a message's JSON"))
        .collect();
    assert_eq!(printed, stored(&app, &process).await, "stderr: {stderr}");
    assert_eq!(
        code, 1,
        "any status but succeeded exits 1; stderr: {stderr}"
    );
}

async fn tail_from_a_stream_id_starts_right_after_it(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 5)).await;
    app.finish(&process, "cancelled").await;
    let tail = Tail::start(&app, &process, &["--from", "3-0"]);
    let (printed, stderr, code) = tail.exit().await;

    let stored = stored(&app, &process).await;
    let mut expected = readable(&stored[3..]);
    expected.push("    5-1  end        cancelled".to_owned());
    assert_eq!(printed, expected, "stderr: {stderr}");
    assert_eq!(code, 1);
}

async fn tail_resumes_after_the_server_restarts_without_losing_or_repeating_a_message(
    mut app: TestApp,
) {
    let process = process_id();
    app.append(&process, &messages("before", 3)).await;
    let mut tail = Tail::start(&app, &process, &[]);
    let before = tail.lines(3).await;

    // The server goes away mid-follow; messages keep coming while it is gone.
    app.shut_down();
    tail.says("reconnecting in 100ms to resume after 3-0").await;
    let writer = app.writer();
    let id = ProcessId::parse(&process).unwrap();
    for message in messages("during", 2) {
        let message = NewMessage::parse(message.to_string().as_bytes(), 1 << 20).unwrap();
        writer.append(&id, &[message]).await.unwrap();
    }
    app.start_again_on_same_port().await;
    app.append(&process, &messages("after", 2)).await;
    app.finish(&process, "succeeded").await;
    let (after, stderr, code) = tail.exit().await;

    let stored = stored(&app, &process).await;
    assert_eq!(stored.len(), 7);
    let mut expected = readable(&stored);
    expected.push("    7-1  end        succeeded".to_owned());
    let printed: Vec<String> = before.into_iter().chain(after).collect();
    assert_eq!(printed, expected, "stderr: {stderr}");
    assert_eq!(code, 0, "stderr: {stderr}");
}

/// The platform opens a process's page before its agent has started; `tail` too waits
/// for a process not known yet, and prints it from its first message.
async fn tail_of_a_process_not_known_yet_waits_for_its_first_message(app: TestApp) {
    let process = process_id();
    let mut tail = Tail::start(&app, &process, &["--json"]);
    // Nothing to print yet; it must not give up meanwhile.
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_millis(500),
            tail.stdout.next_line()
        )
        .await
        .is_err(),
        "tail waits quietly"
    );
    app.append(&process, &messages("m", 2)).await;
    let printed = tail.lines(2).await;
    app.finish(&process, "succeeded").await;
    let (rest, stderr, code) = tail.exit().await;
    let expected: Vec<String> = stored(&app, &process)
        .await
        .iter()
        .map(Value::to_string)
        .collect();
    let printed: Vec<String> = printed
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap().to_string())
        .collect();
    assert_eq!(printed, expected);
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(code, 0, "stderr: {stderr}");
}

/// A line `tail` cannot parse (JSON stored before the server refused what common
/// parsers cannot read back) is printed as it came, and the follow goes on. The server
/// here is a stand-in that answers with such a line, since agent-stream no longer
/// stores one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_a_line_it_cannot_parse_as_it_came_and_goes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let good = |seq: u64| {
        format!(
            r#"{{"id":"m{seq}","type":"T","turn":{seq},"agent":null,"model":null,"payload":{{}},"stream_id":"{seq}-0","created_at":"2026-11-27T10:15:03.123456Z"}}"#
        )
    };
    let unreadable = r#"{"id":"m2","type":"T","turn":2,"agent":null,"model":null,"payload":{"s":"\ud800","n":1e400},"stream_id":"2-0","created_at":"2026-11-27T10:15:03.123456Z"}"#;
    let lines = vec![good(1), unreadable.to_owned(), good(3)];
    let body = format!(
        "{}\n{{\"event\":\"end\",\"status\":\"succeeded\",\"stream_id\":\"3-1\"}}\n",
        lines.join("\n")
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // One answer per run of tail below.
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buffer).await.unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buffer[..n]);
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(body.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
        }
    });
    let mut raw = format::unparsed(unreadable);
    raw.stream_id = "2-0".into();
    let message = |json: String| format::message(&serde_json::from_str(&json).unwrap());
    for (extra, expected) in [
        (vec!["--json"], lines.clone()),
        (
            vec![],
            vec![
                message(good(1)).render(220, false),
                raw.render(220, false),
                message(good(3)).render(220, false),
                format::end("succeeded", "3-1").render(220, false),
            ],
        ),
    ] {
        let (printed, stderr, code) = Tail::start_at(&base, &process_id(), &extra).exit().await;
        assert_eq!(printed, expected, "{extra:?}; stderr: {stderr}");
        assert_eq!(code, 0, "{extra:?}; stderr: {stderr}");
    }
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_of_a_server_it_never_reached_exits_2_at_once_and_names_url_and_wait() {
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", nobody.local_addr().unwrap());
    drop(nobody);
    let (printed, stderr, code) = Tail::start_at(&base, &process_id(), &[]).exit().await;
    assert!(printed.is_empty());
    assert!(!stderr.contains("reconnecting"), "no retry: {stderr}");
    assert!(
        stderr.contains(&format!("error: could not reach {base}"))
            && stderr.contains("Check --url")
            && stderr.contains("--wait"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_with_wait_gives_up_with_2_when_the_server_stays_unreachable_for_retry_for() {
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", nobody.local_addr().unwrap());
    drop(nobody);
    let (printed, stderr, code) =
        Tail::start_at(&base, &process_id(), &["--wait", "--retry-for", "500ms"])
            .exit()
            .await;
    assert!(printed.is_empty());
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert!(stderr.contains("error: gave up after 500ms"), "{stderr}");
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_refuses_a_malformed_from_before_asking_the_server() {
    let app = TestApp::spawn(agent_stream_testkit::app::Backend::Memory).await;
    let (printed, stderr, code) = Tail::start(&app, &process_id(), &["--from", "abc"])
        .exit()
        .await;
    assert!(printed.is_empty());
    assert!(stderr.contains("--from"), "{stderr}");
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sends_its_token_and_explains_a_refused_one() {
    use tokio::io::AsyncWriteExt;
    // A stand-in for a server with auth: it answers 401 to any token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = BufReader::new(stream);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line.trim().is_empty() {
                break;
            }
            head.push(line.trim().to_owned());
        }
        let body = r#"{"error":{"code":"invalid_token","message":"the token has expired"}}"#;
        let response = format!("HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        stream.write_all(response.as_bytes()).await.unwrap();
        head
    });

    let (printed, stderr, code) = Tail::start_at(&base, "p1", &["--token", "t0k-123"])
        .exit()
        .await;
    let head = server.await.unwrap();
    assert!(
        head.iter()
            .any(|line| line.eq_ignore_ascii_case("authorization: Bearer t0k-123")),
        "{head:?}"
    );
    assert!(
        head[0].starts_with("GET /processes/p1/messages/stream?after=0-0 "),
        "{head:?}"
    );
    assert!(printed.is_empty());
    assert!(
        stderr.contains("did not accept the token: the token has expired"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("t0k-123"),
        "the token is never printed: {stderr}"
    );
    assert_eq!(code, 2);
}
