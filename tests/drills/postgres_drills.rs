//! PostgreSQL is the truth: while it is down, appends are refused (503, Retry-After,
//! JSON error, nothing stored) and open follows wait for it; when it is back, the
//! service recovers by itself.

use std::time::{Duration, Instant};

use crate::client::{wait_for, Outcome};
use crate::rig::{error_code, serial, Checks, Rig};

/// Drill 3: PostgreSQL stopped (`pg_ctl -m immediate stop`) mid-stream, started again
/// ~2 s later (or once an append has been refused, if that takes longer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_stream_refuses_appends_and_keeps_follows() {
    let _serial = serial();
    let mut checks = Checks::new("postgres stopped mid-stream");
    let mut rig = Rig::start("pg-stop", true, &[]);
    rig.register().await;
    let mut followers = rig.followers(false);
    let appender = rig.appender(false);

    assert!(
        wait_for(Duration::from_secs(10), || appender.max_seq() >= 10
            && Rig::min_received(&followers) >= 5)
        .await,
        "before the fault, followers must be live: appended {}, received {}",
        appender.max_seq(),
        Rig::received_summary(&followers)
    );
    followers.extend(rig.followers_from(5, false));
    assert!(
        wait_for(Duration::from_secs(5), || Rig::min_received(&followers) >= 10).await,
        "the cursor followers must be live: {}",
        Rig::received_summary(&followers)
    );

    rig.pg.stop_immediate();
    let stopped_at = Instant::now();
    let seq_at_stop = appender.max_seq();
    checks.note(format!("PostgreSQL stopped at seq {seq_at_stop}"));
    checks.check_result(
        rig.api
            .wait_readyz(503, Some("postgres"), Duration::from_secs(5))
            .await,
        "/readyz is 503 naming postgres while PostgreSQL is down",
    );

    // Keep it down for 2.5 s, and until an append sent during the outage has been
    // refused (at most 8 s).
    let refused_during = |a: &crate::client::Appender| {
        a.count_where(|r| r.sent >= stopped_at && matches!(r.outcome, Outcome::Refused { .. }))
    };
    tokio::time::sleep_until((stopped_at + Duration::from_millis(2500)).into()).await;
    let refused_in_time = wait_for(
        (stopped_at + Duration::from_secs(8)).saturating_duration_since(Instant::now()),
        || refused_during(&appender) >= 1,
    )
    .await;
    let outage = stopped_at.elapsed();
    checks.check(
        refused_in_time,
        format!(
            "an append sent while PostgreSQL is down is refused while it is still down (within 8 s); appends sent since the stop: {}",
            appender.count_where(|r| r.sent >= stopped_at)
        ),
    );
    let first_refusal = appender
        .records()
        .into_iter()
        .find(|r| r.sent >= stopped_at && matches!(r.outcome, Outcome::Refused { .. }));
    if let Some(first) = &first_refusal {
        let waited = first.answered.saturating_duration_since(first.sent);
        checks.note(format!(
            "first refusal of an append sent during the outage: answered {:?} after the stop, having waited {waited:?}",
            first.answered.saturating_duration_since(stopped_at),
        ));
        checks.check(
            waited <= Duration::from_secs(2),
            format!("an append during the outage is refused promptly (within 2 s), not held: it waited {waited:?}"),
        );
    }

    rig.pg.launch();
    let restarted_at = Instant::now();
    checks.note(format!("PostgreSQL down for {outage:?}"));
    checks.check(
        wait_for(Duration::from_secs(15), || {
            appender.count_where(|r| {
                r.sent >= restarted_at && matches!(r.outcome, Outcome::Created { .. })
            }) >= 3
        })
        .await,
        "the service recovers without a restart: appends are answered 201 again",
    );
    checks.check_result(
        rig.api.wait_readyz(200, None, Duration::from_secs(10)).await,
        "/readyz is 200 again after PostgreSQL is back",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = appender.max_seq();
    checks.check(
        wait_for(Duration::from_secs(10), || Rig::min_received(&followers) >= after).await,
        format!(
            "open follows continue after PostgreSQL is back (up to seq {after}): {}",
            Rig::received_summary(&followers)
        ),
    );
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
    rig.finish_and_verify(&mut checks, followers, &records).await;
    checks.finish();
}
