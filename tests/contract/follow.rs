//! Follows: history then live, resume from any cursor, the end, heartbeats, many
//! followers.

use std::time::Duration;

use serde_json::Value;

use agent_stream_testkit::app::{Backend, End, Format, Item, TestApp, WAIT};
use agent_stream_testkit::fixtures::{messages, process_id, seqs, session};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    a_follow_sends_history_then_live_messages_then_the_end,
    resume_from_any_cursor_is_exact,
    the_after_parameter_wins_over_last_event_id,
    the_end_carries_an_id_right_after_the_last_message,
    a_reconnect_with_the_end_id_gets_204_over_sse_and_the_end_alone_over_ndjson,
    a_finished_empty_process_sends_only_the_end,
    many_concurrent_followers_all_receive_the_same_exact_sequence,
    the_stream_path_is_ndjson,
    follow_format_follows_accept,
    live_messages_are_byte_for_byte_the_stored_ones,
    a_follow_opened_before_the_process_is_known_gets_every_message_then_the_end,
);

agent_stream_testkit::on_the_cluster!(
    a_follow_sends_history_then_live_messages_then_the_end,
    resume_from_any_cursor_is_exact,
    the_end_carries_an_id_right_after_the_last_message,
    many_concurrent_followers_all_receive_the_same_exact_sequence,
    live_messages_are_byte_for_byte_the_stored_ones,
    a_follow_opened_before_the_process_is_known_gets_every_message_then_the_end,
);

async fn a_follow_sends_history_then_live_messages_then_the_end(app: TestApp) {
    for format in [Format::Sse, Format::Ndjson] {
        let process = process_id();
        app.append(&process, &messages("old", 3)).await;
        let mut follow = app.follow(&process, format, None).await;
        assert_eq!(seqs(&follow.take_messages(3).await), vec![1, 2, 3]);

        app.append(&process, &messages("new", 2)).await;
        let live = follow.take_messages(2).await;
        assert_eq!(seqs(&live), vec![4, 5]);
        assert_eq!(live[0]["id"], "new-1");

        app.finish(&process, "succeeded").await;
        let (rest, end) = follow.until_end().await;
        assert!(rest.is_empty());
        assert_eq!(
            end,
            End {
                status: "succeeded".into(),
                stream_id: "5-1".into()
            }
        );
    }
}

/// The platform opens a process's page before its agent has booted: the follow waits
/// for a process nobody registered yet, then delivers it from its first message on.
async fn a_follow_opened_before_the_process_is_known_gets_every_message_then_the_end(app: TestApp) {
    let process = process_id();
    let stream = app.url(&format!("/processes/{process}/messages/stream"));
    let mut follows = vec![
        app.follow(&process, Format::Sse, None).await,
        app.follow(&process, Format::Ndjson, None).await,
        // The existing API's streaming path, as a client that accepts anything asks.
        app.follow_request(
            Format::Ndjson,
            app.http.get(&stream).header("accept", "*/*"),
        )
        .await,
    ];
    for follow in &mut follows {
        assert!(
            matches!(
                follow.next_within(Duration::from_millis(300)).await,
                None | Some(Some(Item::Heartbeat))
            ),
            "nothing to deliver yet, and the follow stays open"
        );
    }
    app.append(&process, &messages("m", 2)).await;
    app.append_batch(&process, &messages("n", 3)).await;
    app.finish(&process, "succeeded").await;
    for follow in follows {
        let (got, end) = follow.until_end().await;
        assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
        assert_eq!(
            end,
            End {
                status: "succeeded".into(),
                stream_id: "5-1".into()
            }
        );
    }
}

async fn resume_from_any_cursor_is_exact(app: TestApp) {
    let process = process_id();
    let n = 6;
    app.append_batch(&process, &messages("m", n)).await;
    app.finish(&process, "succeeded").await;
    for cursor in 0..=n as u64 {
        let expected: Vec<u64> = (cursor + 1..=n as u64).collect();
        for format in [Format::Sse, Format::Ndjson] {
            for written in [cursor.to_string(), format!("{cursor}-0")] {
                let (got, end) = app.follow_to_end(&process, format, Some(&written)).await;
                assert_eq!(seqs(&got), expected, "after={written} {format:?}");
                assert_eq!(end.stream_id, format!("{n}-1"));
                let by_header = app
                    .follow_request(
                        format,
                        app.http
                            .get(app.url(&format!("/processes/{process}/messages")))
                            .header("last-event-id", &written),
                    )
                    .await;
                let (got, _) = by_header.until_end().await;
                assert_eq!(seqs(&got), expected, "Last-Event-ID: {written} {format:?}");
            }
        }
    }
}

async fn the_after_parameter_wins_over_last_event_id(app: TestApp) {
    let process = process_id();
    app.append_batch(&process, &messages("m", 5)).await;
    app.finish(&process, "succeeded").await;
    let request = app
        .http
        .get(app.url(&format!("/processes/{process}/messages?after=3-0")))
        .header("last-event-id", "1-0");
    let (got, _) = app
        .follow_request(Format::Sse, request)
        .await
        .until_end()
        .await;
    assert_eq!(seqs(&got), vec![4, 5]);
}

async fn the_end_carries_an_id_right_after_the_last_message(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 4)).await;
    let mut follow = app.follow(&process, Format::Sse, Some("2")).await;
    assert_eq!(seqs(&follow.take_messages(2).await), vec![3, 4]);
    app.finish(&process, "cancelled").await;
    let (_, end) = follow.until_end().await;
    assert_eq!(
        end,
        End {
            status: "cancelled".into(),
            stream_id: "4-1".into()
        }
    );
}

