//! A fleet behind a real load balancer (issue 11, item 3): HAProxy in front of three
//! agent-stream instances on one PostgreSQL and one Redis (the suite's, from
//! DATABASE_URL and REDIS_URL: nothing here stops them), 150 SSE followers that
//! reconnect as a browser's `EventSource` does, and a writer appending through HAProxy.
//! One instance is killed (SIGKILL) mid-stream and another drained (SIGTERM); every
//! follower must still end with every message once, in order, then the end event.
//!
//! HAProxy's configuration is the one docs/operating.md's "Deploying behind a proxy" shows, with
//! its timeouts scaled down (and the servers' heartbeat with them) so that the drill
//! also shows a quiet follow outliving HAProxy's silence timeouts.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use agent_stream_testkit::client::{
    verify_appends, verify_exact, wait_for, Appender, AppenderConfig, Attempt, Follower, Outcome,
};
use agent_stream_testkit::fleet::{Fleet, FleetFigures};
use agent_stream_testkit::instances::HaproxyTimeouts;
use agent_stream_testkit::rig::{outcome_summary, serial, Checks, Rig};

const INSTANCES: usize = 3;
const FOLLOWERS: usize = 150;
/// The servers' `--heartbeat`…
const HEARTBEAT: &str = "1s";
/// …well inside HAProxy's `timeout client` / `timeout server`.
const HAPROXY_QUIET: Duration = Duration::from_secs(3);
/// HAProxy's health check interval (`fall 2`: a dead instance is out after two).
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// An `EventSource`'s reconnection time until the server sends a `retry:` hint.
const EVENTSOURCE_BACKOFF: Duration = Duration::from_millis(250);
/// After the last append: longer than HAProxy's silence timeouts, so a follow that only
/// heartbeats would be cut by HAProxy if the heartbeat did not reach it.
const QUIET_PHASE: Duration = Duration::from_secs(4);
/// Followers give up (a violation) this long after the start.
const DRILL_DEADLINE: Duration = Duration::from_secs(55);
/// How long the followers may take to be live again after each fault.
const RECOVERY: Duration = Duration::from_secs(10);

/// The suite's shared server named by `name`; the drill fails without it.
fn shared(name: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!("the fleet drill runs its instances on the suite's PostgreSQL and Redis: set {name} (`bash .ci/test` starts both and sets DATABASE_URL and REDIS_URL)")
    })
}

