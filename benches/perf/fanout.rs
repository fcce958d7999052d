//! `fanout`: 10,000 SSE followers over 1,000 processes, 1,000 appends/s spread over them
//! for 20 s: delivery delay, exactness (every follower gets exactly every message then
//! the end), server peak RSS (VmHWM), Redis connections (`CLIENT LIST`, less the bench's
//! own), PostgreSQL statements/s. Beside it, what 10,000 plain keep-alive connections
//! cost a fresh server (the HTTP layer's share of a follow's memory).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::env::{bench_redis, Env, BENCH_CLIENT_NAME};
use crate::figures::{describe_top, mib, ms, per_second, quantile, ratio, thousands};
use crate::follower::{follow_path, join_all, open_followers, Followed, Tally, CONNECT_BATCH};
use crate::instances::{self, Server};
use crate::messages::message;
use crate::raw::raw_latency;
use crate::report::{Report, Scenario};

const FANOUT_FOLLOWERS: usize = 10_000;
const FANOUT_PROCESSES: usize = 1000;
const FANOUT_RATE: u64 = 1000;
const FANOUT_RUN: Duration = Duration::from_secs(20);
/// Connections that register and finish the processes.
const FANOUT_WORKERS: usize = 40;
const SCENARIO: Scenario = Scenario::Fanout;

/// The server before any follower: its RSS and its Redis connections.
struct Idle {
    rss: u64,
    redis: usize,
    /// RSS once every follow is open, before the first append.
    connected_rss: u64,
}

/// What the load did: each (process, seq)'s send and answer times, and the server meanwhile.
struct Load {
    sent: Vec<HashMap<u64, Instant>>,
    answered_at: Vec<HashMap<u64, Instant>>,
    /// Time to each append's answer. Sorted.
    answered: Vec<Duration>,
    failures: Vec<String>,
    worst_lag: Duration,
    elapsed: Duration,
    redis_peak: usize,
    rss: u64,
    /// PostgreSQL and CPU over the load, as a note.
    usage: String,
}

/// What the followers got, over all of them.
struct Delivery {
    /// Append sent → follower received. Sorted.
    delays: Vec<Duration>,
    /// The append's 201 → follower received (0 when the message came first). Sorted.
    after_answer: Vec<Duration>,
    exact: usize,
    followers: usize,
    lost: u64,
    doubled: u64,
    stored: u64,
}

pub async fn run(report: &mut Report) {
    // Set up: the processes, the idle figures, then every follower.
    let env = Env::start(true, &["--max-follows", "20000"]).await;
    let raw = raw_latency(&env, "raw-fanout", 300).await;
    let names = register(env.port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut idle = Idle {
        rss: env.server.rss_kib().unwrap_or(0),
        redis: env.server_redis_clients().await,
        connected_rss: 0,
    };
    connections_only(&env, report).await;
    let tally = Arc::new(Tally::default());
    let Some(handles) = connect(&env, report, &names, &tally).await else {
        return;
    };
    idle.connected_rss = env.server.rss_kib().unwrap_or(0);
    idle_followers(&env, report).await;

    // Drive: the appends, then every process finished.
    let load = drive(&env, &names).await;
    tally
        .wait_delivered(expected_deliveries(&load), Duration::from_secs(10))
        .await;
    let last_seq = finish_all(env.port, &names, report).await;
    let states = join_all(handles).await;
    let peak_rss = instances::vm_hwm_kib(env.server_pid()).unwrap_or(0);

    // Measure, then the rows.
    let delivery = measure(report, &load, &last_seq, &states);
    delivery_rows(report, &raw, &load, &delivery);
    resource_rows(report, &idle, peak_rss, &load, &delivery);
    load_notes(report, &idle, &load, &delivery);
    drop(env);
}

/// Registers every process, `FANOUT_WORKERS` connections at a time; their names.
async fn register(port: u16) -> Vec<String> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let names: Vec<String> = (0..FANOUT_PROCESSES)
        .map(|p| format!("fan-{p}-{run}"))
        .collect();
    let mut tasks = Vec::new();
    for w in 0..FANOUT_WORKERS {
        let names: Vec<String> = names
            .iter()
            .skip(w)
            .step_by(FANOUT_WORKERS)
            .cloned()
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(port).await.expect("connect");
            for name in names {
                conn.put(&name).await.expect("register");
            }
        }));
    }
    for task in tasks {
        task.await.expect("register task");
    }
    names
}

