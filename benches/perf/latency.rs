//! `latency`: append sent → follower received, one at a time, with 1 and with 1,000
//! SSE followers, beside the raw floor.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::env::Env;
use crate::figures::{ms, quantile, ratio};
use crate::follower::{follow_path, join_all, open_followers, Followed, Tally};
use crate::messages::message;
use crate::raw::{raw_fanout_latency, raw_latency};
use crate::report::{Report, Scenario};

pub const LATENCY_WARMUP: u64 = 30;
const LATENCY_SAMPLES_ONE: u64 = 1000;
const LATENCY_SAMPLES_MANY: u64 = 300;
const MANY_FOLLOWERS: usize = 1000;

const SCENARIO: Scenario = Scenario::Latency;

/// When each append of a run was sent and answered, by seq (index 0 unused).
struct Appends {
    sent: Vec<Instant>,
    answered_at: Vec<Instant>,
    /// Time to each answer. Sorted once done.
    answer_times: Vec<Duration>,
}

pub async fn run(report: &mut Report) {
    let env = Env::start(false, &[]).await;
    // One follower against INSERT + XADD → XREAD, and where an append's time goes.
    let raw_one = raw_latency(&env, "raw-one", LATENCY_SAMPLES_ONE).await;
    let one = stream_latency(&env, report, 1, LATENCY_SAMPLES_ONE).await;
    breakdown_note(&env, report).await;
    // 1,000 followers against the same, and against the raw fan-out floor.
    let raw_many = raw_latency(&env, "raw-many", LATENCY_SAMPLES_MANY).await;
    let cpu = env.cpu();
    let floor = raw_fanout_latency(
        &env,
        report,
        "raw-fan",
        MANY_FOLLOWERS,
        LATENCY_SAMPLES_MANY,
    )
    .await;
    report.note(
        SCENARIO,
        format!("raw fan-out floor phase: {}", cpu.describe(&env.cpu())),
    );
    let cpu = env.cpu();
    let many = stream_latency(&env, report, MANY_FOLLOWERS, LATENCY_SAMPLES_MANY).await;
    report.note(
        SCENARIO,
        format!(
            "{MANY_FOLLOWERS} followers phase: {}",
            cpu.describe(&env.cpu())
        ),
    );
    raw_rows(
        report,
        "1 SSE follower",
        &one,
        &raw_one,
        LATENCY_SAMPLES_ONE,
        true,
    );
    // The targets are for one follower; a thousand are held to the fan-out floor below.
    raw_rows(
        report,
        "1,000 SSE followers",
        &many,
        &raw_many,
        LATENCY_SAMPLES_MANY,
        false,
    );
    floor_rows(report, &many, &floor);
    report.note(
        SCENARIO,
        format!(
            "max: 1 follower {} (raw {}); {MANY_FOLLOWERS} followers {} (raw {}); {} deliveries measured with {MANY_FOLLOWERS} followers",
            ms(one.last().copied().unwrap_or_default()),
            ms(raw_one.last().copied().unwrap_or_default()),
            ms(many.last().copied().unwrap_or_default()),
            ms(raw_many.last().copied().unwrap_or_default()),
            many.len()
        ),
    );
    drop(env);
}

/// Appends one message at a time to a process `followers` follow over SSE, waiting
/// for every follower to have it before the next; each (message, follower)'s time
/// from the request's first byte sent to the follower's receipt. Sorted.
async fn stream_latency(
    env: &Env,
    report: &mut Report,
    followers: usize,
    samples: u64,
) -> Vec<Duration> {
    // Set up: the process and its followers.
    let name = format!("lat-{followers}-{}", uuid::Uuid::new_v4().simple());
    let mut conn = Conn::open(env.port).await.expect("connect");
    conn.put(&name).await.expect("register");
    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let paths = [follow_path(&name)];
    let handles = open_followers(env.port, &paths, followers, &tally, true, deadline)
        .await
        .unwrap_or_else(|e| panic!("latency: {e}"));

    // Drive: one append at a time, each to every follower before the next; the end.
    let mut appends =
        append_one_at_a_time(&mut conn, &name, report, &tally, followers, samples).await;
    let last = conn.finish(&name).await.expect("finish");
    let states = join_all(handles).await;

    // Measure: exactness, the delays, and how the receipt stands to the 201.
    let mut delays = Vec::with_capacity(samples as usize * followers);
    // Receipt minus the 201's arrival, in ms: negative when the message came first.
    let mut after_answer: Vec<f64> = Vec::new();
    let mut exact = 0;
    for state in &states {
        match state.verify(last) {
            Ok(()) => exact += 1,
            Err(e) => report.problem(SCENARIO, e),
        }
        appends.add_times(state, &mut delays, &mut after_answer);
    }
    appends.answer_times.sort();
    after_answer.sort_by(f64::total_cmp);
    let median_after = after_answer
        .get(after_answer.len() / 2)
        .copied()
        .unwrap_or(0.0);
    report.note(
        SCENARIO,
        format!(
            "{followers} follower(s): {exact}/{followers} exact ({last} messages then the end); append answered (201) in p50 {} / p99 {}; a follower's receipt came p50 {median_after:+.2} ms after the 201",
            ms(quantile(&appends.answer_times, 0.5)),
            ms(quantile(&appends.answer_times, 0.99)),
        ),
    );
    delays.sort();
    delays
}