/// Prints a figure of the drill even when the test passes (libtest captures
/// `eprintln!`, not writes to the stderr handle itself), so the suite's output has it.
fn report(line: String) {
    let _ = writeln!(std::io::stderr(), "[fleet behind HAProxy] {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_haproxy_delivers_everything_once_through_a_kill_and_a_drain() {
    let _serial = serial().await;
    let mut checks = Checks::new("fleet behind HAProxy");
    let started = Instant::now();
    let (database_url, redis_url) = (shared("DATABASE_URL"), shared("REDIS_URL"));
    let fleet = Fleet::start(
        &database_url,
        &redis_url,
        INSTANCES,
        &["--heartbeat", HEARTBEAT],
        HaproxyTimeouts {
            quiet: HAPROXY_QUIET,
            check_interval: CHECK_INTERVAL,
        },
    )
    .await;
    let deadline = started + DRILL_DEADLINE;
    let followers = fleet.sse_followers(FOLLOWERS, deadline, EVENTSOURCE_BACKOFF);
    let Fleet {
        haproxy,
        mut servers,
        names,
        api,
        process,
    } = fleet;
    // An idempotent writer: an append without an answer (or with HAProxy's 502) is sent
    // again with the same id.
    let appender = Appender::spawn(
        api.clone(),
        process.clone(),
        "m".to_owned(),
        AppenderConfig {
            interval: Duration::from_millis(50),
            max: 2_000,
            retry_failures: true,
            give_up_after: Duration::from_secs(15),
        },
    );
    assert!(
        wait_for(Duration::from_secs(20), || appender.max_seq() >= 20
            && Rig::min_received(&followers) >= 10)
        .await,
        "before the faults, the followers must be live: appended {}, the slowest follower at {}",
        appender.max_seq(),
        Rig::min_received(&followers)
    );
    let spread = haproxy.server_stats();
    checks.note(format!("follows per instance (HAProxy's view): {spread:?}"));
    checks.check(
        spread.len() == INSTANCES && spread.iter().all(|(_, (_, sessions))| *sessions > 0),
        format!("HAProxy spreads the follows over every instance: {spread:?}"),
    );

    // SIGKILL: its follows break mid-stream, its health checks fail.
    servers[0].kill9();
    let killed_at = Instant::now();
    checks.note(format!(
        "{} killed (SIGKILL) at seq {}",
        names[0],
        appender.max_seq()
    ));
    let marked_down = wait_for(Duration::from_secs(5), || {
        haproxy
            .server_stats()
            .iter()
            .any(|(name, (status, _))| *name == names[0] && status.starts_with("DOWN"))
    })
    .await;
    checks.check(
        marked_down,
        format!(
            "HAProxy marks the killed instance DOWN: {:?}",
            haproxy.server_stats()
        ),
    );
    checks.note(format!(
        "HAProxy marked it DOWN after {:?}",
        killed_at.elapsed()
    ));
    check_live_again(&mut checks, &followers, &appender, "after the SIGKILL").await;

    // SIGTERM: the instance stops accepting, ends its follows with a `retry:` hint and
    // exits once its requests in flight are done.
    servers[1].sigterm();
    let drained_at = Instant::now();
    checks.note(format!(
        "{} drained (SIGTERM) at seq {}",
        names[1],
        appender.max_seq()
    ));
    let exit = servers[1].wait_exit(Duration::from_secs(15));
    checks.check(
        exit.is_some_and(|status| status.success()),
        format!("the drained instance exits with status 0 within 15 s: {exit:?}"),
    );
    checks.note(format!("it exited after {:?}", drained_at.elapsed()));
    check_live_again(&mut checks, &followers, &appender, "after the SIGTERM").await;

    let records = appender.stop().await;
    checks.check(
        records.iter().all(|r| r.outcome.seq().is_some()),
        format!(
            "every append through HAProxy ends stored (201, or 200 when a retry finds it): {}",
            outcome_summary(&records)
        ),
    );
    let last = records
        .iter()
        .filter_map(|r| r.outcome.seq())
        .max()
        .unwrap_or(0);
    Rig::check_followers_reach(
        &mut checks,
        &followers,
        last,
        RECOVERY,
        "every follower has every append before the quiet phase",
    )
    .await;
    let breaks_before_quiet: usize = followers
        .iter()
        .map(|f| f.with_state(|s| s.breaks.len()))
        .sum();
    tokio::time::sleep(QUIET_PHASE).await;
    let breaks_after_quiet: usize = followers
        .iter()
        .map(|f| f.with_state(|s| s.breaks.len()))
        .sum();
    checks.check(
        breaks_after_quiet == breaks_before_quiet,
        format!(
            "no follow is cut while silent for {QUIET_PHASE:?} (HAProxy's timeouts: {HAPROXY_QUIET:?}, heartbeat {HEARTBEAT}): {} break(s)",
            breaks_after_quiet - breaks_before_quiet
        ),
    );

    match api
        .finish(&process, "succeeded", Duration::from_secs(15))
        .await
    {
        Attempt::Answered { status: 200, .. } => {}
        other => {
            checks.check(false, format!("finish through HAProxy answered {other:?}"));
        }
    }
    let stored = api
        .snapshot(&process, Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    checks.note(format!(
        "{} messages stored; {} appends: {}",
        stored.len(),
        records.len(),
        outcome_summary(&records)
    ));
    checks.check_result(verify_appends(&records, &stored), "appends vs snapshot");
    let mut states = Vec::new();
    for follower in followers {
        let state = follower.join().await;
        checks.check_result(
            verify_exact(&state, 0, &stored, "succeeded"),
            &format!("an SSE follower ({} connection(s))", state.connections),
        );
        states.push(state);
    }
    let refusals: Vec<&String> = states.iter().flat_map(|s| &s.refusals).collect();
    checks.check(
        refusals.iter().all(|r| r.starts_with("connect:")),
        format!(
            "no reconnect is answered other than 200 (a browser's EventSource gives up on one): {:?}",
            refusals.iter().take(5).collect::<Vec<_>>()
        ),
    );

    let answered: HashMap<u64, Instant> = records
        .iter()
        .filter_map(|r| r.outcome.seq().map(|seq| (seq, r.answered)))
        .collect();
    let figures = FleetFigures::of(&states, &answered);
    report(format!(
        "{FOLLOWERS} SSE followers through HAProxy, {INSTANCES} instances, {} messages; one instance SIGKILLed, one drained with SIGTERM; took {:?}",
        stored.len(),
        started.elapsed()
    ));
    report(format!(
        "reconnects: {} in all ({} after a broken response, {} after a clean end with a retry hint, {} connects refused); per follower {}",
        figures.reconnects, figures.broken, figures.drained, refusals.len(), figures.per_follower
    ));
    report(format!(
        "drop to reconnect: median {:?}, worst {:?}",
        figures.reconnect_median, figures.reconnect_worst
    ));
    report(format!(
        "worst gap (a message's 201 to a follower having it): {:?} (seq {}); p99 {:?}",
        figures.gap_worst, figures.gap_worst_seq, figures.gap_p99
    ));
    checks.check(
        figures.broken > 0 && figures.drained > 0,
        format!(
            "the faults reached followers: {} broken, {} drained",
            figures.broken, figures.drained
        ),
    );
    checks.finish();
}

/// Checks that every follower gets 10 appends past what was appended now, within
/// [`RECOVERY`].
async fn check_live_again(
    checks: &mut Checks,
    followers: &[Follower],
    appender: &Appender,
    what: &str,
) {
    let target = appender.max_seq() + 10;
    let since = Instant::now();
    Rig::check_followers_reach(
        checks,
        followers,
        target,
        RECOVERY,
        &format!("every follower is live again {what}"),
    )
    .await;
    checks.note(format!(
        "every follower reached seq {target} {:?} {what}",
        since.elapsed()
    ));
    checks.check(
        appender.count_where(|r| {
            matches!(r.outcome, Outcome::Refused { .. } | Outcome::Unknown { .. })
        }) == 0,
        format!(
            "no append was refused or lost {what}: {}",
            outcome_summary(&appender.records())
        ),
    );
}