async fn a_reconnect_with_the_end_id_gets_204_over_sse_and_the_end_alone_over_ndjson(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 3)).await;
    app.finish(&process, "succeeded").await;
    let url = app.url(&format!("/processes/{process}/messages"));
    let sse = app
        .http
        .get(&url)
        .header("accept", "text/event-stream")
        .header("last-event-id", "3-1")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 204);
    assert!(sse.bytes().await.unwrap().is_empty());

    let (got, end) = app
        .follow_to_end(&process, Format::Ndjson, Some("3-1"))
        .await;
    assert!(got.is_empty());
    assert_eq!(
        end,
        End {
            status: "succeeded".into(),
            stream_id: "3-1".into()
        }
    );

    let (got, _) = app.follow_to_end(&process, Format::Sse, Some("3-0")).await;
    assert!(
        got.is_empty(),
        "from the last message's id, only the end is left"
    );
}

async fn a_finished_empty_process_sends_only_the_end(app: TestApp) {
    let process = process_id();
    app.put_process(&process).await;
    app.finish(&process, "failed").await;
    for format in [Format::Sse, Format::Ndjson] {
        let (got, end) = app.follow_to_end(&process, format, None).await;
        assert!(got.is_empty());
        assert_eq!(
            end,
            End {
                status: "failed".into(),
                stream_id: "0-1".into()
            }
        );
    }
}

async fn many_concurrent_followers_all_receive_the_same_exact_sequence(app: TestApp) {
    let process = process_id();
    app.append_batch(&process, &messages("early", 10)).await;
    let (app_ref, process_ref) = (&app, &process);
    let followers: Vec<_> = (0..40u64)
        .map(|i| async move {
            let format = if i % 2 == 0 {
                Format::Sse
            } else {
                Format::Ndjson
            };
            let cursor = i % 5;
            (
                cursor,
                app_ref
                    .follow(process_ref, format, Some(&cursor.to_string()))
                    .await,
            )
        })
        .collect();
    let followers = futures::future::join_all(followers).await;
    let readers: Vec<_> = followers
        .into_iter()
        .map(|(cursor, follow)| tokio::spawn(async move { (cursor, follow.until_end().await) }))
        .collect();

    for batch in 0..10 {
        app.append_batch(&process, &messages(&format!("live{batch}"), 9))
            .await;
        app.append(&process, &messages(&format!("single{batch}"), 1))
            .await;
    }
    app.finish(&process, "succeeded").await;

    let all: Vec<Value> = app
        .snapshot(&process, "&limit=10000")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&all), (1..=110).collect::<Vec<_>>());
    for reader in readers {
        let (cursor, (got, end)) = reader.await.unwrap();
        assert_eq!(
            got,
            all[cursor as usize..].to_vec(),
            "follower from {cursor}"
        );
        assert_eq!(end.stream_id, "110-1");
    }
}

async fn the_stream_path_is_ndjson(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    app.finish(&process, "succeeded").await;
    let response = app
        .http
        .get(app.url(&format!("/processes/{process}/messages/stream")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(seqs(&lines[..2]), vec![1, 2]);
    assert_eq!(
        lines[2],
        serde_json::json!({ "event": "end", "status": "succeeded", "stream_id": "2-1" })
    );
}

async fn follow_format_follows_accept(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 1)).await;
    app.finish(&process, "succeeded").await;
    let url = app.url(&format!("/processes/{process}/messages"));
    for (accept, content_type) in [
        (Some("text/event-stream"), "text/event-stream"),
        (Some("application/x-ndjson"), "application/x-ndjson"),
        (Some("*/*"), "application/json"),
        (None, "application/json"),
        (Some("application/json"), "application/json"),
        (
            Some("text/html, application/json;q=0.9, */*;q=0.1"),
            "application/json",
        ),
    ] {
        let request = app.http.get(&url);
        let request = match accept {
            Some(accept) => request.header("accept", accept),
            None => request,
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            content_type,
            "Accept: {accept:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_follow_sends_heartbeats() {
    for backend in Backend::ALL {
        let app = TestApp::spawn_with(backend, |config| {
            config.follow.heartbeat = Duration::from_millis(300)
        })
        .await;
        let (process, not_known_yet) = (process_id(), process_id());
        app.put_process(&process).await;
        for process in [&process, &not_known_yet] {
            for format in [Format::Sse, Format::Ndjson] {
                let mut follow = app.follow(process, format, None).await;
                assert_eq!(
                    follow.next_within(Duration::from_secs(5)).await,
                    Some(Some(Item::Heartbeat)),
                    "{format:?} on {backend:?}"
                );
            }
        }
    }
}

/// What a follower receives live (on the real backend: from Redis, as the writer
/// rendered it) is the very bytes a later reader gets from the store (rendered by
/// PostgreSQL's append function).
async fn live_messages_are_byte_for_byte_the_stored_ones(app: TestApp) {
    let process = process_id();
    app.put_process(&process).await;
    let ndjson = |app: &TestApp| {
        app.http
            .get(app.url(&format!("/processes/{process}/messages")))
            .header("accept", "application/x-ndjson")
            .send()
    };
    let live = ndjson(&app).await.expect("open the live follow");
    let live = tokio::spawn(async move { live.text().await.expect("read the live follow") });
    let session = session();
    for message in &session {
        app.append(&process, std::slice::from_ref(message)).await;
    }
    app.append_batch(&process, &messages("batch", 3)).await;
    app.finish(&process, "succeeded").await;
    let live = tokio::time::timeout(WAIT, live)
        .await
        .expect("the live follow ends")
        .unwrap();
    let stored = ndjson(&app).await.unwrap().text().await.unwrap();
    let lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(lines(&live).len(), session.len() + 3 + 1);
    assert_eq!(lines(&live), lines(&stored));
}
