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
//! took to be answered, the delay over the whole run (p50 / p99 / max), reconnections,
//! the server's peak RSS (VmHWM, highest over its runs) and its RSS at the end. Exits 1
//! if a follower was not exact. Under `cargo test` (no `--bench` argument) it does nothing.
//!
//! Two more rows load the server with ~16 KiB messages (the fixture's, each padded
//! with a `payload.padding` string) instead of the fixture's own sizes:
//! - `baseline`: no fault at all, the reference for the delays and the RSS;
//! - `stalled-clients`: the same load, plus 300 clients that open a follow of the same
//!   process (over raw TCP, SSE and NDJSON) before the writer starts, and then never
//!   read a byte (they only `MSG_PEEK` the response head, which consumes nothing), so
//!   their socket buffers fill. The 50 followers must still be exact, with delays like
//!   the baseline's. Printed besides: the server's RSS at the end (and after the
//!   stalled clients close), its RSS over time, and how many bytes the kernel holds
//!   for the stalled connections.
//!
//! A name after `--` runs the faults whose name contains it:
//! `cargo bench --bench fault_drills -- postgres`.

#[path = "../tests/drills/client.rs"]
mod client;
#[path = "../tests/drills/instances.rs"]
mod instances;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use client::{
    message, process_id, verify_exact, Api, Appender, AppenderConfig, Attempt, FollowSpec,
    FollowState, Follower, Format, Outcome,
};
use instances::{Postgres, Redis, Server};

const FOLLOWERS: usize = 50;
const APPENDS_PER_SECOND: u64 = 100;
const RUN: Duration = Duration::from_secs(10);
const FAULT_AT: Duration = Duration::from_millis(3500);
const FAULT_FOR: Duration = Duration::from_secs(3);
/// Clients that open a follow and never read (the `stalled-clients` row).
const STALLED_CLIENTS: usize = 300;
/// Smallest message (bytes of its JSON) of the `baseline` and `stalled-clients` rows.
const BIG_MESSAGE_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Baseline,
    RedisKill,
    RedisDownAtStart,
    PostgresStop,
    ServerKill9,
    ServerSigterm,
    StalledClients,
}

impl Fault {
    const ALL: [Fault; 7] = [
        Fault::RedisKill,
        Fault::RedisDownAtStart,
        Fault::PostgresStop,
        Fault::ServerKill9,
        Fault::ServerSigterm,
        Fault::Baseline,
        Fault::StalledClients,
    ];

    fn name(self) -> String {
        match self {
            Fault::Baseline => "none (baseline for the stalled clients)".to_owned(),
            Fault::RedisKill => "Redis SIGKILL, restarted empty".to_owned(),
            Fault::RedisDownAtStart => "Redis down at start, started later".to_owned(),
            Fault::PostgresStop => {
                "PostgreSQL `pg_ctl -m immediate stop`, started again".to_owned()
            }
            Fault::ServerKill9 => "agent-stream kill -9, restarted on the same port".to_owned(),
            Fault::ServerSigterm => "agent-stream SIGTERM, restarted on the same port".to_owned(),
            Fault::StalledClients => format!("{STALLED_CLIENTS} stalled clients (never read)"),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Fault::Baseline => "baseline",
            Fault::StalledClients => "stalled-clients",
            Fault::RedisKill => "redis-kill",
            Fault::RedisDownAtStart => "redis-down-at-start",
            Fault::PostgresStop => "postgres-stop",
            Fault::ServerKill9 => "server-kill9",
            Fault::ServerSigterm => "server-sigterm",
        }
    }

    /// Rows without a fault window: the load (and the stalled clients) last the whole
    /// run, and the delays are read over all of it.
    fn whole_run(self) -> bool {
        matches!(self, Fault::Baseline | Fault::StalledClients)
    }

    /// Rows with ~16 KiB messages rather than the fixture's sizes.
    fn big_messages(self) -> bool {
        self.whole_run()
    }
}

