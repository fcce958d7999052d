//! Dropping into the platform agent-stream replaces: its worker's webhook
//! (`POST /webhooks/messages`, with `model` as an object), its UI's poller (a Node
//! script that does what `conversational-ui/hooks/use-process-messages.ts` and its
//! Next.js route do), and the I-JSON rules that keep every stored message readable by
//! every client.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use agent_stream_testkit::app::{Backend, TestApp, WAIT};
use agent_stream_testkit::fixtures::{messages, process_id, seqs};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    the_workers_notification_is_appended_as_a_post_of_its_message_would_be,
    a_notification_missing_or_malforming_a_field_is_a_400_and_stores_nothing,
    agent_and_model_are_stored_as_sent_on_every_append_path,
    json_that_common_parsers_cannot_read_back_is_refused_naming_the_rule,
);

/// What the existing worker sends: `WebhookNotifyingAgentMessageStore` posts
/// `AgentMessageNotification(...).model_dump(mode="json")`, whose `model` is a
/// `QualifiedAIModel` dataclass.
fn notification(process: &str, id: &str, turn: u64) -> Value {
    json!({
        "process_id": process,
        "agent_message": {
            "id": id,
            "type": "AssistantMessage",
            "turn": turn,
            "agent": "CLAUDE_CODE",
            "model": { "ai_model": "claude-sonnet-4-5", "version": "20250929" },
            "payload": { "content": [{ "text": format!("turn {turn}") }], "model": "claude-sonnet-4-5-20250929" },
        }
    })
}

async fn notify(app: &TestApp, body: &Value) -> reqwest::Response {
    app.http
        .post(app.url("/webhooks/messages"))
        .json(body)
        .send()
        .await
        .expect("POST /webhooks/messages")
}

async fn the_workers_notification_is_appended_as_a_post_of_its_message_would_be(app: TestApp) {
    let process = process_id();
    let first = notify(&app, &notification(&process, "n-1", 1)).await;
    assert_eq!(first.status(), 201);
    assert_eq!(
        first.json::<Value>().await.unwrap(),
        json!({ "id": "n-1", "stream_id": "1-0" })
    );
    let again = notify(&app, &notification(&process, "n-1", 1)).await;
    assert_eq!(
        again.status(),
        200,
        "a repeat is answered, not stored twice"
    );
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        json!({ "id": "n-1", "stream_id": "1-0" })
    );
    // camelCase, as the platform's API also accepts it.
    let camel = json!({
        "processId": process,
        "agentMessage": notification(&process, "n-2", 2)["agent_message"].clone(),
    });
    assert_eq!(notify(&app, &camel).await.status(), 201);

    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    assert_eq!(seqs(&stored), vec![1, 2]);
    let sent = &notification(&process, "n-1", 1)["agent_message"];
    for field in ["id", "type", "turn", "agent", "model", "payload"] {
        assert_eq!(
            stored[0][field], sent[field],
            "{field} as the worker sent it"
        );
    }

    assert_eq!(app.finish(&process, "completed").await.status(), 200);
    let late = notify(&app, &notification(&process, "n-3", 3)).await;
    assert_eq!(late.status(), 409);
    assert_eq!(
        late.json::<Value>().await.unwrap()["error"]["code"],
        "process_finished"
    );
    assert_eq!(
        notify(&app, &notification(&process, "n-2", 2))
            .await
            .status(),
        200,
        "a retry of a stored message is still answered after the finish"
    );
}

async fn a_notification_missing_or_malforming_a_field_is_a_400_and_stores_nothing(app: TestApp) {
    let process = process_id();
    let good = notification(&process, "n-1", 1);
    let message = good["agent_message"].clone();
    let without = |field: &str| {
        let mut message = message.clone();
        message.as_object_mut().unwrap().remove(field);
        json!({ "process_id": process, "agent_message": message })
    };
    let bodies = [
        json!({ "agent_message": message }),
        json!({ "process_id": process }),
        json!({ "process_id": "not a valid id", "agent_message": message }),
        json!({ "process_id": 7, "agent_message": message }),
        json!({ "process_id": process, "agent_message": "text" }),
        json!({ "process_id": process, "agent_message": [message] }),
        without("type"),
        without("payload"),
        json!({ "process_id": process, "agent_message": { "type": "T", "payload": {}, "turn": "one" } }),
        json!([good]),
        json!(null),
    ];
    for body in &bodies {
        let response = notify(&app, body).await;
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["code"].is_string() && error["error"]["message"].is_string(),
            "{error}"
        );
    }
    let not_json = app
        .http
        .post(app.url("/webhooks/messages"))
        .body("{\"process_id\":")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    assert_eq!(
        app.get_process(&process).await.status(),
        404,
        "no refused notification registers the process"
    );
}

