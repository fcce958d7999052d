//! Fault drills under load, for issue 3's closing table:
//!
//! ```sh
//! AGENT_STREAM_TEST_PG_BINDIR=/usr/lib/postgresql/15/bin AGENT_STREAM_TEST_PG_USER=postgres \
//! AGENT_STREAM_TEST_REDIS_SERVER=/usr/bin/redis-server cargo bench --bench fault_drills
//! ```
//!
//! For each fault (Redis kill + restart, Redis down at start, PostgreSQL stop + start,
//! server kill -9 + restart, server SIGTERM + restart), on a private PostgreSQL, Redis
//! and agent-stream (release build) on 127.0.0.1: 50 followers (SSE and NDJSON) follow
//! one process from the beginning while one writer appends ~100 messages/s for ~10 s;
//! the fault starts 3.5 s in and lasts ~3 s (Redis down at start: the first 3 s).
//! Followers that lose their connection reconnect with the last stream ID they saw
//! (SSE `Last-Event-ID`, NDJSON `?after=`); the writer resends, same id, an append
//! that got no answer. Then the process is finished, and each follower's messages are
//! compared with the stored ones: the same, in order, no duplicates, then the end.
//!
//! Printed: a markdown table with, per fault, how long it lasted, the load, appends
//! and their outcomes, messages delivered per follower and whether every follower was
//! exact, the worst delay from an append's answer to a follower's receipt (before,
//! during and after the fault, by the time the append was answered), how long appends
//! took to be answered, reconnections and the server's peak RSS (VmHWM, highest over its runs). Exits 1 if a follower was
//! not exact. Under `cargo test` (no `--bench` argument) it does nothing.
//!
//! A name after `--` runs the faults whose name contains it:
//! `cargo bench --bench fault_drills -- postgres`.

#[path = "../tests/drills/client.rs"]
mod client;
#[path = "../tests/drills/instances.rs"]
mod instances;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use client::{
    process_id, verify_exact, Api, Appender, AppenderConfig, Attempt, FollowSpec, FollowState,
    Follower, Format, Outcome,
};
use instances::{Postgres, Redis, Server};

const FOLLOWERS: usize = 50;
const APPENDS_PER_SECOND: u64 = 100;
const RUN: Duration = Duration::from_secs(10);
const FAULT_AT: Duration = Duration::from_millis(3500);
const FAULT_FOR: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    RedisKill,
    RedisDownAtStart,
    PostgresStop,
    ServerKill9,
    ServerSigterm,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::RedisKill,
        Fault::RedisDownAtStart,
        Fault::PostgresStop,
        Fault::ServerKill9,
        Fault::ServerSigterm,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::RedisKill => "Redis SIGKILL, restarted empty",
            Fault::RedisDownAtStart => "Redis down at start, started later",
            Fault::PostgresStop => "PostgreSQL `pg_ctl -m immediate stop`, started again",
            Fault::ServerKill9 => "agent-stream kill -9, restarted on the same port",
            Fault::ServerSigterm => "agent-stream SIGTERM, restarted on the same port",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Fault::RedisKill => "redis-kill",
            Fault::RedisDownAtStart => "redis-down-at-start",
            Fault::PostgresStop => "postgres-stop",
            Fault::ServerKill9 => "server-kill9",
            Fault::ServerSigterm => "server-sigterm",
        }
    }
}

/// Worst delay in one window, and over how many deliveries.
#[derive(Debug, Default, Clone, Copy)]
struct Worst {
    delay: Duration,
    deliveries: usize,
}

impl Worst {
    fn add(&mut self, delay: Duration) {
        self.delay = self.delay.max(delay);
        self.deliveries += 1;
    }

    fn cell(self) -> String {
        if self.deliveries == 0 {
            "– (none answered)".to_owned()
        } else {
            ms(self.delay)
        }
    }
}

struct Row {
    fault: Fault,
    fault_lasted: Duration,
    appends_per_second: f64,
    sse: usize,
    ndjson: usize,
    created: usize,
    already_stored: usize,
    refused: usize,
    unknown: usize,
    stored: usize,
    delivered_min: usize,
    delivered_max: usize,
    exact: usize,
    inexact: Vec<String>,
    before: Worst,
    during: Worst,
    after: Worst,
    /// Answer time of appends answered at the first attempt.
    append_p50: Duration,
    append_max: Duration,
    reconnects: u32,
    peak_rss_kib: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("fault_drills: a benchmark; run it with `cargo bench --bench fault_drills`");
        return;
    }
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let faults: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| filter.is_empty() || filter.iter().any(|w| f.key().contains(w.as_str())))
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rows = Vec::new();
    for fault in faults {
        eprintln!("fault_drills: {} …", fault.name());
        let row = runtime.block_on(drill(fault));
        eprintln!(
            "fault_drills: {}: {} stored, {}/{} followers exact",
            fault.key(),
            row.stored,
            row.exact,
            row.sse + row.ndjson
        );
        rows.push(row);
    }
    print_table(&rows);
    if rows.iter().any(|row| !row.inexact.is_empty()) {
        for row in &rows {
            for problem in &row.inexact {
                eprintln!("NOT EXACT ({}): {problem}", row.fault.key());
            }
        }
        std::process::exit(1);
    }
}