/// Opens every follow, `CONNECT_BATCH` at a time, and notes what that cost.
async fn connect(
    env: &Env,
    report: &mut Report,
    names: &[String],
    tally: &Arc<Tally>,
) -> Option<Vec<tokio::task::JoinHandle<Followed>>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let started = Instant::now();
    let (pg_before, cpu_before) = (env.pg_counts().await, env.cpu());
    let paths: Vec<String> = names.iter().map(|n| follow_path(n)).collect();
    let handles =
        match open_followers(env.port, &paths, FANOUT_FOLLOWERS, tally, true, deadline).await {
            Ok(handles) => handles,
            Err(e) => {
                report.problem(SCENARIO, e);
                return None;
            }
        };
    let elapsed = started.elapsed();
    let (pg_after, cpu_after) = (env.pg_counts().await, env.cpu());
    let (statements, xacts) = pg_before.rates(&pg_after);
    report.note(
        SCENARIO,
        format!(
            "{FANOUT_FOLLOWERS} follows opened in {:.1} s ({CONNECT_BATCH} at a time; {} answered 503 busy and were tried again); meanwhile PostgreSQL ran {statements:.0} statements/s ({xacts:.0} transactions/s); {}",
            elapsed.as_secs_f64(),
            tally.open_retries.load(Ordering::SeqCst),
            cpu_before.describe(&cpu_after)
        ),
    );
    Some(handles)
}

/// Three idle seconds with every follow open: the followers' store checks alone.
async fn idle_followers(env: &Env, report: &mut Report) {
    env.reset_statements().await;
    let (pg_idle, cpu_idle) = (env.pg_counts().await, env.cpu());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (pg_idle_end, cpu_idle_end) = (env.pg_counts().await, env.cpu());
    let idle_top = env.top_statements(3).await;
    let (statements, xacts) = pg_idle.rates(&pg_idle_end);
    report.note(
        SCENARIO,
        format!(
            "all {FANOUT_FOLLOWERS} connected, no appends (3 s): PostgreSQL {statements:.0} statements/s ({xacts:.0} transactions/s), mostly {}; {}",
            describe_top(&idle_top, 3.0),
            cpu_idle.describe(&cpu_idle_end)
        ),
    );
}

/// The load: one writer per process, as each agent writes its own, on its own
/// connection, one append at a time: process p's appends at p ms, p ms + 1 s, …
async fn drive(env: &Env, names: &[String]) -> Load {
    env.reset_statements().await;
    let (pg_start, cpu_start) = (env.pg_counts().await, env.cpu());
    let wal_start = env.wal_bytes().await;
    let started = tokio::time::Instant::now() + Duration::from_millis(50);
    let redis_peak = Arc::new(AtomicUsize::new(0));
    let monitor = tokio::spawn(watch_redis_clients(env.redis.url(), redis_peak.clone()));
    let workers: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(process, name)| tokio::spawn(writer(env.port, process, name.clone(), started)))
        .collect();
    let mut load = Load {
        sent: vec![HashMap::new(); FANOUT_PROCESSES],
        answered_at: vec![HashMap::new(); FANOUT_PROCESSES],
        answered: Vec::new(),
        failures: Vec::new(),
        worst_lag: Duration::ZERO,
        elapsed: Duration::ZERO,
        redis_peak: 0,
        rss: 0,
        usage: String::new(),
    };
    for worker in workers {
        load.add(worker.await.expect("append worker"));
    }
    load.elapsed = started.elapsed();
    let (pg_end, cpu_end) = (env.pg_counts().await, env.cpu());
    let wal = (env.wal_bytes().await - wal_start) as f64 / load.elapsed.as_secs_f64();
    let top = env.top_statements(4).await;
    let (statements, xacts) = pg_start.rates(&pg_end);
    load.usage = format!(
        "under load: PostgreSQL {statements:.0} statements/s ({xacts:.0} transactions/s, {:.1} MiB/s of WAL), mostly {}; {}",
        wal / (1024.0 * 1024.0),
        describe_top(&top, load.elapsed.as_secs_f64()),
        cpu_start.describe(&cpu_end)
    );
    load.redis_peak = env.server_redis_clients().await;
    load.rss = env.server.rss_kib().unwrap_or(0);
    monitor.abort();
    load.redis_peak = load.redis_peak.max(redis_peak.load(Ordering::SeqCst));
    load.answered.sort();
    load
}

