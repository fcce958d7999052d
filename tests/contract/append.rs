//! Appending: stream IDs, idempotency by id, the fixture round trip.

use serde_json::{json, Value};

use agent_stream_testkit::app::{Format, TestApp};
use agent_stream_testkit::fixtures::{messages, process_id, seqs, session};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    the_fixture_round_trips_unchanged,
    each_message_gets_the_next_stream_id_and_201,
    a_batch_answers_one_id_and_stream_id_per_message_in_order,
    a_stored_id_returns_its_original_stream_id_and_is_not_stored_twice,
    a_batch_repeating_an_id_stores_it_once,
    a_batch_partly_stored_keeps_the_stored_seqs_and_numbers_the_rest_next,
    a_message_without_id_gets_a_generated_one,
    a_finished_process_takes_no_more_messages,
    a_retry_of_a_stored_message_after_finish_still_answers_200,
);

agent_stream_testkit::on_the_cluster!(
    each_message_gets_the_next_stream_id_and_201,
    a_batch_answers_one_id_and_stream_id_per_message_in_order,
    a_stored_id_returns_its_original_stream_id_and_is_not_stored_twice,
    a_finished_process_takes_no_more_messages,
);

/// Every field the writer sent comes back as sent; the service adds only
/// `stream_id` and `created_at`.
fn assert_round_trip(sent: &[Value], got: &[Value]) {
    assert_eq!(sent.len(), got.len());
    for (i, (sent, got)) in sent.iter().zip(got).enumerate() {
        let mut got = got.as_object().unwrap().clone();
        assert_eq!(
            got.remove("stream_id"),
            Some(Value::from(format!("{}-0", i + 1)))
        );
        let created_at = got.remove("created_at").unwrap();
        let created_at = created_at.as_str().unwrap();
        // RFC 3339 in UTC with microseconds, as CONTRACT.md shows it.
        let parsed = chrono::DateTime::parse_from_rfc3339(created_at).expect(created_at);
        assert_eq!(
            created_at,
            parsed.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
        assert_eq!(&Value::Object(got), sent, "message {}", i + 1);
    }
}

async fn the_fixture_round_trips_unchanged(app: TestApp) {
    let process = process_id();
    let sent = session();
    let ids = app.append(&process, &sent).await;
    assert_eq!(
        ids,
        (1..=sent.len())
            .map(|s| format!("{s}-0"))
            .collect::<Vec<_>>()
    );
    app.finish(&process, "succeeded").await;

    let snapshot: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    assert_round_trip(&sent, &snapshot);
    for format in [Format::Sse, Format::Ndjson] {
        let (followed, end) = app.follow_to_end(&process, format, None).await;
        assert_round_trip(&sent, &followed);
        assert_eq!(followed, snapshot, "a follow sends what a snapshot reads");
        assert_eq!(end.status, "succeeded");
    }
}

async fn each_message_gets_the_next_stream_id_and_201(app: TestApp) {
    let process = process_id();
    for (i, message) in messages("m", 3).iter().enumerate() {
        let response = app.post_messages(&process, message.to_string()).await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({ "id": format!("m-{}", i + 1), "stream_id": format!("{}-0", i + 1) })
        );
    }
}

async fn a_batch_answers_one_id_and_stream_id_per_message_in_order(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("first", 2)).await;
    let response = app
        .post_messages(&process, Value::from(messages("m", 3)).to_string())
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!([
            { "id": "m-1", "stream_id": "3-0" },
            { "id": "m-2", "stream_id": "4-0" },
            { "id": "m-3", "stream_id": "5-0" },
        ])
    );
}

async fn a_stored_id_returns_its_original_stream_id_and_is_not_stored_twice(app: TestApp) {
    let process = process_id();
    let sent = messages("m", 3);
    app.append(&process, &sent).await;
    let mut changed = sent[1].clone();
    changed["payload"] = json!({ "other": true });
    let response = app.post_messages(&process, changed.to_string()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "id": "m-2", "stream_id": "2-0" }));

    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    assert_eq!(seqs(&stored), vec![1, 2, 3]);
    assert_eq!(
        stored[1]["payload"], sent[1]["payload"],
        "the first write wins"
    );
}

async fn a_batch_repeating_an_id_stores_it_once(app: TestApp) {
    let process = process_id();
    let sent = messages("m", 2);
    app.append(&process, &sent[..1]).await;
    let batch = vec![sent[0].clone(), sent[1].clone(), sent[1].clone()];
    let answer = app.append_batch(&process, &batch).await;
    let stream_ids: Vec<&str> = answer
        .iter()
        .map(|a| a["stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(stream_ids, ["1-0", "2-0", "2-0"]);
    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    assert_eq!(seqs(&stored), vec![1, 2]);
}

/// A retry of a batch of which some messages were stored already (a writer that timed
/// out and resent more): the stored ones keep their seqs, the rest take the next ones in
/// the batch's order, the same retry again changes nothing, and the next append follows
/// on without a gap.
async fn a_batch_partly_stored_keeps_the_stored_seqs_and_numbers_the_rest_next(app: TestApp) {
    let process = process_id();
    let sent = messages("m", 5);
    app.append(&process, &sent[..2]).await;
    let batch = vec![
        sent[2].clone(),
        sent[0].clone(),
        sent[3].clone(),
        sent[1].clone(),
    ];
    let expected = json!([
        { "id": "m-3", "stream_id": "3-0" },
        { "id": "m-1", "stream_id": "1-0" },
        { "id": "m-4", "stream_id": "4-0" },
        { "id": "m-2", "stream_id": "2-0" },
    ]);
    let response = app
        .post_messages(&process, Value::from(batch.clone()).to_string())
        .await;
    assert_eq!(response.status(), 201, "some of it is new");
    assert_eq!(response.json::<Value>().await.unwrap(), expected);
    let response = app
        .post_messages(&process, Value::from(batch).to_string())
        .await;
    assert_eq!(response.status(), 200, "all of it is stored");
    assert_eq!(response.json::<Value>().await.unwrap(), expected);
    assert_eq!(app.append(&process, &sent[4..]).await, ["5-0"]);

    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    assert_eq!(seqs(&stored), vec![1, 2, 3, 4, 5]);
    let ids: Vec<&str> = stored.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["m-1", "m-2", "m-3", "m-4", "m-5"]);
}

async fn a_message_without_id_gets_a_generated_one(app: TestApp) {
    let process = process_id();
    let response = app
        .post_messages(&process, r#"{"type": "SystemMessage", "payload": {}}"#)
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    assert_eq!(stored[0]["id"], id);
}

async fn a_finished_process_takes_no_more_messages(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    app.finish(&process, "failed").await;
    for body in [
        messages("late", 1)[0].to_string(),
        Value::from(messages("late", 2)).to_string(),
    ] {
        let response = app.post_messages(&process, body).await;
        assert_eq!(response.status(), 409);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "process_finished");
    }
    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    assert_eq!(seqs(&stored), vec![1, 2], "a rejected write stores nothing");
}

async fn a_retry_of_a_stored_message_after_finish_still_answers_200(app: TestApp) {
    let process = process_id();
    let sent = messages("m", 2);
    app.append(&process, &sent).await;
    app.finish(&process, "succeeded").await;
    let response = app.post_messages(&process, sent[1].to_string()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["stream_id"], "2-0");
    let mixed = app
        .post_messages(
            &process,
            Value::from(vec![sent[0].clone(), messages("new", 1)[0].clone()]).to_string(),
        )
        .await;
    assert_eq!(
        mixed.status(),
        409,
        "a batch with any new message is refused whole"
    );
}