/// `LATENCY_WARMUP + samples` appends to `name`, each waiting until all `followers`
/// have it (10 s at most: then a problem, and no more appends), then 1 ms.
async fn append_one_at_a_time(
    conn: &mut Conn,
    name: &str,
    report: &mut Report,
    tally: &Tally,
    followers: usize,
    samples: u64,
) -> Appends {
    let total = LATENCY_WARMUP + samples;
    let mut appends = Appends {
        sent: Vec::with_capacity(total as usize + 1),
        answered_at: vec![Instant::now()],
        answer_times: Vec::new(),
    };
    appends.sent.push(Instant::now());
    for n in 1..=total {
        let body = message("m", n);
        let started = Instant::now();
        match conn.append(name, body.as_bytes()).await {
            Ok(seq) if seq == n => {}
            other => panic!("latency: append {n} answered {other:?}"),
        }
        appends.answer_times.push(started.elapsed());
        appends.answered_at.push(Instant::now());
        appends.sent.push(started);
        if !tally
            .wait_delivered(n * followers as u64, Duration::from_secs(10))
            .await
        {
            report.problem(
                SCENARIO,
                format!(
                    "message {n} did not reach all {followers} followers within 10 s ({} deliveries)",
                    tally.delivered.load(Ordering::SeqCst)
                ),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    appends
}

impl Appends {
    /// A follower's delays past the warm-up, from the send and from the answer (ms).
    fn add_times(&self, state: &Followed, delays: &mut Vec<Duration>, after: &mut Vec<f64>) {
        for &(seq, at) in &state.times {
            if u64::from(seq) <= LATENCY_WARMUP {
                continue;
            }
            if let (Some(sent), Some(answered)) = (
                self.sent.get(seq as usize),
                self.answered_at.get(seq as usize),
            ) {
                delays.push(at.duration_since(*sent));
                after.push(if at >= *answered {
                    at.duration_since(*answered).as_secs_f64() * 1000.0
                } else {
                    -(answered.duration_since(at).as_secs_f64() * 1000.0)
                });
            }
        }
    }
}

/// The note on where an append's time goes.
async fn breakdown_note(env: &Env, report: &mut Report) {
    let (store, publish) = write_path_breakdown(env, LATENCY_SAMPLES_ONE).await;
    report.note(
        SCENARIO,
        format!(
            "where an append's time goes (the library's write path, no HTTP, same database): the store's append (one call of `append_messages_v2`: lock the process row while moving last_seq, INSERT, commit) p50 {} / p99 {}, then XADD p50 {} / p99 {}",
            ms(quantile(&store, 0.5)),
            ms(quantile(&store, 0.99)),
            ms(quantile(&publish, 0.5)),
            ms(quantile(&publish, 0.99)),
        ),
    );
}

/// p50 and p99 against INSERT + XADD → XREAD BLOCK; held to ≤ 1.5x and ≤ 2x when
/// `targeted`.
fn raw_rows(
    report: &mut Report,
    label: &str,
    delays: &[Duration],
    raw: &[Duration],
    count: u64,
    targeted: bool,
) {
    for (q, name, limit) in [(0.5, "p50", 1.5), (0.99, "p99", 2.0)] {
        let (value, base) = (quantile(delays, q), quantile(raw, q));
        let r = ratio(value.as_secs_f64(), base.as_secs_f64());
        report.row(
            SCENARIO,
            format!(
                "append sent → follower received, {name}, {label} ({count} appends, one at a time)"
            ),
            ms(value),
            format!("{} (INSERT + XADD → XREAD BLOCK reader)", ms(base)),
            r,
            if targeted {
                format!("≤ {limit}x")
            } else {
                "–".to_owned()
            },
            r.filter(|_| targeted).map(|r| r <= limit),
        );
    }
}

/// p50 and p99 of 1,000 followers against the raw fan-out floor.
fn floor_rows(report: &mut Report, many: &[Duration], floor: &[Duration]) {
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (value, base) = (quantile(many, q), quantile(floor, q));
        report.row(
            SCENARIO,
            format!("{name}, 1,000 SSE followers, vs the raw fan-out floor"),
            ms(value),
            format!(
                "{} (INSERT + XADD → one XREAD reader writing each frame to 1,000 sockets)",
                ms(base)
            ),
            ratio(value.as_secs_f64(), base.as_secs_f64()),
            "–",
            None,
        );
    }
}

/// Where an append's time goes: the library's write path (no HTTP) on the server's
/// database and Redis, timing the store's transaction and the feed's XADD apart.
async fn write_path_breakdown(env: &Env, samples: u64) -> (Vec<Duration>, Vec<Duration>) {
    use agent_stream::domain::{NewMessage, ProcessId};
    let config = agent_stream::config::BackendConfig {
        redis_url: Some(env.redis.url()),
        redis_readers: 1,
        database_timeout: Duration::from_secs(5),
        database_max_connections: 4,
        ..agent_stream_testkit::app::test_backend_config(env.pg.url())
    };
    let backends = agent_stream::startup::Backends::connect(&config)
        .await
        .expect("the library's backends");
    let process =
        ProcessId::parse(&format!("lib-{}", uuid::Uuid::new_v4().simple())).expect("process id");
    let (mut store, mut publish) = (Vec::new(), Vec::new());
    for n in 1..=LATENCY_WARMUP + samples {
        let message = NewMessage::parse(message("lib", n).as_bytes(), 1 << 20).expect("message");
        let started = Instant::now();
        let outcome = backends
            .store
            .append(&process, &[message])
            .await
            .expect("library append");
        let stored = Instant::now();
        let _ = backends.feed.publish(&process, &outcome.stored).await;
        if n > LATENCY_WARMUP {
            store.push(stored.duration_since(started));
            publish.push(stored.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    store.sort();
    publish.sort();
    (store, publish)
}
