//! `polling`: 1,000 clients polling the snapshot vs 1,000 SSE followers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::client::Conn;
use crate::env::Env;
use crate::figures::{describe_top, ms, quantile, ratio};
use crate::follower::{follow_path, join_all, open_followers, Tally};
use crate::messages::message;
use crate::report::{Report, Scenario};

const POLL_CLIENTS: usize = 1000;
const POLL_PROCESSES: usize = 10;
const POLL_RATE: u64 = 10;
const POLL_RUN: Duration = Duration::from_secs(15);
const POLL_EVERY: Duration = Duration::from_secs(1);
const SCENARIO: Scenario = Scenario::Polling;

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

/// One phase's figures: delivery delays (sorted), PostgreSQL's rates, exactness.
struct Phase {
    delays: Vec<Duration>,
    statements: f64,
    xacts: f64,
    exact: usize,
    clients: usize,
    /// Polls made (0 for SSE).
    polls: u64,
    /// The statements run most and CPU, as a note.
    usage: String,
}

/// The appends of one phase, and what PostgreSQL and the CPUs did meanwhile.
struct Steady {
    sent: Vec<HashMap<u64, Instant>>,
    statements: f64,
    xacts: f64,
    usage: String,
}

pub async fn run(report: &mut Report) {
    let env = Env::start(true, &[]).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut conn = Conn::open(env.port).await.expect("connect");
    let poll = poll_phase(&env, report, &mut conn, &run).await;
    let Some(sse) = sse_phase(&env, report, &mut conn, &run).await else {
        return;
    };
    rows(report, &poll, &sse);
    drop(env);
}

/// `POLL_PROCESSES` fresh processes named `<prefix>-<p>-<run>`, registered.
async fn processes(conn: &mut Conn, prefix: &str, run: &str) -> Vec<String> {
    let names: Vec<String> = (0..POLL_PROCESSES)
        .map(|p| format!("{prefix}-{p}-{run}"))
        .collect();
    for name in &names {
        conn.put(name).await.expect("register");
    }
    names
}

/// `steady_appends` to `names`, with PostgreSQL's statements and the CPU measured around it.
async fn steady_load(env: &Env, names: &[String]) -> Steady {
    env.reset_statements().await;
    let (pg_a, cpu_a) = (env.pg_counts().await, env.cpu());
    let sent = steady_appends(env.port, names).await;
    let (pg_b, cpu_b) = (env.pg_counts().await, env.cpu());
    let top = env.top_statements(3).await;
    let seconds = pg_b.at.duration_since(pg_a.at).as_secs_f64();
    let (statements, xacts) = pg_a.rates(&pg_b);
    Steady {
        sent,
        statements,
        xacts,
        usage: format!(
            "statements mostly {}; {}",
            describe_top(&top, seconds),
            cpu_a.describe(&cpu_b)
        ),
    }
}