/// What one writer did: (process, seq, sent, answered) of each append, the time to
/// each answer, its failures and its worst lag behind the schedule.
type Written = (
    Vec<(usize, u64, Instant, Instant)>,
    Vec<Duration>,
    Vec<String>,
    Duration,
);

/// Process `process`'s writer: its appends at its times of the schedule.
async fn writer(port: u16, process: usize, name: String, started: tokio::time::Instant) -> Written {
    let total = FANOUT_RATE * FANOUT_RUN.as_secs();
    let mut conn = Conn::open(port).await.expect("connect");
    let (mut records, mut answered, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    let mut worst_lag = Duration::ZERO;
    for k in (process as u64..total).step_by(FANOUT_PROCESSES) {
        let at = started + Duration::from_millis(k * 1000 / FANOUT_RATE);
        tokio::time::sleep_until(at).await;
        worst_lag = worst_lag.max(at.elapsed());
        let sent = Instant::now();
        match conn.append(&name, message("f", k).as_bytes()).await {
            Ok(seq) => {
                answered.push(sent.elapsed());
                records.push((process, seq, sent, Instant::now()));
            }
            Err(e) => {
                failures.push(e);
                if let Ok(fresh) = Conn::open(port).await {
                    conn = fresh;
                }
            }
        }
    }
    (records, answered, failures, worst_lag)
}

impl Load {
    fn add(&mut self, (records, times, errors, lag): Written) {
        for (process, seq, at, answer) in records {
            self.sent[process].insert(seq, at);
            self.answered_at[process].insert(seq, answer);
        }
        self.answered.extend(times);
        self.failures.extend(errors);
        self.worst_lag = self.worst_lag.max(lag);
    }
}

/// The server's Redis connections, once a second through the load: the peak goes to `peak`.
async fn watch_redis_clients(url: String, peak: Arc<AtomicUsize>) {
    let mut conn = bench_redis(&url, Duration::from_secs(10)).await;
    for _ in 0..(FANOUT_RUN.as_secs() + 10) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let list: String = match redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
        {
            Ok(list) => list,
            Err(_) => continue,
        };
        let count = list
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains(&format!("name={BENCH_CLIENT_NAME} ")))
            .count();
        peak.fetch_max(count, Ordering::SeqCst);
    }
}

/// Every message answered, once to each of its process's followers.
fn expected_deliveries(load: &Load) -> u64 {
    load.sent.iter().map(|m| m.len() as u64).sum::<u64>()
        * (FANOUT_FOLLOWERS / FANOUT_PROCESSES) as u64
}

/// Finishes every process, `FANOUT_WORKERS` connections at a time; each one's last seq.
async fn finish_all(port: u16, names: &[String], report: &mut Report) -> Vec<u64> {
    let mut finishers = Vec::new();
    for w in 0..FANOUT_WORKERS {
        let names: Vec<(usize, String)> = names
            .iter()
            .cloned()
            .enumerate()
            .skip(w)
            .step_by(FANOUT_WORKERS)
            .collect();
        finishers.push(tokio::spawn(async move {
            let mut conn = Conn::open(port).await.expect("connect");
            let mut last = Vec::new();
            for (p, name) in names {
                last.push((p, conn.finish(&name).await));
            }
            last
        }));
    }
    let mut last_seq = vec![0u64; FANOUT_PROCESSES];
    for finisher in finishers {
        for (p, result) in finisher.await.expect("finish task") {
            match result {
                Ok(seq) => last_seq[p] = seq,
                Err(e) => report.problem(SCENARIO, e),
            }
        }
    }
    last_seq
}

