//! Process lifecycle: register, show, finish.

use serde_json::Value;

use agent_stream_testkit::app::TestApp;
use agent_stream_testkit::fixtures::{messages, process_id};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    registering_answers_201_then_200_with_the_process,
    a_process_not_known_yet_reads_as_empty_and_running_but_its_record_is_a_404,
    appending_makes_a_process_known,
    finishing_is_idempotent_for_the_same_status_and_409_for_another,
    finishing_an_unknown_process_is_a_404,
    a_finish_body_without_a_valid_status_is_a_400,
    the_process_view_counts_messages_and_names_the_last_stream_id,
);

async fn registering_answers_201_then_200_with_the_process(app: TestApp) {
    let process = process_id();
    let created = app.put_process(&process).await;
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["process_id"], process);
    assert_eq!(body["status"], "running");
    assert_eq!(body["last_stream_id"], "0-0");
    assert_eq!(body["message_count"], 0);
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["finished_at"], Value::Null);

    let again = app.put_process(&process).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["created_at"], body["created_at"]);
}

/// The platform opens a process's page before its agent has started: reading a
/// process not known yet is not an error, but its record (and finishing it) is.
async fn a_process_not_known_yet_reads_as_empty_and_running_but_its_record_is_a_404(app: TestApp) {
    let process = process_id();
    let response = app
        .http
        .get(app.url(&format!("/processes/{process}")))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "process_not_found");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&process));

    let messages = format!("/processes/{process}/messages");
    for (path, accept) in [
        (messages.clone(), Some("application/json")),
        (messages.clone(), Some("*/*")),
        (messages.clone(), None),
        (
            format!("{messages}?follow=false"),
            Some("text/event-stream"),
        ),
        (format!("{messages}/stream?follow=false"), None),
    ] {
        let request = app.http.get(app.url(&path));
        let request = match accept {
            Some(accept) => request.header("accept", accept),
            None => request,
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{path} ({accept:?})");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            serde_json::json!([]),
            "{path} ({accept:?})"
        );
    }
    for (path, accept, content_type) in [
        (messages.clone(), "text/event-stream", "text/event-stream"),
        (
            messages.clone(),
            "application/x-ndjson",
            "application/x-ndjson",
        ),
        (format!("{messages}/stream"), "*/*", "application/x-ndjson"),
    ] {
        let response = app
            .http
            .get(app.url(&path))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path} ({accept}) follows");
        assert_eq!(response.headers()["content-type"], content_type);
    }
    assert_eq!(
        app.get_process(&process).await.status(),
        404,
        "reading a process registers nothing"
    );
}

async fn appending_makes_a_process_known(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 1)).await;
    let body: Value = app.get_process(&process).await.json().await.unwrap();
    assert_eq!(body["status"], "running");
    assert_eq!(body["message_count"], 1);
}

async fn finishing_is_idempotent_for_the_same_status_and_409_for_another(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    let finished = app.finish(&process, "succeeded").await;
    assert_eq!(finished.status(), 200);
    let finished: Value = finished.json().await.unwrap();
    assert_eq!(finished["status"], "succeeded");
    assert!(finished["finished_at"].is_string());

    let again = app.finish(&process, "succeeded").await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        again["finished_at"], finished["finished_at"],
        "the same status again changes nothing"
    );

    let conflict = app.finish(&process, "failed").await;
    assert_eq!(conflict.status(), 409);
    let conflict: Value = conflict.json().await.unwrap();
    assert_eq!(conflict["error"]["code"], "status_conflict");
    let shown: Value = app.get_process(&process).await.json().await.unwrap();
    assert_eq!(shown["status"], "succeeded");
}

async fn finishing_an_unknown_process_is_a_404(app: TestApp) {
    let process = process_id();
    assert_eq!(app.finish(&process, "succeeded").await.status(), 404);
    assert_eq!(
        app.get_process(&process).await.status(),
        404,
        "a failed finish registers nothing"
    );
}

async fn a_finish_body_without_a_valid_status_is_a_400(app: TestApp) {
    let process = process_id();
    app.put_process(&process).await;
    let url = app.url(&format!("/processes/{process}/finish"));
    for body in [
        "",
        "{}",
        "not json",
        r#"{"status": 7}"#,
        r#"{"status": ""}"#,
        r#"{"status": "running"}"#,
        r#"{"status": "a b"}"#,
    ] {
        let response = app.http.post(&url).body(body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body:?}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["code"].is_string() && error["error"]["message"].is_string(),
            "{error}"
        );
    }
    let shown: Value = app.get_process(&process).await.json().await.unwrap();
    assert_eq!(shown["status"], "running");
}

async fn the_process_view_counts_messages_and_names_the_last_stream_id(app: TestApp) {
    let process = process_id();
    app.append_batch(&process, &messages("m", 7)).await;
    let shown: Value = app.get_process(&process).await.json().await.unwrap();
    assert_eq!(shown["message_count"], 7);
    assert_eq!(shown["last_stream_id"], "7-0");
}