async fn drill(fault: Fault) -> Row {
    let mut pg = Postgres::start();
    let mut redis = if fault == Fault::RedisDownAtStart {
        Redis::reserve()
    } else {
        Redis::start()
    };
    let mut server = Server::start(&pg.url(), Some(&redis.url()), &[]);
    let api = Api::new(&server.base());
    let process = process_id(fault.key());
    match api.put_process(&process).await {
        Attempt::Answered { status: 201, .. } => {}
        other => panic!("PUT /processes/{process}: {other:?}"),
    }

    let deadline = Instant::now() + RUN + Duration::from_secs(60);
    let followers: Vec<Follower> = (0..FOLLOWERS)
        .map(|i| {
            let format = match i % 4 {
                0 | 2 => Format::Sse,
                1 => Format::Ndjson,
                _ => Format::NdjsonStream,
            };
            Follower::spawn(
                api.http.clone(),
                FollowSpec {
                    base: api.base.clone(),
                    process: process.clone(),
                    format,
                    after: 0,
                    reconnect: true,
                    deadline,
                    keep_values: false,
                },
            )
        })
        .collect();
    let connected = client::wait_for(Duration::from_secs(15), || {
        followers.iter().all(|f| f.connections() >= 1)
    })
    .await;
    assert!(
        connected,
        "{}: the followers did not all connect",
        fault.key()
    );
    let sse = followers
        .iter()
        .filter(|f| f.spec.format == Format::Sse)
        .count();

    let appender = Appender::spawn(
        api.clone(),
        process.clone(),
        "m".to_owned(),
        AppenderConfig {
            interval: Duration::from_micros(1_000_000 / APPENDS_PER_SECOND),
            max: (APPENDS_PER_SECOND * RUN.as_secs() * 2) as usize,
            retry_failures: true,
            give_up_after: Duration::from_secs(30),
        },
    );
    let started = Instant::now();

    let (fault_start, fault_end) = match fault {
        Fault::RedisDownAtStart => {
            tokio::time::sleep_until((started + FAULT_FOR).into()).await;
            redis.launch();
            (started, Instant::now())
        }
        _ => {
            tokio::time::sleep_until((started + FAULT_AT).into()).await;
            let fault_start = Instant::now();
            match fault {
                Fault::RedisKill => redis.kill(),
                Fault::PostgresStop => pg.stop_immediate(),
                Fault::ServerKill9 => server.kill9(),
                Fault::ServerSigterm => server.sigterm(),
                Fault::RedisDownAtStart => unreachable!(),
            }
            if fault == Fault::ServerSigterm {
                let exit = server.wait_exit(Duration::from_secs(20));
                assert!(
                    exit.is_some(),
                    "the server did not exit within 20 s of SIGTERM"
                );
            }
            tokio::time::sleep_until((fault_start + FAULT_FOR).into()).await;
            match fault {
                Fault::RedisKill => redis.launch(),
                Fault::PostgresStop => pg.launch(),
                Fault::ServerKill9 | Fault::ServerSigterm => server.launch(),
                Fault::RedisDownAtStart => unreachable!(),
            }
            (fault_start, Instant::now())
        }
    };

    tokio::time::sleep_until((started + RUN).into()).await;
    let records = appender.stop().await;
    let run_time = started.elapsed();
    server.sample_memory();

    match api
        .finish(&process, "succeeded", Duration::from_secs(30))
        .await
    {
        Attempt::Answered { status: 200, .. } => {}
        other => panic!("{}: finish answered {other:?}", fault.key()),
    }
    let stored = api
        .snapshot(&process, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut states: Vec<FollowState> = Vec::new();
    for follower in followers {
        states.push(follower.join().await);
    }
    let peak_rss_kib = server.peak_rss_kib();

    let mut inexact = Vec::new();
    if let Err(problem) = client::verify_appends(&records, &stored) {
        inexact.push(format!("appends vs snapshot: {problem}"));
    }
    let mut exact = 0;
    for (i, state) in states.iter().enumerate() {
        match verify_exact(state, 0, &stored, "succeeded") {
            Ok(()) => exact += 1,
            Err(problem) => inexact.push(format!("follower {i}: {problem}")),
        }
    }

    // Delays, by when the append was answered.
    let answered: HashMap<u64, Instant> = records
        .iter()
        .filter_map(|r| r.outcome.seq().map(|seq| (seq, r.answered)))
        .collect();
    let (mut before, mut during, mut after) =
        (Worst::default(), Worst::default(), Worst::default());
    for state in &states {
        for received in &state.received {
            let Some(&answered_at) = answered.get(&received.seq) else {
                continue;
            };
            let delay = received.at.saturating_duration_since(answered_at);
            if answered_at < fault_start {
                before.add(delay);
            } else if answered_at < fault_end {
                during.add(delay);
            } else {
                after.add(delay);
            }
        }
    }

    let mut latencies: Vec<Duration> = records
        .iter()
        .filter(|r| r.failures.is_empty() && !matches!(r.outcome, Outcome::Unknown { .. }))
        .map(|r| r.answered.saturating_duration_since(r.sent))
        .collect();
    latencies.sort();
    let latency = |q: usize| {
        latencies
            .get((latencies.len() * q / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let count = |pred: fn(&Outcome) -> bool| records.iter().filter(|r| pred(&r.outcome)).count();
    let answered_appends = records
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Unknown { .. }))
        .count();
    Row {
        fault,
        fault_lasted: fault_end.saturating_duration_since(fault_start),
        appends_per_second: answered_appends as f64 / run_time.as_secs_f64(),
        sse,
        ndjson: states.len() - sse,
        created: count(|o| matches!(o, Outcome::Created { .. })),
        already_stored: count(|o| matches!(o, Outcome::AlreadyStored { .. })),
        refused: count(|o| matches!(o, Outcome::Refused { .. })),
        unknown: count(|o| matches!(o, Outcome::Unknown { .. })),
        stored: stored.len(),
        delivered_min: states.iter().map(|s| s.received.len()).min().unwrap_or(0),
        delivered_max: states.iter().map(|s| s.received.len()).max().unwrap_or(0),
        exact,
        inexact,
        before,
        during,
        after,
        append_p50: latency(50),
        append_max: latencies.last().copied().unwrap_or_default(),
        reconnects: states.iter().map(|s| s.connections.saturating_sub(1)).sum(),
        peak_rss_kib,
    }
}

fn ms(duration: Duration) -> String {
    if duration < Duration::from_millis(10) {
        format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
    } else {
        format!("{} ms", duration.as_millis())
    }
}

fn version(program: &std::path::Path) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

fn print_table(rows: &[Row]) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!();
    println!("### Fault drills");
    println!();
    println!(
        "`AGENT_STREAM_TEST_PG_BINDIR=/usr/lib/postgresql/15/bin AGENT_STREAM_TEST_PG_USER=postgres AGENT_STREAM_TEST_REDIS_SERVER=/usr/bin/redis-server cargo bench --bench fault_drills`"
    );
    println!();
    println!(
        "One process; {FOLLOWERS} followers from the start; one writer at ~{APPENDS_PER_SECOND} appends/s (one at a time) for {} s; the fault {} s in, for ~{} s (Redis down at start: the first {} s). All on 127.0.0.1, {cpus} CPUs shared by the server, PostgreSQL, Redis and the clients; server built in release with default flags. {}; {}. Delay: from the append's 201 to a follower's receipt, grouped by when the 201 came (before, during, after the fault). The writer waits for each answer before the next append, so a fault that holds or refuses appends lowers the rate answered.",
        RUN.as_secs(),
        FAULT_AT.as_secs_f64(),
        FAULT_FOR.as_secs(),
        FAULT_FOR.as_secs(),
        version(&Postgres::bindir().join("postgres")),
        version(&Redis::binary()),
    );
    println!();
    println!("| fault | lasted | load | appends: 201 / 200 on retry / refused / unanswered | append answered in (p50 / max) | stored | delivered per follower | exact followers | worst delay before | worst delay during | worst delay after | reconnects | peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let delivered = if row.delivered_min == row.delivered_max {
            row.delivered_min.to_string()
        } else {
            format!("{}–{}", row.delivered_min, row.delivered_max)
        };
        println!(
            "| {} | {:.1} s | {} followers ({} SSE, {} NDJSON), {} appends/s offered, {:.0}/s answered | {} / {} / {} / {} | {} / {} | {} | {} | {}/{} | {} | {} | {} | {} | {:.1} MiB |",
            row.fault.name(),
            row.fault_lasted.as_secs_f64(),
            row.sse + row.ndjson,
            row.sse,
            row.ndjson,
            APPENDS_PER_SECOND,
            row.appends_per_second,
            row.created,
            row.already_stored,
            row.refused,
            row.unknown,
            ms(row.append_p50),
            ms(row.append_max),
            row.stored,
            delivered,
            row.exact,
            row.sse + row.ndjson,
            row.before.cell(),
            row.during.cell(),
            row.after.cell(),
            row.reconnects,
            row.peak_rss_kib as f64 / 1024.0,
        );
    }
    println!();
}
