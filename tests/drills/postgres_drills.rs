//! PostgreSQL is the truth: while it is down, appends are refused (503, Retry-After,
//! JSON error, nothing stored) and open follows wait for it; when it is back, the
//! service recovers by itself.

use std::time::{Duration, Instant};

use agent_stream_testkit::client::{wait_for, Outcome};
use agent_stream_testkit::rig::{error_code, serial, Checks, Rig};

/// Drill 3: PostgreSQL stopped (`pg_ctl -m immediate stop`) mid-stream, started again
/// ~2 s later (or once an append has been refused, if that takes longer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_stream_refuses_appends_and_keeps_follows() {
    let _serial = serial().await;
    let mut checks = Checks::new("postgres stopped mid-stream");
    let mut rig = Rig::start("pg-stop", true, &[]);
    rig.register().await;
    let (followers, appender) = rig.go_live(false, 10, 5).await;

    // Appends sent while pg_ctl stops the server may be stored or refused; from
    // `stopped_at` on, PostgreSQL is gone and every append must be refused.
    let stopping_at = Instant::now();
    rig.pg.stop_immediate();
    let stopped_at = Instant::now();
    let seq_at_stop = appender.max_seq();
    checks.note(format!(
        "PostgreSQL stopped at seq {seq_at_stop} (pg_ctl took {:?})",
        stopped_at.saturating_duration_since(stopping_at)
    ));
    checks.check_result(
        rig.api
            .wait_readyz(503, Some("postgres"), Duration::from_secs(5))
            .await,
        "/readyz is 503 naming postgres while PostgreSQL is down",
    );

    // Keep it down for 2.5 s, and until an append sent after the stop has been
    // answered (at most 8 s).
    tokio::time::sleep_until((stopped_at + Duration::from_millis(2500)).into()).await;
    let answered_during =
        |a: &agent_stream_testkit::client::Appender| a.count_where(|r| r.sent >= stopped_at);
    wait_for(
        (stopped_at + Duration::from_secs(8)).saturating_duration_since(Instant::now()),
        || answered_during(&appender) >= 1,
    )
    .await;
    let outage = stopped_at.elapsed();
    let during: Vec<_> = appender
        .records()
        .into_iter()
        .filter(|r| r.sent >= stopped_at)
        .collect();
    let pending = appender
        .pending_since()
        .map(|since| {
            format!(
                "; one sent {:?} after the stop still waits for its answer",
                since.saturating_duration_since(stopped_at)
            )
        })
        .unwrap_or_default();
    checks.check(
        !during.is_empty()
            && during
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Refused { status: 503, .. })),
        format!(
            "an append sent while PostgreSQL is down is answered 503 while it is still down ({outage:?} outage): {} answered, {:?}{pending}",
            during.len(),
            during.iter().map(|r| &r.outcome).collect::<Vec<_>>()
        ),
    );
    checks.note(format!("PostgreSQL down for {outage:?}"));

    rig.pg.launch();
    let restarted_at = Instant::now();
    checks.check(
        Rig::appends_created_again(&appender, restarted_at, Duration::from_secs(15)).await,
        "the service recovers without a restart: appends are answered 201 again",
    );
    checks.check_result(
        rig.api
            .wait_readyz(200, None, Duration::from_secs(10))
            .await,
        "/readyz is 200 again after PostgreSQL is back",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = appender.max_seq();
    Rig::check_followers_reach(
        &mut checks,
        &followers,
        after,
        Duration::from_secs(10),
        "open follows continue after PostgreSQL is back",
    )
    .await;
    for follower in &followers {
        follower.with_state(|state| {
            checks.check(
                state.connections == 1 && state.breaks.is_empty(),
                format!(
                    "a {} follow stays open through the PostgreSQL outage: {} connection(s), breaks {:?}",
                    follower.spec.format.name(),
                    state.connections,
                    state.breaks
                ),
            );
        });
    }

    let records = appender.stop().await;
    for record in &records {
        match &record.outcome {
            Outcome::Created { .. } => {}
            Outcome::Refused {
                status,
                retry_after,
                body,
            } => {
                let waited = record.answered.saturating_duration_since(record.sent);
                checks.note(format!("{} refused after {waited:?}", record.id));
                checks.check(
                    waited <= Duration::from_secs(2),
                    format!(
                        "{} is refused promptly (within 2 s) while PostgreSQL is down, not held: it waited {waited:?}",
                        record.id
                    ),
                );
                checks.check(
                    *status == 503 && retry_after.is_some() && error_code(body).is_some(),
                    format!(
                        "{} was refused with {status}, Retry-After {retry_after:?}, body {body}: expected 503 with Retry-After and a JSON error",
                        record.id
                    ),
                );
            }
            other => {
                checks.check(false, format!("{}: {other:?}", record.id));
            }
        }
    }
    rig.finish_and_verify(&mut checks, followers, &records)
        .await;
    checks.finish();
}
