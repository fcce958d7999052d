//! Bad input: a clear JSON error, and nothing stored.

use serde_json::Value;

use agent_stream_testkit::app::TestApp;
use agent_stream_testkit::fixtures::{messages, process_id, seqs};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    malformed_process_ids_are_a_400,
    malformed_cursors_are_a_400_in_every_format,
    malformed_bodies_are_a_400_and_store_nothing,
    a_message_over_the_size_limit_is_a_413_and_stores_nothing,
    a_bad_limit_is_a_400,
    an_unknown_route_is_a_json_404,
);

async fn assert_error(response: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(response.status(), status, "{what}");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{what}"
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{what}: {body}");
    assert!(
        !body["error"]["message"].as_str().unwrap().is_empty(),
        "{what}: {body}"
    );
    body
}

async fn malformed_process_ids_are_a_400(app: TestApp) {
    let too_long = "x".repeat(129);
    for id in [
        "a%3Ab",
        "a%20b",
        "a%2Fb",
        "%FF",
        "%2A",
        "%7Bx%7D",
        too_long.as_str(),
        "caf%C3%A9",
    ] {
        for (method, path) in [
            ("GET", format!("/processes/{id}")),
            ("PUT", format!("/processes/{id}")),
            ("GET", format!("/processes/{id}/messages")),
            ("POST", format!("/processes/{id}/messages")),
            ("POST", format!("/processes/{id}/finish")),
        ] {
            let request = app.http.request(method.parse().unwrap(), app.url(&path));
            let request = if method == "POST" {
                request.body(messages("m", 1)[0].to_string())
            } else {
                request
            };
            let body = assert_error(
                request.send().await.unwrap(),
                400,
                &format!("{method} {path}"),
            )
            .await;
            assert_eq!(body["error"]["code"], "invalid_process_id");
        }
    }
}

async fn malformed_cursors_are_a_400_in_every_format(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    let url = app.url(&format!("/processes/{process}/messages"));
    for cursor in [
        "abc",
        "-1",
        "1-",
        "1-2-3",
        "+1",
        "1.0",
        "18446744073709551616",
        "9223372036854775808-0",
    ] {
        for accept in [
            "text/event-stream",
            "application/x-ndjson",
            "application/json",
        ] {
            let by_param = app
                .http
                .get(&url)
                .query(&[("after", cursor)])
                .header("accept", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(
                assert_error(by_param, 400, &format!("after={cursor} {accept}")).await["error"]
                    ["code"],
                "invalid_cursor"
            );
            let by_header = app
                .http
                .get(&url)
                .header("last-event-id", cursor)
                .header("accept", accept)
                .send()
                .await
                .unwrap();
            assert_error(by_header, 400, &format!("Last-Event-ID: {cursor} {accept}")).await;
        }
    }
}

async fn malformed_bodies_are_a_400_and_store_nothing(app: TestApp) {
    let process = process_id();
    let bodies = [
        "",
        "   ",
        "not json",
        "{",
        "[]",
        "null",
        "42",
        r#""a string""#,
        r#"{"payload": {}}"#,
        r#"{"type": "T"}"#,
        r#"{"type": "T", "payload": [1, 2]}"#,
        r#"{"type": "T", "payload": "text"}"#,
        r#"{"type": 5, "payload": {}}"#,
        r#"{"type": "T", "payload": {}, "turn": "seven"}"#,
        r#"{"type": "T", "payload": {}, "turn": 1.5}"#,
        r#"{"type": "T", "payload": {}, "id": 12}"#,
        r#"{"type": "T", "payload": {}, "id": ""}"#,
        r#"[{"type": "T", "payload": {}}, {"type": "T"}]"#,
        r#"[{"type": "T", "payload": {}}, 7]"#,
        r#"{"type": "T", "payload": {}} trailing"#,
    ];
    for body in bodies {
        assert_error(app.post_messages(&process, body).await, 400, body).await;
    }
    assert_eq!(
        app.get_process(&process).await.status(),
        404,
        "no bad body registers the process"
    );

    app.append(&process, &messages("ok", 1)).await;
    for body in bodies {
        assert_error(app.post_messages(&process, body).await, 400, body).await;
    }
    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    assert_eq!(seqs(&stored), vec![1], "a half-valid batch stores nothing");
}

async fn a_message_over_the_size_limit_is_a_413_and_stores_nothing(app: TestApp) {
    let process = process_id();
    let big = serde_json::json!({ "type": "T", "payload": { "text": "x".repeat(1 << 20) } });
    let body = assert_error(
        app.post_messages(&process, big.to_string()).await,
        413,
        "a single message over 1 MiB",
    )
    .await;
    assert_eq!(body["error"]["code"], "message_too_large");
    let batch = Value::from(vec![messages("m", 1)[0].clone(), big]);
    assert_error(
        app.post_messages(&process, batch.to_string()).await,
        413,
        "a batch holding one",
    )
    .await;
    assert_eq!(app.get_process(&process).await.status(), 404);

    let huge_body = format!(
        "[{}]",
        vec![r#"{"type":"T","payload":{"t":"yyyyyyyy"}}"#; 600_000].join(",")
    );
    let body = assert_error(
        app.post_messages(&process, huge_body).await,
        413,
        "a body over 16 MiB",
    )
    .await;
    assert_eq!(body["error"]["code"], "body_too_large");
    assert_eq!(app.get_process(&process).await.status(), 404);
}

async fn a_bad_limit_is_a_400(app: TestApp) {
    let process = process_id();
    app.put_process(&process).await;
    for limit in ["0", "10001", "-1", "abc", "1.5", ""] {
        let response = app.snapshot(&process, &format!("&limit={limit}")).await;
        assert_error(response, 400, &format!("limit={limit}")).await;
    }
    assert_eq!(app.snapshot(&process, "&limit=10000").await.status(), 200);
}

async fn an_unknown_route_is_a_json_404(app: TestApp) {
    let response = app.http.get(app.url("/nothing/here")).send().await.unwrap();
    assert_error(response, 404, "unknown route").await;
    let response = app
        .http
        .delete(app.url("/processes/p1"))
        .send()
        .await
        .unwrap();
    assert_error(response, 405, "wrong method").await;
}