/// Each follower checked against its process's last seq; every delivery's delays.
fn measure(report: &mut Report, load: &Load, last_seq: &[u64], states: &[Followed]) -> Delivery {
    let expected = expected_deliveries(load) as usize;
    let mut out = Delivery {
        delays: Vec::with_capacity(expected),
        after_answer: Vec::with_capacity(expected),
        exact: 0,
        followers: states.len(),
        lost: 0,
        doubled: 0,
        stored: last_seq.iter().sum(),
    };
    for state in states {
        let last = last_seq[state.process];
        if load.sent[state.process].len() as u64 != last {
            report.problem(
                SCENARIO,
                format!(
                    "process {}: {} appends answered 201 but {last} stored",
                    state.process,
                    load.sent[state.process].len()
                ),
            );
        }
        match state.verify(last) {
            Ok(()) => out.exact += 1,
            Err(e) if report.problems.len() < 20 => report.problem(SCENARIO, e),
            Err(_) => {}
        }
        out.lost += last.saturating_sub(state.received);
        out.doubled += state.duplicates;
        out.add_times(load, state);
    }
    out.delays.sort();
    out.after_answer.sort();
    out
}

impl Delivery {
    fn add_times(&mut self, load: &Load, state: &Followed) {
        for &(seq, at) in &state.times {
            if let Some(sent) = load.sent[state.process].get(&u64::from(seq)) {
                self.delays.push(at.duration_since(*sent));
            }
            if let Some(answer) = load.answered_at[state.process].get(&u64::from(seq)) {
                // Zero when the message came before the 201.
                self.after_answer
                    .push(at.saturating_duration_since(*answer));
            }
        }
    }
}

/// Delivery p50 and p99 against the raw floor, and exactness.
fn delivery_rows(report: &mut Report, raw: &[Duration], load: &Load, delivery: &Delivery) {
    let (p50, p99) = (
        quantile(&delivery.delays, 0.5),
        quantile(&delivery.delays, 0.99),
    );
    let (raw50, raw99) = (quantile(raw, 0.5), quantile(raw, 0.99));
    let described = format!(
        "{FANOUT_FOLLOWERS} SSE followers, {FANOUT_PROCESSES} processes, {:.0} appends/s for {:.0} s",
        per_second(load.answered.len() as f64, load.elapsed),
        load.elapsed.as_secs_f64()
    );
    report.row(
        SCENARIO,
        format!("delivery p50 ({described})"),
        ms(p50),
        format!("{} (raw INSERT + XADD → XREAD, idle)", ms(raw50)),
        ratio(p50.as_secs_f64(), raw50.as_secs_f64()),
        "–",
        None,
    );
    let r99 = ratio(p99.as_secs_f64(), raw99.as_secs_f64());
    report.row(
        SCENARIO,
        "delivery p99",
        ms(p99),
        format!("{} (raw, idle)", ms(raw99)),
        r99,
        "< 50 ms",
        Some(p99 < Duration::from_millis(50)),
    );
}

/// Memory, Redis connections, exactness and refused appends.
fn resource_rows(report: &mut Report, idle: &Idle, peak_rss: u64, load: &Load, d: &Delivery) {
    report.row(
        SCENARIO,
        "server peak RSS (VmHWM)",
        mib(peak_rss),
        format!("{} (idle, no follower)", mib(idle.rss)),
        ratio(peak_rss as f64, idle.rss as f64),
        "< 300 MB",
        Some(peak_rss * 1024 < 300_000_000),
    );
    report.row(
        SCENARIO,
        "Redis connections held (CLIENT LIST, peak)",
        load.redis_peak.to_string(),
        format!("{} (no follower)", idle.redis),
        ratio(load.redis_peak as f64, idle.redis as f64),
        "≤ 16",
        Some(load.redis_peak <= 16),
    );
    report.row(
        SCENARIO,
        "messages lost / doubled, over all followers",
        format!(
            "{} / {} ({}/{} followers exact; {} deliveries)",
            d.lost,
            d.doubled,
            d.exact,
            d.followers,
            thousands(d.delays.len() as f64)
        ),
        "–",
        None,
        "0 / 0",
        Some(d.lost == 0 && d.doubled == 0 && d.exact == d.followers),
    );
    let offered = load.answered.len() + load.failures.len();
    report.row(
        SCENARIO,
        "appends refused or unanswered (one writer per process, each waits for its answer)",
        format!("{} of {offered}", load.failures.len()),
        "–",
        None,
        "0",
        Some(load.failures.is_empty()),
    );
}

