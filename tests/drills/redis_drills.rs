//! Redis is an accelerator: killing it, or never having it, costs latency, never a
//! message, and never an append.

use std::time::{Duration, Instant};

use agent_stream_testkit::client::{wait_for, Outcome};
use agent_stream_testkit::rig::{serial, Checks, Rig};

/// `--idle-poll` of these drills: far above `--degraded-poll` (500 ms).
const IDLE_POLL: &str = "5s";
/// The longest an append may take to reach every follower while Redis is down:
/// the degraded poll and then some.
const DEGRADED_DELAY: Duration = Duration::from_millis(2000);

/// Drill 1: Redis SIGKILLed mid-stream, restarted (empty) ~2 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_costs_no_message_and_no_append() {
    let _serial = serial().await;
    let mut checks = Checks::new("redis killed mid-stream");
    // A long idle poll, so that only the degraded poll (500 ms by default) can explain
    // delivery while Redis is down.
    let mut rig = Rig::start("redis-kill", true, &["--idle-poll", IDLE_POLL]);
    rig.register().await;
    let (followers, appender) = rig.go_live(false, 10, 5).await;
    checks.check_result(
        rig.api.wait_readyz(200, None, Duration::from_secs(5)).await,
        "/readyz is 200 before the fault",
    );

    rig.redis.kill();
    let killed_at = Instant::now();
    checks.note(format!("Redis killed at seq {}", appender.max_seq()));
    checks.check_result(
        rig.api
            .wait_readyz(503, Some("redis"), Duration::from_secs(5))
            .await,
        "/readyz is 503 naming redis while Redis is down",
    );

    // The outage: appends keep being answered 201, followers keep receiving.
    tokio::time::sleep_until((killed_at + Duration::from_secs(2)).into()).await;
    let during = appender.max_seq();
    let appended_during = appender.count_where(|r| r.sent >= killed_at);
    checks.check(
        appended_during >= 5,
        format!("appends continue while Redis is down: only {appended_during} in 2 s"),
    );
    let received = wait_for(Duration::from_secs(4), || {
        Rig::min_received(&followers) >= during
    })
    .await;
    checks.check(
        received && !rig.redis.is_running(),
        format!(
            "followers receive, while Redis is still down, what was appended during the outage (up to seq {during}): {}",
            Rig::received_summary(&followers)
        ),
    );
    checks.note(format!(
        "Redis down for {:?}; {appended_during} appends meanwhile",
        killed_at.elapsed()
    ));

    rig.redis.launch();
    let restarted_at = Instant::now();
    let outage_delay =
        |records: &[agent_stream_testkit::client::AppendRecord],
         states: &[agent_stream_testkit::client::FollowState]| {
            let during: Vec<_> = records
                .iter()
                .filter(|r| r.answered >= killed_at && r.answered < restarted_at)
                .collect();
            (during.len(), worst_delay(&during, states))
        };
    checks.check_result(
        rig.api
            .wait_readyz(200, None, Duration::from_secs(10))
            .await,
        "/readyz is 200 again after Redis is back",
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = appender.max_seq();
    Rig::check_followers_reach(
        &mut checks,
        &followers,
        after,
        Duration::from_secs(5),
        "followers receive after Redis is back",
    )
    .await;

    let records = appender.stop().await;
    let not_created: Vec<_> = records
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Created { .. }))
        .map(|r| {
            format!(
                "{} sent {:?} after the kill: {:?}",
                r.id,
                r.sent.saturating_duration_since(killed_at),
                r.outcome
            )
        })
        .collect();
    checks.check(
        not_created.is_empty(),
        format!("every append is answered 201, Redis or not: {not_created:?}"),
    );
    checks.note(format!(
        "{} appends after Redis came back",
        records.iter().filter(|r| r.sent >= restarted_at).count()
    ));
    let states = rig
        .finish_and_verify(&mut checks, followers, &records)
        .await;
    let (during, worst) = outage_delay(&records, &states);
    checks.note(format!(
        "worst delivery delay of the {during} appends answered while Redis was down: {worst:?}"
    ));
    checks.check(
        worst <= DEGRADED_DELAY,
        format!(
            "while Redis is down, followers poll PostgreSQL every --degraded-poll (500 ms; --idle-poll is {IDLE_POLL}): every message arrives within {DEGRADED_DELAY:?} of its 201, worst {worst:?}"
        ),
    );
    checks.finish();
}