/// The fixture's `n`th message with its payload padded so that its JSON is at least
/// [`BIG_MESSAGE_BYTES`].
fn big_message(tag: &str, n: usize) -> Value {
    const TEXT: &str = "the quick brown fox jumps over the lazy dog 0123456789 ";
    let mut message = message(tag, n);
    let short = BIG_MESSAGE_BYTES.saturating_sub(message.to_string().len() + 16);
    let padding: String = TEXT
        .chars()
        .cycle()
        .skip(n % TEXT.len())
        .take(short)
        .collect();
    message["payload"]["padding"] = Value::from(padding);
    message
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
    /// Mean size of a stored message, bytes of its JSON.
    message_bytes: usize,
    stalled: usize,
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
    /// Every delivery's delay, whatever its window: p50, p99, max.
    delay_p50: Duration,
    delay_p99: Duration,
    delay_max: Duration,
    /// Answer time of appends answered at the first attempt.
    append_p50: Duration,
    append_max: Duration,
    reconnects: u32,
    peak_rss_kib: u64,
    /// VmRSS when the writer stopped (the stalled clients still connected).
    end_rss_kib: u64,
    /// VmRSS a while after the stalled clients closed their connections.
    closed_rss_kib: Option<u64>,
    /// Details printed under the table.
    notes: Vec<String>,
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
                    eventsource_backoff: None,
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

    let mut notes = Vec::new();
    let sampler = fault
        .whole_run()
        .then(|| Sampler::spawn(server.pid().expect("the server runs")));
    let stalled = if fault == Fault::StalledClients {
        let rss_before = server.rss_kib().unwrap_or(0);
        let stalled = Stalled::open(server.port(), &process, STALLED_CLIENTS).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        notes.push(format!(
            "server RSS {} with the {FOLLOWERS} followers, {} once the {} stalled follows were open too ({} SSE, {} NDJSON; every one answered 200), before the first append",
            mib(rss_before),
            mib(server.rss_kib().unwrap_or(0)),
            stalled.streams.len(),
            stalled.sse,
            stalled.streams.len() - stalled.sse,
        ));
        Some(stalled)
    } else {
        None
    };

    let appender = Appender::spawn_with(
        api.clone(),
        process.clone(),
        "m".to_owned(),
        AppenderConfig {
            interval: Duration::from_micros(1_000_000 / APPENDS_PER_SECOND),
            max: (APPENDS_PER_SECOND * RUN.as_secs() * 2) as usize,
            retry_failures: true,
            give_up_after: Duration::from_secs(30),
        },
        if fault.big_messages() {
            big_message
        } else {
            message
        },
    );
    let started = Instant::now();

    let (fault_start, fault_end) = match fault {
        // Everything is "during": the stalled clients stay for the whole run.
        Fault::Baseline | Fault::StalledClients => {
            (started, started + RUN + Duration::from_secs(3600))
        }
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
                Fault::RedisDownAtStart | Fault::Baseline | Fault::StalledClients => {
                    unreachable!()
                }
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
                Fault::RedisDownAtStart | Fault::Baseline | Fault::StalledClients => {
                    unreachable!()
                }
            }
            (fault_start, Instant::now())
        }
    };

    tokio::time::sleep_until((started + RUN).into()).await;
    let records = appender.stop().await;
    let run_time = started.elapsed();
    let stopped = Instant::now();
    server.sample_memory();
    let end_rss_kib = server.rss_kib().unwrap_or(0);

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
    let mut closed_rss_kib = None;
    if let Some(stalled) = stalled {
        let queues = socket_queues(server.port(), &stalled.ports);
        let count = stalled.streams.len().max(1) as u64;
        notes.push(format!(
            "once the followers got the end, per stalled connection the kernel held {} KiB unread on the client side and {} KiB unsent on the server side (mean; max {} + {} KiB); {}/{} stalled connections still established; TCP memory of the whole machine {} MiB (/proc/net/sockstat)",
            queues.client_rx / count / 1024,
            queues.server_tx / count / 1024,
            queues.client_rx_max / 1024,
            queues.server_tx_max / 1024,
            queues.established,
            stalled.streams.len(),
            tcp_mem_pages().unwrap_or(0) * 4 / 1024,
        ));
        drop(stalled);
        tokio::time::sleep(Duration::from_secs(3)).await;
        closed_rss_kib = server.rss_kib();
        let after = socket_queues(server.port(), &HashSet::new());
        notes.push(format!(
            "3 s after the stalled clients closed: server RSS {}, {} connections to the server still open (the {FOLLOWERS} followers are done too)",
            mib(closed_rss_kib.unwrap_or(0)),
            after.server_sockets,
        ));
    }
    if let Some(sampler) = sampler {
        let samples = sampler.stop().await;
        let peak_tcp = samples.iter().map(|s| s.tcp_mem_pages).max().unwrap_or(0);
        let peak_loaded = samples
            .iter()
            .filter(|s| s.at <= stopped)
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0);
        let timeline: Vec<String> = samples
            .iter()
            .filter(|s| s.at >= started)
            .step_by(5)
            .map(|s| {
                format!(
                    "{:.0}s {:.0}",
                    s.at.saturating_duration_since(started).as_secs_f64(),
                    s.rss_kib as f64 / 1024.0
                )
            })
            .collect();
        notes.push(format!(
            "server RSS (MiB) every second from the first append: {}; highest sampled while the writer ran {} (the peak RSS column also covers the finish and the bench's 16 MiB snapshot read); peak TCP memory of the machine {} MiB",
            timeline.join(", "),
            mib(peak_loaded),
            peak_tcp * 4 / 1024
        ));
    }

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
    let mut delays = Vec::new();
    for state in &states {
        for received in &state.received {
            let Some(&answered_at) = answered.get(&received.seq) else {
                continue;
            };
            let delay = received.at.saturating_duration_since(answered_at);
            delays.push(delay);
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
    delays.sort();
    let latency = |q: usize| quantile(&latencies, q);
    let count = |pred: fn(&Outcome) -> bool| records.iter().filter(|r| pred(&r.outcome)).count();
    let answered_appends = records
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Unknown { .. }))
        .count();
    if fault.whole_run() {
        // By when the append was answered, in 2 s windows from the first append: how
        // many were answered, and the delays of their deliveries (p50 / p99 / max).
        let mut windows: Vec<(usize, Vec<Duration>)> = Vec::new();
        for record in &records {
            let Some(seq) = record.outcome.seq() else {
                continue;
            };
            let window =
                (record.answered.saturating_duration_since(started).as_secs() / 2) as usize;
            if windows.len() <= window {
                windows.resize_with(window + 1, Default::default);
            }
            windows[window].0 += 1;
            for state in &states {
                // Seqs are 1, 2, 3, …: an exact follower got seq s at index s - 1
                // (one that is not is reported as such; here it only counts where
                // that holds).
                let index = (seq as usize).checked_sub(1);
                if let Some(received) = index.and_then(|i| state.received.get(i)) {
                    if received.seq == seq {
                        windows[window]
                            .1
                            .push(received.at.saturating_duration_since(record.answered));
                    }
                }
            }
        }
        let cells: Vec<String> = windows
            .iter_mut()
            .enumerate()
            .map(|(i, (answered, delays))| {
                delays.sort();
                format!(
                    "{}–{} s: {answered} appends, {} / {} / {}",
                    2 * i,
                    2 * i + 2,
                    ms(quantile(delays, 50)),
                    ms(quantile(delays, 99)),
                    ms(delays.last().copied().unwrap_or_default()),
                )
            })
            .collect();
        notes.push(format!(
            "by when the append was answered (from the first append), delays p50 / p99 / max: {}",
            cells.join("; ")
        ));
    }
    let message_bytes = if stored.is_empty() {
        0
    } else {
        stored.iter().map(|m| m.to_string().len()).sum::<usize>() / stored.len()
    };
    Row {
        fault,
        fault_lasted: if fault.whole_run() {
            run_time
        } else {
            fault_end.saturating_duration_since(fault_start)
        },
        appends_per_second: answered_appends as f64 / run_time.as_secs_f64(),
        message_bytes,
        stalled: if fault == Fault::StalledClients {
            STALLED_CLIENTS
        } else {
            0
        },
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
        delay_p50: quantile(&delays, 50),
        delay_p99: quantile(&delays, 99),
        delay_max: delays.last().copied().unwrap_or_default(),
        append_p50: latency(50),
        append_max: latencies.last().copied().unwrap_or_default(),
        reconnects: states.iter().map(|s| s.connections.saturating_sub(1)).sum(),
        peak_rss_kib,
        end_rss_kib,
        closed_rss_kib,
        notes,
    }
}