/// The notes: refusals by kind, answer times, memory, PostgreSQL, the delay's quantiles.
fn load_notes(report: &mut Report, idle: &Idle, load: &Load, d: &Delivery) {
    if let Some(kinds) = refusal_kinds(&load.failures) {
        report.note(SCENARIO, format!("appends refused: {kinds}"));
    }
    report.note(
        SCENARIO,
        format!(
            "{} messages stored, {} appends failed (one writer per process, each waiting for its answer before its next append); append answered in p50 {} / p99 {} / max {}; worst lag of the append schedule {}; delivery max {}; counted from the append's 201 instead (0 when the message came first): p50 {} / p99 {}; server RSS {} with every follow open before the first append (idle {}), {} under load; the bench's own peak RSS with its {FANOUT_FOLLOWERS} lean clients {}",
            d.stored,
            load.failures.len(),
            ms(quantile(&load.answered, 0.5)),
            ms(quantile(&load.answered, 0.99)),
            ms(load.answered.last().copied().unwrap_or_default()),
            ms(load.worst_lag),
            ms(d.delays.last().copied().unwrap_or_default()),
            ms(quantile(&d.after_answer, 0.5)),
            ms(quantile(&d.after_answer, 0.99)),
            mib(idle.connected_rss),
            mib(idle.rss),
            mib(load.rss),
            mib(instances::vm_hwm_kib(std::process::id()).unwrap_or(0)),
        ),
    );
    report.note(SCENARIO, load.usage.clone());
    let q: Vec<String> = [0.5, 0.9, 0.95, 0.99, 0.999]
        .into_iter()
        .map(|q| ms(quantile(&d.delays, q)))
        .collect();
    report.note(
        SCENARIO,
        format!("delivery p50 / p90 / p95 / p99 / p99.9: {}", q.join(" / ")),
    );
}

/// The three commonest kinds of refused append, as `n × \`kind…\``.
fn refusal_kinds(failures: &[String]) -> Option<String> {
    let mut refusals: HashMap<String, usize> = HashMap::new();
    for failure in failures {
        let kind = failure
            .split_once(": ")
            .map_or(failure.as_str(), |(_, rest)| rest)
            .chars()
            .take(60)
            .collect::<String>();
        *refusals.entry(kind).or_default() += 1;
    }
    let mut kinds: Vec<(String, usize)> = refusals.into_iter().collect();
    kinds.sort_by_key(|kind| std::cmp::Reverse(kind.1));
    (!kinds.is_empty()).then(|| {
        kinds
            .iter()
            .take(3)
            .map(|(kind, n)| format!("{n} × `{kind}…`"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// What 10,000 plain keep-alive connections (one `GET /healthz` each, then idle) cost
/// a second, fresh server on the same backends: the HTTP layer's share of a follow's
/// memory.
pub async fn connections_only(env: &Env, report: &mut Report) {
    let server = Server::start(
        &env.pg.url(),
        Some(&env.redis.url()),
        &["--max-follows", "20000"],
    );
    let port = server.port();
    let pid = server.pid().expect("the server runs");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = instances::vm_rss_kib(pid).unwrap_or(0);
    let started = Instant::now();
    let mut conns = Vec::with_capacity(FANOUT_FOLLOWERS);
    for batch in 0..FANOUT_FOLLOWERS / CONNECT_BATCH {
        let mut tasks = Vec::new();
        for _ in 0..CONNECT_BATCH {
            tasks.push(tokio::spawn(async move {
                let mut conn = Conn::open(port).await.ok()?;
                match conn.call("GET", "/healthz", b"").await {
                    Ok((200, _)) => Some(conn),
                    _ => None,
                }
            }));
        }
        for task in tasks {
            if let Ok(Some(conn)) = task.await {
                conns.push(conn);
            }
        }
        // The server closes idle keep-alive connections after --header-read-timeout
        // (10 s): measure well before.
        if started.elapsed() > Duration::from_secs(7) {
            report.note(
                SCENARIO,
                format!(
                    "(plain connections: stopped at {} of {FANOUT_FOLLOWERS} after 7 s)",
                    (batch + 1) * CONNECT_BATCH
                ),
            );
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let open = instances::vm_rss_kib(pid).unwrap_or(0);
    let count = conns.len().max(1) as u64;
    report.note(
        SCENARIO,
        format!(
            "{} plain keep-alive HTTP connections (one `GET /healthz` each, then idle) on a second, fresh server: RSS {} → {} ({:.1} KiB per connection)",
            conns.len(),
            mib(idle),
            mib(open),
            open.saturating_sub(idle) as f64 / count as f64
        ),
    );
    drop(conns);
    drop(server);
}