/// Phase 1: `POLL_CLIENTS` clients polling the snapshot every second.
async fn poll_phase(env: &Env, report: &mut Report, conn: &mut Conn, run: &str) -> Phase {
    let names = processes(conn, "poll", run).await;
    let stop = CancellationToken::new();
    let origin = tokio::time::Instant::now() + Duration::from_millis(200);
    let pollers: Vec<_> = (0..POLL_CLIENTS)
        .map(|i| {
            let process = i % POLL_PROCESSES;
            // Spread over the second, as independent browsers are.
            let first = origin + POLL_EVERY * (i as u32) / (POLL_CLIENTS as u32);
            let name = names[process].clone();
            tokio::spawn(poll_client(env.port, name, process, first, stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let load = steady_load(env, &names).await;
    tokio::time::sleep(POLL_EVERY + Duration::from_millis(500)).await;
    stop.cancel();
    let mut polled = Vec::new();
    for poller in pollers {
        polled.push(poller.await.expect("poller"));
    }
    let exact = polled
        .iter()
        .filter(|p| poller_exact(report, p, &load.sent))
        .count();
    Phase {
        delays: delays_of(
            &load.sent,
            polled.iter().map(|p| (p.process, p.times.as_slice())),
        ),
        statements: load.statements,
        xacts: load.xacts,
        exact,
        clients: polled.len(),
        polls: polled.iter().map(|p| p.polls).sum(),
        usage: load.usage,
    }
}

/// Whether a poller got every message of its process, in order; a problem if not.
fn poller_exact(report: &mut Report, p: &Polled, sent: &[HashMap<u64, Instant>]) -> bool {
    let want = sent[p.process].len() as u64;
    if p.last_seq == want && p.times.len() as u64 == want && p.problems.is_empty() {
        return true;
    }
    report.problem(
        SCENARIO,
        format!(
            "a poller of process {} got {} messages up to {} of {want}: {:?}",
            p.process,
            p.times.len(),
            p.last_seq,
            p.problems.iter().take(3).collect::<Vec<_>>()
        ),
    );
    false
}

/// Phase 2: `POLL_CLIENTS` SSE followers of fresh processes, the same load.
async fn sse_phase(env: &Env, report: &mut Report, conn: &mut Conn, run: &str) -> Option<Phase> {
    let names = processes(conn, "sse", run).await;
    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let paths: Vec<String> = names.iter().map(|n| follow_path(n)).collect();
    let handles = match open_followers(env.port, &paths, POLL_CLIENTS, &tally, true, deadline).await
    {
        Ok(handles) => handles,
        Err(e) => {
            report.problem(SCENARIO, e);
            return None;
        }
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let load = steady_load(env, &names).await;
    let expected = load.sent.iter().map(|m| m.len() as u64).sum::<u64>()
        * (POLL_CLIENTS / POLL_PROCESSES) as u64;
    tally
        .wait_delivered(expected, Duration::from_secs(10))
        .await;
    let mut last = [0; POLL_PROCESSES];
    for (p, name) in names.iter().enumerate() {
        last[p] = conn.finish(name).await.expect("finish");
    }
    let states = join_all(handles).await;
    let mut exact = 0;
    for state in &states {
        match state.verify(last[state.process]) {
            Ok(()) => exact += 1,
            Err(e) => report.problem(SCENARIO, e),
        }
    }
    Some(Phase {
        delays: delays_of(
            &load.sent,
            states.iter().map(|s| (s.process, s.times.as_slice())),
        ),
        statements: load.statements,
        xacts: load.xacts,
        exact,
        clients: states.len(),
        polls: 0,
        usage: load.usage,
    })
}

/// Delivery p50 and p99 and PostgreSQL's statements/s, SSE against polling; the notes.
fn rows(report: &mut Report, poll: &Phase, sse: &Phase) {
    let load = format!(
        "{POLL_CLIENTS} clients over {POLL_PROCESSES} processes, {POLL_RATE} appends/s for {} s",
        POLL_RUN.as_secs()
    );
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (ours, theirs) = (quantile(&sse.delays, q), quantile(&poll.delays, q));
        let r = ratio(ours.as_secs_f64(), theirs.as_secs_f64());
        report.row(
            SCENARIO,
            if q == 0.5 {
                format!("delivery {name}, SSE vs polling the snapshot every 1 s ({load})")
            } else {
                format!("delivery {name}, SSE vs polling")
            },
            ms(ours),
            format!("{} (polling)", ms(theirs)),
            r,
            "< polling",
            r.map(|r| r < 1.0),
        );
    }
    let r = ratio(sse.statements, poll.statements);
    report.row(
        SCENARIO,
        "PostgreSQL statements/s (pg_stat_statements), SSE vs polling",
        format!("{:.0}/s ({:.0} transactions/s)", sse.statements, sse.xacts),
        format!(
            "{:.0}/s ({:.0} transactions/s) (polling)",
            poll.statements, poll.xacts
        ),
        r,
        "< polling",
        r.map(|r| r < 1.0),
    );
    report.note(
        SCENARIO,
        format!(
            "polling: {} polls, {}/{} clients got every message; {}",
            poll.polls, poll.exact, poll.clients, poll.usage
        ),
    );
    report.note(
        SCENARIO,
        format!(
            "SSE: {}/{} followers exact; {}",
            sse.exact, sse.clients, sse.usage
        ),
    );
}