/// The `q`th percentile of sorted durations (zero when there are none).
fn quantile(sorted: &[Duration], q: usize) -> Duration {
    sorted
        .get((sorted.len() * q / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// --- stalled clients ---------------------------------------------------------------

/// Follows opened over raw TCP whose responses are never read: the server's writes
/// fill the sockets' buffers and then block. Closed on drop.
struct Stalled {
    streams: Vec<TcpStream>,
    /// Their local ports, to find them in /proc/net/tcp.
    ports: HashSet<u16>,
    sse: usize,
}

impl Stalled {
    /// Opens `count` follows of `process` from the beginning (SSE, NDJSON, NDJSON on
    /// `/stream`, in turn) and waits until each one's `200` head has arrived, looking at
    /// it with `MSG_PEEK` only: nothing is consumed, so the receive buffer fills as if
    /// the client were gone.
    async fn open(port: u16, process: &str, count: usize) -> Self {
        let mut streams = Vec::with_capacity(count);
        let mut sse = 0;
        for i in 0..count {
            let (path, accept) = match i % 3 {
                0 => ("messages", "text/event-stream"),
                1 => ("messages", "application/x-ndjson"),
                _ => ("messages/stream", "application/x-ndjson"),
            };
            if accept == "text/event-stream" {
                sse += 1;
            }
            let mut stream = tokio::time::timeout(
                Duration::from_secs(5),
                TcpStream::connect(("127.0.0.1", port)),
            )
            .await
            .unwrap_or_else(|_| panic!("stalled client {i}: connect timed out"))
            .unwrap_or_else(|e| panic!("stalled client {i}: connect: {e}"));
            let request = format!(
                "GET /processes/{process}/{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\n\r\n"
            );
            stream
                .write_all(request.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("stalled client {i}: send the request: {e}"));
            streams.push(stream);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, stream) in streams.iter().enumerate() {
            let mut head = [0u8; 512];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let n = tokio::time::timeout(left, stream.peek(&mut head))
                    .await
                    .unwrap_or_else(|_| panic!("stalled client {i}: no response head in 20 s"))
                    .unwrap_or_else(|e| panic!("stalled client {i}: peek: {e}"));
                let text = String::from_utf8_lossy(&head[..n]);
                if text.contains("\r\n\r\n") || n == head.len() {
                    assert!(
                        text.starts_with("HTTP/1.1 200"),
                        "stalled client {i}: the follow was not opened: {text}"
                    );
                    break;
                }
                assert!(
                    n > 0,
                    "stalled client {i}: the server closed the connection"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let ports = streams
            .iter()
            .map(|s| s.local_addr().expect("local address").port())
            .collect();
        Self {
            streams,
            ports,
            sse,
        }
    }
}

/// Bytes queued in the kernel for connections between `client_ports` and the server.
#[derive(Debug, Default)]
struct SocketQueues {
    /// Received but unread, on the clients' side.
    client_rx: u64,
    client_rx_max: u64,
    /// Written by the server but not yet acknowledged by the clients' side.
    server_tx: u64,
    server_tx_max: u64,
    /// Client sockets still ESTABLISHED.
    established: usize,
    /// Server-side sockets of connections to the server's port (any client).
    server_sockets: usize,
}

/// Reads /proc/net/tcp (127.0.0.1 is IPv4).
fn socket_queues(server_port: u16, client_ports: &HashSet<u16>) -> SocketQueues {
    fn port(address: &str) -> Option<u16> {
        u16::from_str_radix(address.rsplit(':').next()?, 16).ok()
    }
    let mut queues = SocketQueues::default();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(state), Some(tx_rx)) = (
            fields.get(1).and_then(|a| port(a)),
            fields.get(2).and_then(|a| port(a)),
            fields.get(3),
            fields.get(4),
        ) else {
            continue;
        };
        let Some((tx, rx)) = tx_rx.split_once(':') else {
            continue;
        };
        let (tx, rx) = (
            u64::from_str_radix(tx, 16).unwrap_or(0),
            u64::from_str_radix(rx, 16).unwrap_or(0),
        );
        // State 0A is LISTEN.
        if local == server_port && *state != "0A" {
            queues.server_sockets += 1;
            if client_ports.contains(&remote) {
                queues.server_tx += tx;
                queues.server_tx_max = queues.server_tx_max.max(tx);
            }
        } else if remote == server_port && client_ports.contains(&local) {
            queues.client_rx += rx;
            queues.client_rx_max = queues.client_rx_max.max(rx);
            if *state == "01" {
                queues.established += 1;
            }
        }
    }
    queues
}

/// Pages of memory all TCP sockets of the machine use (`TCP: … mem N`).
fn tcp_mem_pages() -> Option<u64> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    words.next()?.parse().ok()
}

struct Sample {
    at: Instant,
    rss_kib: u64,
    tcp_mem_pages: u64,
}

/// Samples a process's VmRSS and the machine's TCP memory every 200 ms.
struct Sampler {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn spawn(pid: u32) -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut samples = Vec::new();
                let mut ticks = tokio::time::interval(Duration::from_millis(200));
                // Bounded: at most 10 minutes of samples.
                for _ in 0..3000 {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = ticks.tick() => {}
                    }
                    let Some(rss_kib) = instances::vm_rss_kib(pid) else {
                        break;
                    };
                    samples.push(Sample {
                        at: Instant::now(),
                        rss_kib,
                        tcp_mem_pages: tcp_mem_pages().unwrap_or(0),
                    });
                }
                samples
            }
        });
        Self { stop, handle }
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        self.handle.await.unwrap_or_default()
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
        "One process; {FOLLOWERS} followers from the start; one writer at ~{APPENDS_PER_SECOND} appends/s (one at a time) for {} s; the fault {} s in, for ~{} s (Redis down at start: the first {} s). All on 127.0.0.1, {cpus} CPUs shared by the server, PostgreSQL, Redis and the clients; server built in release with default flags. {}; {}. Delay: from the append's 201 to a follower's receipt, grouped by when the 201 came (before, during, after the fault). The writer waits for each answer before the next append, so a fault that holds or refuses appends lowers the rate answered. The last two rows have no fault window and messages padded to at least {} KiB: the baseline, then the same load with {STALLED_CLIENTS} more clients that open a follow of the same process (raw TCP, a third each SSE, NDJSON and NDJSON on `/stream`) before the first append and never read a byte of it. Peak RSS: VmHWM, over the whole drill including the finish and the snapshot read that checks the followers; RSS at end: VmRSS when the writer stopped, the stalled clients still connected.",
        RUN.as_secs(),
        FAULT_AT.as_secs_f64(),
        FAULT_FOR.as_secs(),
        FAULT_FOR.as_secs(),
        version(&Postgres::bindir().join("postgres")),
        version(&Redis::binary()),
        BIG_MESSAGE_BYTES / 1024,
    );
    println!();
    println!("| fault | lasted | load | appends: 201 / 200 on retry / refused / unanswered | append answered in (p50 / max) | stored | delivered per follower | exact followers | worst delay before | worst delay during | worst delay after | delay, whole run (p50 / p99 / max) | reconnects | peak RSS | RSS at end |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let delivered = if row.delivered_min == row.delivered_max {
            row.delivered_min.to_string()
        } else {
            format!("{}–{}", row.delivered_min, row.delivered_max)
        };
        let (lasted, before, during, after) = match row.fault {
            Fault::Baseline => (
                "–".to_owned(),
                "–".to_owned(),
                "–".to_owned(),
                "–".to_owned(),
            ),
            Fault::StalledClients => (
                format!("whole run ({:.1} s)", row.fault_lasted.as_secs_f64()),
                "–".to_owned(),
                row.during.cell(),
                "–".to_owned(),
            ),
            _ => (
                format!("{:.1} s", row.fault_lasted.as_secs_f64()),
                row.before.cell(),
                row.during.cell(),
                row.after.cell(),
            ),
        };
        let stalled = if row.stalled > 0 {
            format!(" + {} stalled", row.stalled)
        } else {
            String::new()
        };
        let end_rss = match row.closed_rss_kib {
            Some(closed) => format!(
                "{} ({} after the stalled clients closed)",
                mib(row.end_rss_kib),
                mib(closed)
            ),
            None => mib(row.end_rss_kib),
        };
        println!(
            "| {} | {} | {} followers ({} SSE, {} NDJSON){stalled}, {} appends/s offered, {:.0}/s answered, {:.1} KiB messages (mean) | {} / {} / {} / {} | {} / {} | {} | {} | {}/{} | {} | {} | {} | {} / {} / {} | {} | {} | {} |",
            row.fault.name(),
            lasted,
            row.sse + row.ndjson,
            row.sse,
            row.ndjson,
            APPENDS_PER_SECOND,
            row.appends_per_second,
            row.message_bytes as f64 / 1024.0,
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
            before,
            during,
            after,
            ms(row.delay_p50),
            ms(row.delay_p99),
            ms(row.delay_max),
            row.reconnects,
            mib(row.peak_rss_kib),
            end_rss,
        );
    }
    println!();
    for row in rows {
        for note in &row.notes {
            println!("- {}: {note}", row.fault.key());
        }
    }
    if rows.iter().any(|row| !row.notes.is_empty()) {
        println!();
    }
}