/// Drill 2: Redis down when the service starts, started mid-test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_then_started_delivery_stays_exact() {
    let _serial = serial().await;
    let mut checks = Checks::new("redis down at start");
    let mut rig = Rig::start("redis-late", false, &["--idle-poll", IDLE_POLL]);
    checks.check_result(
        rig.api
            .wait_readyz(503, Some("redis"), Duration::from_secs(5))
            .await,
        "/readyz is 503 naming redis while Redis was never started",
    );
    rig.register().await;
    let mut followers = rig.followers(false);
    let appender = rig.appender(false);

    let served = wait_for(Duration::from_secs(10), || {
        appender.max_seq() >= 15 && Rig::min_received(&followers) >= 10
    })
    .await;
    checks.check(
        served && !rig.redis.is_running(),
        format!(
            "without Redis, appends and follows are served from PostgreSQL: appended {}, received {}",
            appender.max_seq(),
            Rig::received_summary(&followers)
        ),
    );
    followers.extend(rig.followers_from(5, false));
    let during = appender.max_seq();
    checks.check(
        wait_for(Duration::from_secs(5), || {
            Rig::min_received(&followers) >= during
        })
        .await,
        format!(
            "every follower catches up without Redis (to seq {during}): {}",
            Rig::received_summary(&followers)
        ),
    );

    rig.redis.launch();
    let started_at = Instant::now();
    checks.note(format!("Redis started at seq {}", appender.max_seq()));
    checks.check_result(
        rig.api
            .wait_readyz(200, None, Duration::from_secs(10))
            .await,
        "/readyz is 200 once Redis is started",
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let after = appender.max_seq();
    Rig::check_followers_reach(
        &mut checks,
        &followers,
        after,
        Duration::from_secs(5),
        "followers receive after Redis started",
    )
    .await;

    let records = appender.stop().await;
    checks.check(
        records
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Created { .. })),
        format!(
            "every append is answered 201: {}",
            agent_stream_testkit::rig::outcome_summary(&records)
        ),
    );
    // Informational: once Redis is back, delivery should be live again, not polled.
    let late: Vec<_> = records
        .iter()
        .filter(|r| r.sent >= started_at + Duration::from_millis(1000))
        .collect();
    let states = rig
        .finish_and_verify(&mut checks, followers, &records)
        .await;
    let before_redis: Vec<_> = records.iter().filter(|r| r.answered < started_at).collect();
    let worst_without = worst_delay(&before_redis, &states);
    checks.note(format!(
        "worst delivery delay of the {} appends answered before Redis started: {worst_without:?}",
        before_redis.len()
    ));
    checks.check(
        worst_without <= DEGRADED_DELAY,
        format!(
            "without Redis, followers poll PostgreSQL every --degraded-poll (500 ms; --idle-poll is {IDLE_POLL}): every message arrives within {DEGRADED_DELAY:?} of its 201, worst {worst_without:?}"
        ),
    );
    let worst = worst_delay(&late, &states);
    checks.note(format!(
        "worst delivery delay from 1 s after Redis started: {worst:?} over {} appends",
        late.len()
    ));
    checks.finish();
}

/// The longest time from an append's answer to a follower's receipt of it.
pub fn worst_delay(
    records: &[&agent_stream_testkit::client::AppendRecord],
    states: &[agent_stream_testkit::client::FollowState],
) -> Duration {
    let mut worst = Duration::ZERO;
    for state in states {
        let at: std::collections::HashMap<&str, Instant> = state
            .received
            .iter()
            .map(|r| (r.id.as_str(), r.at))
            .collect();
        for record in records {
            if let Some(received) = at.get(record.id.as_str()) {
                worst = worst.max(received.saturating_duration_since(record.answered));
            }
        }
    }
    worst
}
