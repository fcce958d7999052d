//! Logs and traces: every call has a request id, echoed in `x-request-id` and carried by
//! every log line written while serving it; logs are text or JSON (`--log-format`); no
//! message payload and no token is logged above debug, and a query string (which may
//! carry `access_token=`) is not logged at all. Nor is any secret of DATABASE_URL or
//! REDIS_URL: their user and password, and any query parameter that is not a known
//! setting, are masked wherever a URL is logged or told in an error.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use agent_stream_testkit::app::{fresh_database, Backend, TestApp, WAIT};
use agent_stream_testkit::fixtures::process_id;

/// `agent-stream serve` on the embedded store and a port of its choosing, with its
/// stderr (the logs) captured.
struct Server {
    base: String,
    child: Child,
    logs: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Server {
    async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// Like [`Server::start`], with these environment variables (e.g. DATABASE_URL).
    async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-stream"))
            .args(["serve", "--listen", "127.0.0.1:0", "--no-auth"])
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("AGENT_STREAM_LOG")
            .env_remove("AGENT_STREAM_LOG_FORMAT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run agent-stream serve");
        let (send, logs) = mpsc::unbounded_channel();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                let _ = send.send(line);
            }
        });
        let mut server = Self {
            base: String::new(),
            child,
            logs,
            seen: Vec::new(),
        };
        let listening = server.log_line_with("agent-stream listening").await;
        let address = listening
            .split(['=', '"', ' '])
            .find(|word| word.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {listening:?}"))
            .to_owned();
        server.base = format!("http://{address}");
        server
    }

    async fn log_line_with(&mut self, needle: &str) -> String {
        loop {
            let line = tokio::time::timeout(WAIT, self.logs.recv())
                .await
                .unwrap_or_else(|_| panic!("no log line with {needle:?} in {:#?}", self.seen))
                .unwrap_or_else(|| panic!("the server exited: {:#?}", self.seen));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Stops it; everything it logged.
    async fn stop(mut self) -> Vec<String> {
        self.child.kill().await.unwrap();
        while let Some(line) = tokio::time::timeout(WAIT, self.logs.recv())
            .await
            .expect("stderr closes once the server is gone")
        {
            self.seen.push(line);
        }
        self.seen
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Appends a message whose payload holds `marker`, finishes the process, and follows it
/// with `secret` as an `access_token` (and as a bearer token); returns the follow's
/// request id.
async fn append_and_follow(server: &Server, marker: &str, secret: &str) -> String {
    let http = reqwest::Client::new();
    let process = process_id();
    let message =
        serde_json::json!({"type": "AssistantMessage", "payload": {"content": [{"text": marker}]}});
    let appended = http
        .post(server.url(&format!("/processes/{process}/messages")))
        .json(&message)
        .send()
        .await
        .unwrap();
    assert_eq!(appended.status(), 201);
    http.post(server.url(&format!("/processes/{process}/finish")))
        .json(&serde_json::json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    let refused = http
        .get(server.url(&format!(
            "/processes/{process}/messages?after=bad&access_token={secret}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let follow = http
        .get(server.url(&format!(
            "/processes/{process}/messages?follow=true&access_token={secret}"
        )))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let request_id = follow.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = follow.text().await.unwrap();
    assert!(body.contains(marker) && body.contains("\"event\":\"end\""));
    request_id
}

fn marker_and_secret() -> (String, String) {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    (format!("PAYLOAD-{unique}"), format!("SECRET-{unique}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_logs_hold_no_payload_and_no_token() {
    let server = Server::start(&[]).await;
    let (marker, secret) = marker_and_secret();
    append_and_follow(&server, &marker, &secret).await;
    let logs = server.stop().await.join("\n");

    assert!(logs.contains("agent-stream listening"), "{logs}");
    assert!(
        !logs.contains(&marker),
        "a payload was logged at info: {logs}"
    );
    assert!(
        !logs.contains(&secret),
        "a token was logged at info: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_tie_each_line_of_a_call_to_its_request_id_and_never_log_the_query() {
    let mut server = Server::start(&["--log-format", "json", "--log", "debug,sqlx=warn"]).await;
    let (marker, secret) = marker_and_secret();
    let request_id = append_and_follow(&server, &marker, &secret).await;
    server.log_line_with("follow ended").await;
    let lines = server.stop().await;

    let logs: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let of_the_follow: Vec<&Value> = logs
        .iter()
        .filter(|line| line["spans"][0]["request_id"] == request_id.as_str())
        .collect();
    let said = |message: &str| {
        of_the_follow
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} with request id {request_id}: {lines:#?}"))
    };
    assert_eq!(
        said("started processing request")["spans"][0]["method"],
        "GET"
    );
    let started = said("follow started");
    assert_eq!(started["spans"][1]["format"], "ndjson");
    assert_eq!(started["spans"][1]["cursor"], "0-0");
    let ended = said("follow ended");
    assert_eq!(ended["sent"], 1);
    assert_eq!(ended["reason"], "the process finished");
    for line in &of_the_follow {
        let path = line["spans"][0]["path"].as_str().unwrap();
        assert!(path.starts_with("/processes/") && path.ends_with("/messages"));
    }
    assert!(
        !lines.iter().any(|line| line.contains(&secret)),
        "the token is not logged, even at debug: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_made_for_each_call_or_kept_from_the_client_and_echoed() {
    let app = TestApp::spawn(Backend::Memory).await;
    let id_of = |response: reqwest::Response| {
        response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let first = id_of(app.http.get(app.url("/healthz")).send().await.unwrap());
    let second = id_of(app.get_process("p-unknown").await);
    assert!(uuid::Uuid::parse_str(&first).is_ok(), "{first}");
    assert!(uuid::Uuid::parse_str(&second).is_ok(), "{second}");
    assert_ne!(first, second);
    let kept = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "lb-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(kept), "lb-7f3a");
}

/// A port nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_the_database_or_redis_url_is_logged_even_at_debug() {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let secrets: Vec<String> = ["userinfo", "query", "sslpassword", "redis"]
        .iter()
        .map(|part| format!("SECRET-{part}-{unique}"))
        .collect();
    let database = url::Url::parse(&fresh_database().await).unwrap();
    // Trust authentication: PostgreSQL takes any password, so the server starts.
    let database_url = format!(
        "postgres://{}:{}@{}:{}{}?password={}&sslpassword={}&application_name=logs-test",
        database.username(),
        secrets[0],
        database.host_str().unwrap(),
        database.port().unwrap(),
        database.path(),
        secrets[1],
        secrets[2],
    );
    // Nothing listens there: the start warns that Redis does not answer yet, with its URL.
    let redis_url = format!(
        "redis://127.0.0.1:{}/?password={}",
        closed_port().await,
        secrets[3]
    );
    let server = Server::start_with_env(
        &["--log", "debug"],
        &[("DATABASE_URL", &database_url), ("REDIS_URL", &redis_url)],
    )
    .await;
    // Logged before the server listens, so among the lines `start` read.
    let warned = server
        .seen
        .iter()
        .find(|line| line.contains("Redis does not answer yet"))
        .unwrap_or_else(|| panic!("no warning that Redis does not answer: {:#?}", server.seen));
    assert!(warned.contains("password=***"), "{warned}");
    let (marker, token) = marker_and_secret();
    append_and_follow(&server, &marker, &token).await;
    let logs = server.stop().await.join("\n");

    assert!(logs.contains("PostgreSQL store ready"), "{logs}");
    assert!(
        logs.contains("sslpassword"),
        "the dropped parameter is named: {logs}"
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "{secret} was logged: {logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_tells_the_database_url_without_its_secrets() {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let (in_userinfo, in_query) = (format!("PW1-{unique}"), format!("PW2-{unique}"));
    let database_url = format!(
        "postgres://app:{in_userinfo}@127.0.0.1:{}/x?password={in_query}&sslmode=disable",
        closed_port().await
    );
    let output = tokio::time::timeout(
        WAIT,
        Command::new(env!("CARGO_BIN_EXE_agent-stream"))
            .args(["migrate"])
            .env("DATABASE_URL", &database_url)
            .env_remove("AGENT_STREAM_LOG")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("migrate gives up within its timeout")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("postgres://***@127.0.0.1:")
            && stderr.contains("/x?password=***&sslmode=disable"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&in_userinfo) && !stderr.contains(&in_query),
        "{stderr}"
    );
}