async fn agent_and_model_are_stored_as_sent_on_every_append_path(app: TestApp) {
    let process = process_id();
    let values = [
        json!("claude-sonnet-4-5-20250929"),
        json!({ "ai_model": "claude-sonnet-4-5", "version": "20250929" }),
        json!({ "ai_model": "gpt-5", "version": null }),
        json!(["a", 1, true]),
        json!(42),
        Value::Null,
    ];
    for (i, value) in values.iter().enumerate() {
        let message = json!({
            "id": format!("m-{i}"), "type": "T", "turn": i, "payload": {},
            "agent": value, "model": value,
        });
        let status = if i % 2 == 0 {
            app.post_messages(&process, message.to_string())
                .await
                .status()
        } else {
            notify(
                &app,
                &json!({ "process_id": process, "agent_message": message }),
            )
            .await
            .status()
        };
        assert_eq!(status, 201, "{value}");
    }
    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    assert_eq!(stored.len(), values.len());
    for (message, value) in stored.iter().zip(&values) {
        assert_eq!(&message["agent"], value);
        assert_eq!(&message["model"], value);
    }
}

async fn json_that_common_parsers_cannot_read_back_is_refused_naming_the_rule(app: TestApp) {
    let process = process_id();
    // A message `levels` deep: itself, its payload, then arrays.
    let deep = |levels: usize| {
        format!(
            r#"{{"type":"T","payload":{{"a":{}1{}}}}}"#,
            "[".repeat(levels - 2),
            "]".repeat(levels - 2)
        )
    };
    for (body, rule) in [
        (
            r#"{"type":"T","payload":{"s":"\ud800"}}"#.to_owned(),
            "lone surrogate",
        ),
        (
            r#"{"type":"T","payload":{"s":"ok \udfff"}}"#.to_owned(),
            "lone surrogate",
        ),
        (
            r#"{"type":"T","payload":{"\udbff":1}}"#.to_owned(),
            "lone surrogate",
        ),
        (
            r#"{"type":"T","payload":{"n":1e400}}"#.to_owned(),
            "beyond a double",
        ),
        (
            r#"{"type":"T","payload":{"n":-1E+309}}"#.to_owned(),
            "beyond a double",
        ),
        (
            r#"{"type":"T","model":{"v":1e999},"payload":{}}"#.to_owned(),
            "beyond a double",
        ),
        (deep(65), "nested deeper than 64"),
        (format!("[{}]", deep(65)), "nested deeper than 64"),
        (deep(500_000), "nested deeper than 64"),
    ] {
        let shown = &body[..body.len().min(80)];
        let response = app.post_messages(&process, body.clone()).await;
        assert_eq!(response.status(), 400, "{shown}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_message", "{shown}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(rule), "{shown}: {message}");
        let hook = json!({ "process_id": process, "agent_message": "X" })
            .to_string()
            .replace("\"X\"", &body);
        if !body.starts_with('[') {
            let response = app
                .http
                .post(app.url("/webhooks/messages"))
                .body(hook)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "webhook: {shown}");
        }
    }
    assert_eq!(
        app.get_process(&process).await.status(),
        404,
        "nothing was stored"
    );
    // What every parser reads back is taken, as sent.
    for body in [
        r#"{"type":"T","payload":{"s":"\ud83d\ude00","n":1.7976931348623157e308,"tiny":1e-400}}"#
            .to_owned(),
        deep(64),
        format!("[{}]", deep(64)),
    ] {
        assert_eq!(
            app.post_messages(&process, body.clone()).await.status(),
            201,
            "{}",
            &body[..body.len().min(80)]
        );
    }
    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    assert_eq!(stored[0]["payload"]["s"], "😀");
}

