//! `fanout`: 10,000 SSE followers over 1,000 processes under 1,000 appends/s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::env::{bench_redis, Env, BENCH_CLIENT_NAME};
use crate::figures::{mib, ms, per_second, quantile, ratio, thousands};
use crate::follower::{join_all, open_followers, Tally, CONNECT_BATCH};
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

pub async fn run(report: &mut Report) {
    let scenario = Scenario::Fanout;
    let env = Env::start(true, &["--max-follows", "20000"]).await;
    let raw = raw_latency(&env, "raw-fanout", 300).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let names: Vec<String> = (0..FANOUT_PROCESSES)
        .map(|p| format!("fan-{p}-{run}"))
        .collect();
    // Register every process, 40 connections at a time.
    let mut tasks = Vec::new();
    for w in 0..FANOUT_WORKERS {
        let names: Vec<String> = names
            .iter()
            .skip(w)
            .step_by(FANOUT_WORKERS)
            .cloned()
            .collect();
        let port = env.port;
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = env.server.rss_kib().unwrap_or(0);
    let idle_redis = env.server_redis_clients().await;
    connections_only(&env, report).await;

    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let connect_started = Instant::now();
    let (pg_before_connect, cpu_before_connect) = (env.pg_counts().await, env.cpu());
    let handles =
        match open_followers(env.port, &names, FANOUT_FOLLOWERS, &tally, true, deadline).await {
            Ok(handles) => handles,
            Err(e) => {
                report.problem(scenario, e);
                return;
            }
        };
    let connect_time = connect_started.elapsed();
    let (pg_connected, cpu_connected) = (env.pg_counts().await, env.cpu());
    let connected_rss = env.server.rss_kib().unwrap_or(0);
    report.note(
        scenario,
        format!(
            "{FANOUT_FOLLOWERS} follows opened in {:.1} s ({CONNECT_BATCH} at a time; {} answered 503 busy and were tried again); meanwhile PostgreSQL ran {:.0} statements/s ({:.0} transactions/s); {}",
            connect_time.as_secs_f64(),
            tally.open_retries.load(Ordering::SeqCst),
            pg_before_connect.rates(&pg_connected).0,
            pg_before_connect.rates(&pg_connected).1,
            cpu_before_connect.describe(&cpu_connected)
        ),
    );
    // Idle, all connected: the followers' store checks alone.
    env.reset_statements().await;
    let (pg_idle, cpu_idle) = (env.pg_counts().await, env.cpu());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (pg_idle_end, cpu_idle_end) = (env.pg_counts().await, env.cpu());
    let idle_top = env.top_statements(3).await;
    report.note(
        scenario,
        format!(
            "all {FANOUT_FOLLOWERS} connected, no appends (3 s): PostgreSQL {:.0} statements/s ({:.0} transactions/s), mostly {}; {}",
            pg_idle.rates(&pg_idle_end).0,
            pg_idle.rates(&pg_idle_end).1,
            describe_top(&idle_top, 3.0),
            cpu_idle.describe(&cpu_idle_end)
        ),
    );

    // The load: one writer per process, as each agent writes its own, on its own
    // connection, one append at a time: process p's appends at p ms, p ms + 1 s, …
    env.reset_statements().await;
    let (pg_start, cpu_start) = (env.pg_counts().await, env.cpu());
    let total = FANOUT_RATE * FANOUT_RUN.as_secs();
    let started = tokio::time::Instant::now() + Duration::from_millis(50);
    let redis_peak = Arc::new(AtomicUsize::new(0));
    let monitor = tokio::spawn({
        let url = env.redis.url();
        let redis_peak = redis_peak.clone();
        async move {
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
                    .filter(|l| {
                        !l.trim().is_empty() && !l.contains(&format!("name={BENCH_CLIENT_NAME} "))
                    })
                    .count();
                redis_peak.fetch_max(count, Ordering::SeqCst);
            }
        }
    });
    let mut workers = Vec::new();
    for (process, name) in names.iter().enumerate() {
        let (name, port) = (name.clone(), env.port);
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::open(port).await.expect("connect");
            let mut records: Vec<(usize, u64, Instant, Instant)> = Vec::new();
            let mut answered = Vec::new();
            let mut failures = Vec::new();
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
        }));
    }
    let mut sent: Vec<HashMap<u64, Instant>> = vec![HashMap::new(); FANOUT_PROCESSES];
    let mut answered_at: Vec<HashMap<u64, Instant>> = vec![HashMap::new(); FANOUT_PROCESSES];
    let mut answered = Vec::new();
    let mut failures = Vec::new();
    let mut worst_lag = Duration::ZERO;
    for worker in workers {
        let (records, times, errors, lag) = worker.await.expect("append worker");
        for (process, seq, at, answer) in records {
            sent[process].insert(seq, at);
            answered_at[process].insert(seq, answer);
        }
        answered.extend(times);
        failures.extend(errors);
        worst_lag = worst_lag.max(lag);
    }
    let load_time = started.elapsed();
    let (pg_end, cpu_end) = (env.pg_counts().await, env.cpu());
    let load_top = env.top_statements(4).await;
    let redis_during = env.server_redis_clients().await;
    let rss_during = env.server.rss_kib().unwrap_or(0);
    // Let the last deliveries land before finishing.
    let expected = sent.iter().map(|m| m.len() as u64).sum::<u64>()
        * (FANOUT_FOLLOWERS / FANOUT_PROCESSES) as u64;
    tally
        .wait_delivered(expected, Duration::from_secs(10))
        .await;
    monitor.abort();
    // Refused appends are a figure of their own (the writer was told; nothing lost).
    let mut refusals: HashMap<String, usize> = HashMap::new();
    for failure in &failures {
        let kind = failure
            .split_once(": ")
            .map_or(failure.as_str(), |(_, rest)| rest)
            .chars()
            .take(60)
            .collect::<String>();
        *refusals.entry(kind).or_default() += 1;
    }

    // Finish every process; each follower must have exactly its messages, then the end.
    let mut finishers = Vec::new();
    for w in 0..FANOUT_WORKERS {
        let names: Vec<(usize, String)> = names
            .iter()
            .cloned()
            .enumerate()
            .skip(w)
            .step_by(FANOUT_WORKERS)
            .collect();
        let port = env.port;
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
                Err(e) => report.problem(scenario, e),
            }
        }
    }
    let states = join_all(handles).await;
    let peak_rss = instances::vm_hwm_kib(env.server_pid()).unwrap_or(0);
    let mut exact = 0;
    let (mut lost, mut doubled) = (0u64, 0u64);
    let mut delays = Vec::with_capacity(expected as usize);
    let mut after_answer = Vec::with_capacity(expected as usize);
    for state in &states {
        let last = last_seq[state.process];
        if sent[state.process].len() as u64 != last {
            report.problem(
                scenario,
                format!(
                    "process {}: {} appends answered 201 but {last} stored",
                    state.process,
                    sent[state.process].len()
                ),
            );
        }
        match state.verify(last) {
            Ok(()) => exact += 1,
            Err(e) => {
                if report.problems.len() < 20 {
                    report.problem(scenario, e);
                }
            }
        }
        lost += last.saturating_sub(state.received);
        doubled += state.duplicates;
        for &(seq, at) in &state.times {
            if let Some(sent) = sent[state.process].get(&u64::from(seq)) {
                delays.push(at.duration_since(*sent));
            }
            if let Some(answer) = answered_at[state.process].get(&u64::from(seq)) {
                // Zero when the message came before the 201.
                after_answer.push(at.saturating_duration_since(*answer));
            }
        }
    }
    delays.sort();
    after_answer.sort();
    answered.sort();
    let stored: u64 = last_seq.iter().sum();
    let (p50, p99) = (quantile(&delays, 0.5), quantile(&delays, 0.99));
    let (raw50, raw99) = (quantile(&raw, 0.5), quantile(&raw, 0.99));
    let load = format!(
        "{FANOUT_FOLLOWERS} SSE followers, {FANOUT_PROCESSES} processes, {:.0} appends/s for {:.0} s",
        per_second(answered.len() as f64, load_time),
        load_time.as_secs_f64()
    );
    let r50 = ratio(p50.as_secs_f64(), raw50.as_secs_f64());
    report.row(
        scenario,
        format!("delivery p50 ({load})"),
        ms(p50),
        format!("{} (raw INSERT + XADD → XREAD, idle)", ms(raw50)),
        r50,
        "–",
        None,
    );
    let r99 = ratio(p99.as_secs_f64(), raw99.as_secs_f64());
    report.row(
        scenario,
        "delivery p99",
        ms(p99),
        format!("{} (raw, idle)", ms(raw99)),
        r99,
        "< 50 ms",
        Some(p99 < Duration::from_millis(50)),
    );
    report.row(
        scenario,
        "server peak RSS (VmHWM)",
        mib(peak_rss),
        format!("{} (idle, no follower)", mib(idle_rss)),
        ratio(peak_rss as f64, idle_rss as f64),
        "< 300 MB",
        Some(peak_rss * 1024 < 300_000_000),
    );
    let redis_held = redis_peak.load(Ordering::SeqCst).max(redis_during);
    report.row(
        scenario,
        "Redis connections held (CLIENT LIST, peak)",
        redis_held.to_string(),
        format!("{idle_redis} (no follower)"),
        ratio(redis_held as f64, idle_redis as f64),
        "≤ 16",
        Some(redis_held <= 16),
    );
    report.row(
        scenario,
        "messages lost / doubled, over all followers",
        format!(
            "{lost} / {doubled} ({exact}/{} followers exact; {} deliveries)",
            states.len(),
            thousands(delays.len() as f64)
        ),
        "–",
        None,
        "0 / 0",
        Some(lost == 0 && doubled == 0 && exact == states.len()),
    );
    let offered = answered.len() + failures.len();
    report.row(
        scenario,
        "appends refused or unanswered (one writer per process, each waits for its answer)",
        format!("{} of {offered}", failures.len()),
        "–",
        None,
        "0",
        Some(failures.is_empty()),
    );
    if !refusals.is_empty() {
        let mut kinds: Vec<(String, usize)> = refusals.into_iter().collect();
        kinds.sort_by_key(|kind| std::cmp::Reverse(kind.1));
        report.note(
            scenario,
            format!(
                "appends refused: {}",
                kinds
                    .iter()
                    .take(3)
                    .map(|(kind, n)| format!("{n} × `{kind}…`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    report.note(
        scenario,
        format!(
            "{stored} messages stored, {} appends failed (one writer per process, each waiting for its answer before its next append); append answered in p50 {} / p99 {} / max {}; worst lag of the append schedule {}; delivery max {}; counted from the append's 201 instead (0 when the message came first): p50 {} / p99 {}; server RSS {} with every follow open before the first append (idle {}), {} under load; the bench's own peak RSS with its {FANOUT_FOLLOWERS} lean clients {}",
            failures.len(),
            ms(quantile(&answered, 0.5)),
            ms(quantile(&answered, 0.99)),
            ms(answered.last().copied().unwrap_or_default()),
            ms(worst_lag),
            ms(delays.last().copied().unwrap_or_default()),
            ms(quantile(&after_answer, 0.5)),
            ms(quantile(&after_answer, 0.99)),
            mib(connected_rss),
            mib(idle_rss),
            mib(rss_during),
            mib(instances::vm_hwm_kib(std::process::id()).unwrap_or(0)),
        ),
    );
    let (statements, xacts) = pg_start.rates(&pg_end);
    report.note(
        scenario,
        format!(
            "under load: PostgreSQL {statements:.0} statements/s ({xacts:.0} transactions/s), mostly {}; {}",
            describe_top(&load_top, load_time.as_secs_f64()),
            cpu_start.describe(&cpu_end)
        ),
    );
    let mut second = [Duration::ZERO; 5];
    for (i, q) in [0.5, 0.9, 0.95, 0.99, 0.999].into_iter().enumerate() {
        second[i] = quantile(&delays, q);
    }
    report.note(
        scenario,
        format!(
            "delivery p50 / p90 / p95 / p99 / p99.9: {} / {} / {} / {} / {}",
            ms(second[0]),
            ms(second[1]),
            ms(second[2]),
            ms(second[3]),
            ms(second[4])
        ),
    );
    drop(env);
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
                Scenario::Fanout,
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
        Scenario::Fanout,
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

pub fn describe_top(top: &[(i64, String)], seconds: f64) -> String {
    if top.is_empty() {
        return "(no statement statistics)".to_owned();
    }
    top.iter()
        .map(|(calls, query)| format!("`{query}` {:.0}/s", *calls as f64 / seconds.max(1e-3)))
        .collect::<Vec<_>>()
        .join(", ")
}
