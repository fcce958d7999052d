//! Over TLS, the same guarantees: PostgreSQL on `sslmode=verify-full`, Redis on
//! `rediss://` with a password and a private CA (`--redis-tls-ca`). Appends, live
//! follows, resumes from a cursor and a Redis restart, which the server must get
//! through by reconnecting over TLS on its own.

use std::time::{Duration, Instant};

use agent_stream_testkit::client::Outcome;
use agent_stream_testkit::rig::{serial, Checks, Rig};

/// `--idle-poll` of this drill: well above the degraded poll, as in the Redis drills.
const IDLE_POLL: &str = "5s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_to_both_followers_get_every_message_exactly_across_a_redis_restart() {
    let _serial = serial().await;
    let mut checks = Checks::new("TLS to both, Redis restarted");
    let mut rig = Rig::start_tls("tls", &["--idle-poll", IDLE_POLL]);
    checks.check(
        rig.server
            .full_log()
            .contains("Redis Streams live feed ready"),
        format!(
            "the server reaches Redis over TLS at start: {}",
            rig.server.log()
        ),
    );
    rig.register().await;
    // Followers from the start and from seq 5 (a resume from a cursor), reconnecting.
    let (followers, appender) = rig.go_live(true, 10, 5).await;
    checks.check_result(
        rig.api.wait_readyz(200, None, Duration::from_secs(5)).await,
        "/readyz is 200 over TLS",
    );

    rig.redis.restart();
    let restarted_at = Instant::now();
    checks.note(format!("Redis restarted at seq {}", appender.max_seq()));
    let reconnected = agent_stream_testkit::client::wait_for(Duration::from_secs(10), || {
        rig.server.full_log().contains("Redis answers again")
    })
    .await;
    checks.check(
        reconnected,
        format!(
            "the server reconnects to Redis over TLS after the restart: {}",
            rig.server.log()
        ),
    );
    checks.check_result(
        rig.api
            .wait_readyz(200, None, Duration::from_secs(10))
            .await,
        "/readyz is 200 again after the restart",
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Rig::check_followers_reach(
        &mut checks,
        &followers,
        appender.max_seq(),
        Duration::from_secs(5),
        "followers receive after the restart",
    )
    .await;

    let records = appender.stop().await;
    let not_created: Vec<_> = records
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Created { .. }))
        .map(|r| format!("{}: {:?}", r.id, r.outcome))
        .collect();
    checks.check(
        not_created.is_empty(),
        format!("every append is answered 201 across the restart: {not_created:?}"),
    );
    checks.note(format!(
        "{} appends after the restart",
        records.iter().filter(|r| r.sent >= restarted_at).count()
    ));
    rig.finish_and_verify(&mut checks, followers, &records)
        .await;
    checks.finish();
}
