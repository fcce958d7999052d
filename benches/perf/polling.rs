//! `polling`: 1,000 clients polling the snapshot vs 1,000 SSE followers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::client::Conn;
use crate::env::Env;
use crate::fanout::describe_top;
use crate::figures::{ms, quantile, ratio};
use crate::follower::{join_all, open_followers, Tally};
use crate::messages::message;
use crate::report::{Report, Scenario};

const POLL_CLIENTS: usize = 1000;
const POLL_PROCESSES: usize = 10;
const POLL_RATE: u64 = 10;
const POLL_RUN: Duration = Duration::from_secs(15);
const POLL_EVERY: Duration = Duration::from_secs(1);

/// What one polling client saw.
#[derive(Default)]
pub struct Polled {
    pub process: usize,
    pub last_seq: u64,
    pub times: Vec<(u32, Instant)>,
    pub polls: u64,
    pub problems: Vec<String>,
}

/// Polls the JSON snapshot after its last seq every `POLL_EVERY` from `first`, until
/// `stop`.
pub async fn poll_client(
    port: u16,
    name: String,
    process: usize,
    first: tokio::time::Instant,
    stop: CancellationToken,
) -> Polled {
    let mut out = Polled {
        process,
        ..Default::default()
    };
    let mut conn = match Conn::open(port).await {
        Ok(conn) => conn,
        Err(e) => {
            out.problems.push(format!("connect: {e}"));
            return out;
        }
    };
    let mut ticks = tokio::time::interval_at(first, POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded: the run's length in polls, and a margin.
    for _ in 0..(POLL_RUN.as_secs() * 3 + 60) {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let path = format!(
            "/processes/{name}/messages?follow=false&after={}",
            out.last_seq
        );
        let (status, body) = match conn.call("GET", &path, b"").await {
            Ok(answer) => answer,
            Err(e) => {
                out.problems.push(format!("poll: {e}"));
                match Conn::open(port).await {
                    Ok(fresh) => conn = fresh,
                    Err(_) => break,
                }
                continue;
            }
        };
        let at = Instant::now();
        out.polls += 1;
        if status != 200 {
            out.problems.push(format!("poll answered {status}"));
            continue;
        }
        let page: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
        for message in page {
            let seq = message["stream_id"]
                .as_str()
                .and_then(|s| s.strip_suffix("-0"))
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            if seq != out.last_seq + 1 {
                out.problems
                    .push(format!("seq {seq} after {}", out.last_seq));
            }
            out.last_seq = seq;
            out.times.push((seq as u32, at));
        }
    }
    out
}

/// Appends `POLL_RATE` messages/s spread over `names` for `POLL_RUN`: each
/// (process, seq)'s send time.
pub async fn steady_appends(port: u16, names: &[String]) -> Vec<HashMap<u64, Instant>> {
    let mut conn = Conn::open(port).await.expect("connect");
    let mut sent = vec![HashMap::new(); names.len()];
    let total = POLL_RATE * POLL_RUN.as_secs();
    let started = tokio::time::Instant::now();
    for k in 0..total {
        tokio::time::sleep_until(started + Duration::from_millis(k * 1000 / POLL_RATE)).await;
        let process = (k as usize) % names.len();
        let at = Instant::now();
        match conn
            .append(&names[process], message("p", k).as_bytes())
            .await
        {
            Ok(seq) => {
                sent[process].insert(seq, at);
            }
            Err(e) => panic!("polling: {e}"),
        }
    }
    sent
}

pub fn delays_of<'a>(
    sent: &[HashMap<u64, Instant>],
    received: impl Iterator<Item = (usize, &'a [(u32, Instant)])>,
) -> Vec<Duration> {
    let mut delays = Vec::new();
    for (process, times) in received {
        for &(seq, at) in times {
            if let Some(sent) = sent[process].get(&u64::from(seq)) {
                delays.push(at.duration_since(*sent));
            }
        }
    }
    delays.sort();
    delays
}

pub async fn run(report: &mut Report) {
    let scenario = Scenario::Polling;
    let env = Env::start(true, &[]).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut conn = Conn::open(env.port).await.expect("connect");

    // Phase 1: polling clients.
    let poll_names: Vec<String> = (0..POLL_PROCESSES)
        .map(|p| format!("poll-{p}-{run}"))
        .collect();
    for name in &poll_names {
        conn.put(name).await.expect("register");
    }
    let stop = CancellationToken::new();
    let origin = tokio::time::Instant::now() + Duration::from_millis(200);
    let pollers: Vec<_> = (0..POLL_CLIENTS)
        .map(|i| {
            let process = i % POLL_PROCESSES;
            // Spread over the second, as independent browsers are.
            let first = origin + POLL_EVERY * (i as u32) / (POLL_CLIENTS as u32);
            tokio::spawn(poll_client(
                env.port,
                poll_names[process].clone(),
                process,
                first,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.reset_statements().await;
    let (pg_a, cpu_a) = (env.pg_counts().await, env.cpu());
    let sent_poll = steady_appends(env.port, &poll_names).await;
    let (pg_b, cpu_b) = (env.pg_counts().await, env.cpu());
    let top_poll = env.top_statements(3).await;
    let poll_seconds = pg_b.at.duration_since(pg_a.at).as_secs_f64();
    tokio::time::sleep(POLL_EVERY + Duration::from_millis(500)).await;
    stop.cancel();
    let mut polled = Vec::new();
    for poller in pollers {
        polled.push(poller.await.expect("poller"));
    }
    let mut poll_exact = 0;
    for p in &polled {
        let want = sent_poll[p.process].len() as u64;
        if p.last_seq == want && p.times.len() as u64 == want && p.problems.is_empty() {
            poll_exact += 1;
        } else {
            report.problem(
                scenario,
                format!(
                    "a poller of process {} got {} messages up to {} of {want}: {:?}",
                    p.process,
                    p.times.len(),
                    p.last_seq,
                    p.problems.iter().take(3).collect::<Vec<_>>()
                ),
            );
        }
    }
    let polls: u64 = polled.iter().map(|p| p.polls).sum();
    let poll_delays = delays_of(
        &sent_poll,
        polled.iter().map(|p| (p.process, p.times.as_slice())),
    );
    let (poll_statements, poll_xacts) = pg_a.rates(&pg_b);

    // Phase 2: SSE followers, fresh processes, the same load.
    let sse_names: Vec<String> = (0..POLL_PROCESSES)
        .map(|p| format!("sse-{p}-{run}"))
        .collect();
    for name in &sse_names {
        conn.put(name).await.expect("register");
    }
    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let handles =
        match open_followers(env.port, &sse_names, POLL_CLIENTS, &tally, true, deadline).await {
            Ok(handles) => handles,
            Err(e) => {
                report.problem(scenario, e);
                return;
            }
        };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.reset_statements().await;
    let (pg_c, cpu_c) = (env.pg_counts().await, env.cpu());
    let sent_sse = steady_appends(env.port, &sse_names).await;
    let (pg_d, cpu_d) = (env.pg_counts().await, env.cpu());
    let top_sse = env.top_statements(3).await;
    let sse_seconds = pg_d.at.duration_since(pg_c.at).as_secs_f64();
    let expected = sent_sse.iter().map(|m| m.len() as u64).sum::<u64>()
        * (POLL_CLIENTS / POLL_PROCESSES) as u64;
    tally
        .wait_delivered(expected, Duration::from_secs(10))
        .await;
    let mut last = [0; POLL_PROCESSES];
    for (p, name) in sse_names.iter().enumerate() {
        last[p] = conn.finish(name).await.expect("finish");
    }
    let states = join_all(handles).await;
    let mut sse_exact = 0;
    for state in &states {
        match state.verify(last[state.process]) {
            Ok(()) => sse_exact += 1,
            Err(e) => report.problem(scenario, e),
        }
    }
    let sse_delays = delays_of(
        &sent_sse,
        states.iter().map(|s| (s.process, s.times.as_slice())),
    );
    let (sse_statements, sse_xacts) = pg_c.rates(&pg_d);

    let load = format!(
        "{POLL_CLIENTS} clients over {POLL_PROCESSES} processes, {POLL_RATE} appends/s for {} s",
        POLL_RUN.as_secs()
    );
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (sse, poll) = (quantile(&sse_delays, q), quantile(&poll_delays, q));
        let r = ratio(sse.as_secs_f64(), poll.as_secs_f64());
        report.row(
            scenario,
            if q == 0.5 {
                format!("delivery {name}, SSE vs polling the snapshot every 1 s ({load})")
            } else {
                format!("delivery {name}, SSE vs polling")
            },
            ms(sse),
            format!("{} (polling)", ms(poll)),
            r,
            "< polling",
            r.map(|r| r < 1.0),
        );
    }
    let r = ratio(sse_statements, poll_statements);
    report.row(
        scenario,
        "PostgreSQL statements/s (pg_stat_statements), SSE vs polling",
        format!("{sse_statements:.0}/s ({sse_xacts:.0} transactions/s)"),
        format!("{poll_statements:.0}/s ({poll_xacts:.0} transactions/s) (polling)"),
        r,
        "< polling",
        r.map(|r| r < 1.0),
    );
    report.note(
        scenario,
        format!(
            "polling: {polls} polls, {poll_exact}/{} clients got every message; statements mostly {}; {}",
            polled.len(),
            describe_top(&top_poll, poll_seconds),
            cpu_a.describe(&cpu_b)
        ),
    );
    report.note(
        scenario,
        format!(
            "SSE: {sse_exact}/{} followers exact; statements mostly {}; {}",
            states.len(),
            describe_top(&top_sse, sse_seconds),
            cpu_c.describe(&cpu_d)
        ),
    );
    drop(env);
}
