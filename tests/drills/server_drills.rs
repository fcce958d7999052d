//! The server itself dies (kill -9) or is told to stop (SIGTERM) and is restarted on the
//! same port: nothing answered 201 is lost, and a client that reconnects with the last
//! stream ID it saw gets exactly the rest.

use std::time::{Duration, Instant};

use agent_stream_testkit::client::{wait_for, AppendRecord, Attempt, Format, Outcome};
use agent_stream_testkit::fixtures::message;
use agent_stream_testkit::rig::{error_code, serial, Checks, Rig};

/// Drill 4: kill -9 mid-stream, restarted on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_stream_loses_nothing_and_clients_resume_exactly() {
    let _serial = serial().await;
    let mut checks = Checks::new("server kill -9");
    let mut rig = Rig::start("kill9", true, &[]);
    rig.register().await;
    // Idempotent clients: followers reconnect, and an append without an answer is sent again, same id.
    let (followers, appender) = rig.go_live(true, 15, 10).await;

    rig.server.kill9();
    checks.note(format!("server killed at seq {}", appender.max_seq()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.server.launch();
    let restarted_at = Instant::now();
    checks.check(
        Rig::appends_created_again(&appender, restarted_at, Duration::from_secs(10)).await,
        "appends are answered 201 again after the restart",
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = appender.max_seq();
    Rig::check_followers_reach(
        &mut checks,
        &followers,
        after,
        Duration::from_secs(10),
        "followers resume after the restart",
    )
    .await;
    for follower in &followers {
        let (connections, breaks) = follower.with_state(|s| (s.connections, s.breaks.len()));
        checks.check(
            connections >= 2 && breaks >= 1,
            format!(
                "a {} follower lost its connection and reconnected: {connections} connection(s), {breaks} break(s)",
                follower.spec.format.name()
            ),
        );
    }

    let records = appender.stop().await;
    checks.check(
        records.iter().all(|r| {
            matches!(
                r.outcome,
                Outcome::Created { .. } | Outcome::AlreadyStored { .. }
            )
        }),
        format!(
            "every append ends stored (201, or 200 when a retry finds it): {}",
            agent_stream_testkit::rig::outcome_summary(&records)
        ),
    );
    rig.finish_and_verify(&mut checks, followers, &records)
        .await;
    checks.finish();
}

/// Drill 5: SIGTERM. Open follows end cleanly (SSE: the last frame carries `retry:`), an
/// append in flight completes or is refused cleanly, and after a restart on the same
/// port clients resume exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sigterm_ends_follows_cleanly_and_keeps_appends() {
    let _serial = serial().await;
    let mut checks = Checks::new("server SIGTERM");
    let mut rig = Rig::start("sigterm", true, &[]);
    rig.register().await;
    // Idempotent clients: followers reconnect, and an append without an answer is sent again, same id.
    let (followers, appender) = rig.go_live(true, 15, 10).await;

    // An append in flight: its headers and half its body are on the server when
    // SIGTERM arrives; the rest follows 300 ms later.
    let (release, released) = tokio::sync::oneshot::channel();
    let slow_body = message("slow", 1);
    let slow = tokio::spawn({
        let (api, process, body) = (rig.api.clone(), rig.process.clone(), slow_body.clone());
        async move {
            let sent = Instant::now();
            (
                sent,
                api.append_in_two_halves(&process, &body, released).await,
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    rig.server.sigterm();
    let termed_at = Instant::now();
    checks.note(format!("SIGTERM at seq {}", appender.max_seq()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = release.send(());

    let ended = wait_for(Duration::from_secs(5), || {
        followers
            .iter()
            .all(|f| f.with_state(|s| !s.breaks.is_empty()))
    })
    .await;
    checks.check(
        ended,
        format!(
            "every open follow ends within 5 s of SIGTERM: {}",
            followers
                .iter()
                .map(|f| format!(
                    "{} {} break(s)",
                    f.spec.format.name(),
                    f.with_state(|s| s.breaks.len())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let exit = rig.server.wait_exit(Duration::from_secs(15));
    checks.note(format!(
        "the server exited {:?} after SIGTERM: {exit:?}",
        termed_at.elapsed()
    ));
    checks.check(exit.is_some(), "the server exits within 15 s of SIGTERM");
    checks.check(
        exit.is_some_and(|status| status.success()),
        format!("the server exits with status 0 after SIGTERM: {exit:?}"),
    );
    for follower in &followers {
        let first_break = follower.with_state(|s| s.breaks.first().cloned());
        let Some(first_break) = first_break else {
            continue;
        };
        let name = follower.spec.format.name();
        checks.check(
            first_break.clean,
            format!("the {name} follow's response ends cleanly at SIGTERM, not with an error: {first_break:?}"),
        );
        if follower.spec.format == Format::Sse {
            checks.check(
                first_break.last_frame_retry.is_some(),
                format!("the last SSE frame before the end of the response carries a retry: field: {first_break:?}"),
            );
        }
    }

    let (slow_sent, slow_attempt) = tokio::time::timeout(Duration::from_secs(20), slow)
        .await
        .expect("the in-flight append is answered (or fails) within 20 s")
        .expect("the in-flight append task");
    checks.note(format!(
        "the append in flight at SIGTERM got {slow_attempt:?}"
    ));
    let slow_outcome = match &slow_attempt {
        Attempt::Answered {
            status: 201, body, ..
        } => body["stream_id"]
            .as_str()
            .and_then(agent_stream_testkit::fixtures::seq_of)
            .map(|seq| Outcome::Created { seq }),
        Attempt::Answered {
            status: 503,
            body,
            retry_after,
            ..
        } if error_code(body).is_some() => Some(Outcome::Refused {
            status: 503,
            retry_after: retry_after.clone(),
            body: body.clone(),
        }),
        _ => None,
    };
    checks.check(
        slow_outcome.is_some(),
        format!("an append in flight at SIGTERM completes (201) or is refused cleanly (503 with a JSON error): {slow_attempt:?}"),
    );

    rig.server.launch();
    let restarted_at = Instant::now();
    checks.check(
        Rig::appends_created_again(&appender, restarted_at, Duration::from_secs(10)).await,
        "appends are answered 201 again after the restart",
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = appender.max_seq();
    Rig::check_followers_reach(
        &mut checks,
        &followers,
        after,
        Duration::from_secs(10),
        "followers resume on the restarted server",
    )
    .await;

    let mut records = appender.stop().await;
    checks.note(format!(
        "appends around SIGTERM: {}",
        agent_stream_testkit::rig::outcome_summary(&records)
    ));
    checks.check(
        records.iter().all(|r| {
            matches!(
                r.outcome,
                Outcome::Created { .. } | Outcome::AlreadyStored { .. }
            )
        }),
        format!(
            "every append ends stored (201, or 200 when a retry finds it): {}",
            agent_stream_testkit::rig::outcome_summary(&records)
        ),
    );
    // An append that lost its connection during the shutdown and then turned out to
    // be stored (200 on retry) was not refused cleanly.
    let unclean: Vec<_> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::AlreadyStored { .. }))
        .map(|r| r.id.clone())
        .collect();
    checks.check(
        unclean.is_empty(),
        format!("no append is dropped without an answer after it was stored: {unclean:?}"),
    );
    records.push(AppendRecord {
        n: 0,
        id: slow_body["id"].as_str().unwrap_or_default().to_owned(),
        sent: slow_sent,
        answered: Instant::now(),
        outcome: slow_outcome.unwrap_or(Outcome::Unknown {
            error: format!("{slow_attempt:?}"),
        }),
        failures: Vec::new(),
    });
    rig.finish_and_verify(&mut checks, followers, &records)
        .await;
    checks.finish();
}