/// The Node script that polls as the platform's UI does.
const POLLER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/platform/ui-poller.mjs");
/// The UI's interval is 3 s (`useProcessMessages(processId, pollInterval = 3000)`); the
/// test runs the same logic ten times faster, every other delay scaled alike.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// The UI's poller, started on a process before its agent has sent anything, keeps
/// polling through `200 []`, sees every message the worker notifies as it comes, and
/// stops by itself at the terminal status, with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uis_poller_started_before_the_first_message_follows_the_process_to_its_end() {
    for backend in Backend::ALL {
        let app = TestApp::spawn(backend).await;
        let process = process_id();
        let mut poller = tokio::process::Command::new("node")
            .arg(POLLER)
            .env("CUDU_ENDPOINT", &app.base)
            .env("PROCESS_ID", &process)
            .env("POLL_INTERVAL_MS", POLL_INTERVAL.as_millis().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node is installed (the poller test runs the UI's logic in Node)");
        let mut lines = BufReader::new(poller.stdout.take().expect("stdout")).lines();
        let mut polls: Vec<Value> = Vec::new();
        // Two polls of a process not known yet: both `200 []`.
        for _ in 0..2 {
            let poll = next_report(&mut lines).await;
            assert_eq!(poll["event"], "poll", "{poll}");
            assert_eq!(poll["count"], 0, "{poll}");
            polls.push(poll);
        }
        let n = 6;
        for turn in 1..=n {
            let id = format!("w-{turn}");
            assert_eq!(
                notify(&app, &notification(&process, &id, turn))
                    .await
                    .status(),
                201
            );
            tokio::time::sleep(POLL_INTERVAL / 2).await;
        }
        app.finish(&process, "completed").await;
        let stopped = loop {
            let poll = next_report(&mut lines).await;
            if poll["event"] == "stopped" {
                break poll;
            }
            polls.push(poll);
        };
        assert!(
            tokio::time::timeout(WAIT, poller.wait())
                .await
                .expect("the poller exits once stopped")
                .expect("wait")
                .success(),
            "{backend:?}"
        );
        assert_eq!(
            stopped["reason"], "terminal status completed",
            "{backend:?}"
        );
        assert_eq!(stopped["errors"], 0, "{backend:?}");
        let counts: Vec<u64> = polls.iter().map(|p| p["count"].as_u64().unwrap()).collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]) && counts.last() == Some(&n),
            "{backend:?}: message counts poll by poll {counts:?}"
        );
        assert!(
            counts.iter().any(|&c| c > 0 && c < n),
            "{backend:?}: the poller saw the process while it ran: {counts:?}"
        );
        let shown = stopped["messages"].as_array().expect("the UI's messages");
        let ids: Vec<&str> = shown.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, (1..=n).map(|t| format!("w-{t}")).collect::<Vec<_>>());
        assert_eq!(
            shown[0]["model"],
            json!({ "ai_model": "claude-sonnet-4-5", "version": "20250929" })
        );
    }
}

/// The poller's next JSON line.
async fn next_report(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> Value {
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the poller reports within 20 s")
        .expect("read the poller's output")
        .expect("the poller reports before it exits");
    serde_json::from_str(&line).expect("the poller writes JSON lines")
}

/// `succeeded`, the status agent-stream's own docs use, is not one the UI knows as
/// terminal (completed, success, failed, error): the poller goes on polling a finished
/// process, each time getting the same array. It never fails; it only never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uis_poller_does_not_stop_at_a_status_it_does_not_know() {
    let app = TestApp::spawn(Backend::Memory).await;
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    app.finish(&process, "succeeded").await;
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("node")
            .arg(POLLER)
            .env("CUDU_ENDPOINT", &app.base)
            .env("PROCESS_ID", &process)
            .env("POLL_INTERVAL_MS", POLL_INTERVAL.as_millis().to_string())
            .env("MAX_POLLS", "6")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the poller gives up after MAX_POLLS")
    .expect("node is installed");
    let reports: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON lines"))
        .collect();
    let last = reports.last().expect("reports");
    assert_eq!(last["reason"], "gave up after 6 polls", "{last}");
    assert_eq!(last["errors"], 0);
    assert_eq!(last["status"], "succeeded");
    assert_eq!(last["messages"].as_array().map(Vec::len), Some(2));
}
