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
//! Then the fleet (issue 11, item 3; `tests/drills/fleet_drills.rs` is the same run as
//! a drill): HAProxy in front of three instances on a private PostgreSQL and Redis, 150
//! SSE followers that reconnect as an `EventSource` does (`Last-Event-ID`), one writer
//! at ~20 appends/s through HAProxy; one instance is killed (SIGKILL), then another
//! drained (SIGTERM), each once every follower is live. Printed: how many followers
//! were exact, their reconnects, from a drop to the next response, and the worst gap
//! from an append's answer to a follower having it.
//!
//! A name after `--` runs the faults (and the fleet) whose name contains it:
//! `cargo bench --bench fault_drills -- postgres`, `… -- fleet`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use agent_stream_testkit::client::{
    verify_appends, verify_exact, wait_for, Api, AppendRecord, Appender, AppenderConfig, Attempt,
    FollowSpec, FollowState, Follower, Format, Outcome,
};
use agent_stream_testkit::fixtures::message;
use agent_stream_testkit::fleet::{Fleet, FleetFigures};
use agent_stream_testkit::instances::{self, Haproxy, HaproxyTimeouts, Postgres, Redis};
use agent_stream_testkit::rig::Rig;

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
    if !rows.is_empty() {
        print_table(&rows);
    }
    let fleet =
        (filter.is_empty() || filter.iter().any(|w| FLEET_KEY.contains(w.as_str()))).then(|| {
            eprintln!("fault_drills: {FLEET_KEY} …");
            runtime.block_on(fleet_bench())
        });
    if let Some(fleet) = &fleet {
        print_fleet(fleet);
    }
    let fleet_inexact = fleet.iter().flat_map(|run| &run.inexact);
    if rows.iter().any(|row| !row.inexact.is_empty()) || fleet_inexact.clone().next().is_some() {
        for row in &rows {
            for problem in &row.inexact {
                eprintln!("NOT EXACT ({}): {problem}", row.fault.key());
            }
        }
        for problem in fleet_inexact {
            eprintln!("NOT EXACT ({FLEET_KEY}): {problem}");
        }
        std::process::exit(1);
    }
}

/// One row: set up (a [`Rig`] and its followers) → drive (the writer, the fault) →
/// finish and check every follower → measure.
async fn drill(fault: Fault) -> Row {
    let mut rig = Rig::start(fault.key(), fault != Fault::RedisDownAtStart, &[]);
    rig.deadline = Instant::now() + RUN + Duration::from_secs(60);
    rig.register().await;
    let followers = connect_followers(&rig, fault).await;
    let sse = followers
        .iter()
        .filter(|f| f.spec.format == Format::Sse)
        .count();

    let mut notes = Vec::new();
    let sampler = fault
        .whole_run()
        .then(|| Sampler::spawn(rig.server.pid().expect("the server runs")));
    let stalled = match fault {
        Fault::StalledClients => Some(open_stalled(&rig, &mut notes).await),
        _ => None,
    };
    let appender = start_writer(&rig, fault);
    let started = Instant::now();
    let window = inject(&mut rig, fault, started).await;

    tokio::time::sleep_until((started + RUN).into()).await;
    let records = appender.stop().await;
    let run_time = started.elapsed();
    let stopped = Instant::now();
    rig.server.sample_memory();
    let end_rss_kib = rig.server.rss_kib().unwrap_or(0);

    let (stored, states) = finish_and_join(&rig.api, &rig.process, fault.key(), followers).await;
    let peak_rss_kib = rig.server.peak_rss_kib();
    let closed_rss_kib = match stalled {
        Some(stalled) => close_stalled(&rig, stalled, &mut notes).await,
        None => None,
    };
    if let Some(sampler) = sampler {
        notes.push(rss_note(&sampler.stop().await, started, stopped));
    }
    let (exact, inexact) = judge(&records, &stored, &states);
    let delays = Delays::measure(&records, &states, window);
    if fault.whole_run() {
        notes.push(windows_note(&records, &states, started));
    }
    Row {
        fault,
        fault_lasted: if fault.whole_run() {
            run_time
        } else {
            window.end.saturating_duration_since(window.start)
        },
        stalled: if fault == Fault::StalledClients {
            STALLED_CLIENTS
        } else {
            0
        },
        sse,
        ndjson: states.len() - sse,
        exact,
        inexact,
        peak_rss_kib,
        end_rss_kib,
        closed_rss_kib,
        notes,
        ..Row::measured(&records, &stored, &states, run_time, delays)
    }
}

/// [`FOLLOWERS`] followers from the beginning (SSE, NDJSON, SSE, NDJSON on `/stream`,
/// in turn), reconnecting with their last stream ID, all connected once.
async fn connect_followers(rig: &Rig, fault: Fault) -> Vec<Follower> {
    let followers: Vec<Follower> = (0..FOLLOWERS)
        .map(|i| {
            let format = match i % 4 {
                0 | 2 => Format::Sse,
                1 => Format::Ndjson,
                _ => Format::NdjsonStream,
            };
            Follower::spawn(
                rig.api.http.clone(),
                FollowSpec {
                    // The bench keeps only seqs and times: 50 followers of ~2,000 messages.
                    keep_values: false,
                    ..rig.follow_spec(format, 0, true)
                },
            )
        })
        .collect();
    let connected = wait_for(Duration::from_secs(15), || {
        followers.iter().all(|f| f.connections() >= 1)
    })
    .await;
    assert!(
        connected,
        "{}: the followers did not all connect",
        fault.key()
    );
    followers
}

/// Opens the [`STALLED_CLIENTS`] follows that never read, and notes the server's RSS
/// before and after.
async fn open_stalled(rig: &Rig, notes: &mut Vec<String>) -> Stalled {
    let rss_before = rig.server.rss_kib().unwrap_or(0);
    let stalled = Stalled::open(rig.server.port(), &rig.process, STALLED_CLIENTS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    notes.push(format!(
        "server RSS {} with the {FOLLOWERS} followers, {} once the {} stalled follows were open too ({} SSE, {} NDJSON; every one answered 200), before the first append",
        mib(rss_before),
        mib(rig.server.rss_kib().unwrap_or(0)),
        stalled.streams.len(),
        stalled.sse,
        stalled.streams.len() - stalled.sse,
    ));
    stalled
}

/// The one writer: ~[`APPENDS_PER_SECOND`] appends, one at a time, resending an append
/// that got no answer.
fn start_writer(rig: &Rig, fault: Fault) -> Appender {
    Appender::spawn_with(
        rig.api.clone(),
        rig.process.clone(),
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
    )
}

/// When the fault held: appends answered in `start..end` are "during".
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// Causes the fault [`FAULT_AT`] after `started` and ends it [`FAULT_FOR`] later (Redis
/// down at start: ends it [`FAULT_FOR`] after `started`); returns when it held.
async fn inject(rig: &mut Rig, fault: Fault, started: Instant) -> Window {
    match fault {
        // Everything is "during": the stalled clients stay for the whole run.
        Fault::Baseline | Fault::StalledClients => Window {
            start: started,
            end: started + RUN + Duration::from_secs(3600),
        },
        Fault::RedisDownAtStart => {
            tokio::time::sleep_until((started + FAULT_FOR).into()).await;
            rig.redis.launch();
            Window {
                start: started,
                end: Instant::now(),
            }
        }
        _ => {
            tokio::time::sleep_until((started + FAULT_AT).into()).await;
            let start = Instant::now();
            match fault {
                Fault::RedisKill => rig.redis.kill(),
                Fault::PostgresStop => rig.pg.stop_immediate(),
                Fault::ServerKill9 => rig.server.kill9(),
                Fault::ServerSigterm => rig.server.sigterm(),
                Fault::RedisDownAtStart | Fault::Baseline | Fault::StalledClients => {
                    unreachable!()
                }
            }
            if fault == Fault::ServerSigterm {
                let exit = rig.server.wait_exit(Duration::from_secs(20));
                assert!(
                    exit.is_some(),
                    "the server did not exit within 20 s of SIGTERM"
                );
            }
            tokio::time::sleep_until((start + FAULT_FOR).into()).await;
            match fault {
                Fault::RedisKill => rig.redis.launch(),
                Fault::PostgresStop => rig.pg.launch(),
                Fault::ServerKill9 | Fault::ServerSigterm => rig.server.launch(),
                Fault::RedisDownAtStart | Fault::Baseline | Fault::StalledClients => {
                    unreachable!()
                }
            }
            Window {
                start,
                end: Instant::now(),
            }
        }
    }
}

/// Finishes `process`, reads what is stored, and waits for every follower's end; `what`
/// names the run in a failure.
async fn finish_and_join(
    api: &Api,
    process: &str,
    what: &str,
    followers: Vec<Follower>,
) -> (Vec<Value>, Vec<FollowState>) {
    match api
        .finish(process, "succeeded", Duration::from_secs(30))
        .await
    {
        Attempt::Answered { status: 200, .. } => {}
        other => panic!("{what}: finish answered {other:?}"),
    }
    let stored = api
        .snapshot(process, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut states = Vec::new();
    for follower in followers {
        states.push(follower.join().await);
    }
    (stored, states)
}

/// Notes what the kernel held for the stalled clients, closes them, and returns the
/// server's RSS a while later.
async fn close_stalled(rig: &Rig, stalled: Stalled, notes: &mut Vec<String>) -> Option<u64> {
    let queues = socket_queues(rig.server.port(), &stalled.ports);
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
    let closed_rss_kib = rig.server.rss_kib();
    let after = socket_queues(rig.server.port(), &HashSet::new());
    notes.push(format!(
        "3 s after the stalled clients closed: server RSS {}, {} connections to the server still open (the {FOLLOWERS} followers are done too)",
        mib(closed_rss_kib.unwrap_or(0)),
        after.server_sockets,
    ));
    closed_rss_kib
}

/// The server's RSS over the run, from the sampler.
fn rss_note(samples: &[Sample], started: Instant, stopped: Instant) -> String {
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
    format!(
        "server RSS (MiB) every second from the first append: {}; highest sampled while the writer ran {} (the peak RSS column also covers the finish and the bench's 16 MiB snapshot read); peak TCP memory of the machine {} MiB",
        timeline.join(", "),
        mib(peak_loaded),
        peak_tcp * 4 / 1024
    )
}

/// How many followers were exact, and what went wrong with the others (and with the
/// appends).
fn judge(
    records: &[AppendRecord],
    stored: &[Value],
    states: &[FollowState],
) -> (usize, Vec<String>) {
    let mut inexact = Vec::new();
    if let Err(problem) = verify_appends(records, stored) {
        inexact.push(format!("appends vs snapshot: {problem}"));
    }
    let mut exact = 0;
    for (i, state) in states.iter().enumerate() {
        match verify_exact(state, 0, stored, "succeeded") {
            Ok(()) => exact += 1,
            Err(problem) => inexact.push(format!("follower {i}: {problem}")),
        }
    }
    (exact, inexact)
}

/// Delays from an append's answer to a follower's receipt: the worst by when the
/// append was answered (before, during, after the fault), and all of them, sorted.
struct Delays {
    before: Worst,
    during: Worst,
    after: Worst,
    sorted: Vec<Duration>,
}

impl Delays {
    fn measure(records: &[AppendRecord], states: &[FollowState], window: Window) -> Self {
        let answered: HashMap<u64, Instant> = records
            .iter()
            .filter_map(|r| r.outcome.seq().map(|seq| (seq, r.answered)))
            .collect();
        let mut delays = Self {
            before: Worst::default(),
            during: Worst::default(),
            after: Worst::default(),
            sorted: Vec::new(),
        };
        for received in states.iter().flat_map(|state| &state.received) {
            let Some(&answered_at) = answered.get(&received.seq) else {
                continue;
            };
            let delay = received.at.saturating_duration_since(answered_at);
            delays.sorted.push(delay);
            if answered_at < window.start {
                delays.before.add(delay);
            } else if answered_at < window.end {
                delays.during.add(delay);
            } else {
                delays.after.add(delay);
            }
        }
        delays.sorted.sort();
        delays
    }
}

/// By when the append was answered, in 2 s windows from the first append: how many
/// were answered, and the delays of their deliveries (p50 / p99 / max).
fn windows_note(records: &[AppendRecord], states: &[FollowState], started: Instant) -> String {
    let mut windows: Vec<(usize, Vec<Duration>)> = Vec::new();
    for record in records {
        let Some(seq) = record.outcome.seq() else {
            continue;
        };
        let window = (record.answered.saturating_duration_since(started).as_secs() / 2) as usize;
        if windows.len() <= window {
            windows.resize_with(window + 1, Default::default);
        }
        windows[window].0 += 1;
        for state in states {
            // Seqs are 1, 2, 3, …: an exact follower got seq s at index s - 1 (one that
            // is not is reported as such; here it only counts where that holds).
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
    format!(
        "by when the append was answered (from the first append), delays p50 / p99 / max: {}",
        cells.join("; ")
    )
}

impl Row {
    /// The figures read from the appends, the stored messages and the followers; the
    /// drill fills in the rest.
    fn measured(
        records: &[AppendRecord],
        stored: &[Value],
        states: &[FollowState],
        run_time: Duration,
        delays: Delays,
    ) -> Self {
        let mut latencies: Vec<Duration> = records
            .iter()
            .filter(|r| r.failures.is_empty() && !matches!(r.outcome, Outcome::Unknown { .. }))
            .map(|r| r.answered.saturating_duration_since(r.sent))
            .collect();
        latencies.sort();
        let count =
            |pred: fn(&Outcome) -> bool| records.iter().filter(|r| pred(&r.outcome)).count();
        let answered_appends = records
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Unknown { .. }))
            .count();
        let message_bytes = if stored.is_empty() {
            0
        } else {
            stored.iter().map(|m| m.to_string().len()).sum::<usize>() / stored.len()
        };
        Row {
            fault: Fault::Baseline,
            fault_lasted: Duration::ZERO,
            appends_per_second: answered_appends as f64 / run_time.as_secs_f64(),
            message_bytes,
            stalled: 0,
            sse: 0,
            ndjson: 0,
            created: count(|o| matches!(o, Outcome::Created { .. })),
            already_stored: count(|o| matches!(o, Outcome::AlreadyStored { .. })),
            refused: count(|o| matches!(o, Outcome::Refused { .. })),
            unknown: count(|o| matches!(o, Outcome::Unknown { .. })),
            stored: stored.len(),
            delivered_min: states.iter().map(|s| s.received.len()).min().unwrap_or(0),
            delivered_max: states.iter().map(|s| s.received.len()).max().unwrap_or(0),
            exact: 0,
            inexact: Vec::new(),
            before: delays.before,
            during: delays.during,
            after: delays.after,
            delay_p50: quantile(&delays.sorted, 50),
            delay_p99: quantile(&delays.sorted, 99),
            delay_max: delays.sorted.last().copied().unwrap_or_default(),
            append_p50: quantile(&latencies, 50),
            append_max: latencies.last().copied().unwrap_or_default(),
            reconnects: states.iter().map(|s| s.connections.saturating_sub(1)).sum(),
            peak_rss_kib: 0,
            end_rss_kib: 0,
            closed_rss_kib: None,
            notes: Vec::new(),
        }
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

// --- the fleet behind HAProxy ------------------------------------------------------

const FLEET_KEY: &str = "fleet";
const FLEET_INSTANCES: usize = 3;
const FLEET_FOLLOWERS: usize = 150;
/// The servers' `--heartbeat`, well inside HAProxy's silence timeouts.
const FLEET_HEARTBEAT: &str = "1s";
const FLEET_HAPROXY: HaproxyTimeouts = HaproxyTimeouts {
    quiet: Duration::from_secs(3),
    check_interval: Duration::from_millis(500),
};
/// An `EventSource`'s reconnection time until the server sends a `retry:` hint.
const FLEET_BACKOFF: Duration = Duration::from_millis(250);
/// One append every 50 ms (20/s).
const FLEET_APPEND_EVERY: Duration = Duration::from_millis(50);
/// How long the followers may take to be live again after each fault.
const FLEET_RECOVERY: Duration = Duration::from_secs(10);
/// Followers give up (a violation) this long after the start.
const FLEET_DEADLINE: Duration = Duration::from_secs(90);

struct FleetRun {
    figures: FleetFigures,
    appends: usize,
    stored: usize,
    exact: usize,
    inexact: Vec<String>,
    took: Duration,
}

/// Set up (PostgreSQL, Redis, the fleet, followers, the writer) → drive (a kill, then a
/// drain, each once every follower is live) → finish and check every follower →
/// measure.
async fn fleet_bench() -> FleetRun {
    let pg = Postgres::start();
    let redis = Redis::start();
    let mut fleet = Fleet::start(
        &pg.url(),
        &redis.url(),
        FLEET_INSTANCES,
        &["--heartbeat", FLEET_HEARTBEAT],
        FLEET_HAPROXY,
    )
    .await;
    let started = Instant::now();
    let followers = fleet.sse_followers(FLEET_FOLLOWERS, started + FLEET_DEADLINE, FLEET_BACKOFF);
    let appender = Appender::spawn(
        fleet.api.clone(),
        fleet.process.clone(),
        "m".to_owned(),
        AppenderConfig {
            interval: FLEET_APPEND_EVERY,
            max: 4_000,
            retry_failures: true,
            give_up_after: Duration::from_secs(15),
        },
    );
    let mut inexact = Vec::new();
    live_again(&followers, &appender, "before the faults", &mut inexact).await;
    fleet.servers[0].kill9();
    live_again(&followers, &appender, "after the SIGKILL", &mut inexact).await;
    fleet.servers[1].sigterm();
    if fleet.servers[1]
        .wait_exit(Duration::from_secs(15))
        .is_none()
    {
        inexact.push("the drained instance did not exit within 15 s".to_owned());
    }
    live_again(&followers, &appender, "after the SIGTERM", &mut inexact).await;
    let records = appender.stop().await;

    let (stored, states) = finish_and_join(&fleet.api, &fleet.process, FLEET_KEY, followers).await;
    let (exact, problems) = judge(&records, &stored, &states);
    inexact.extend(problems);
    let answered: HashMap<u64, Instant> = records
        .iter()
        .filter_map(|r| r.outcome.seq().map(|seq| (seq, r.answered)))
        .collect();
    FleetRun {
        figures: FleetFigures::of(&states, &answered),
        appends: records.len(),
        stored: stored.len(),
        exact,
        inexact,
        took: started.elapsed(),
    }
}

/// Waits until every follower has 10 appends past what was appended now, within
/// [`FLEET_RECOVERY`]; notes it in `problems` if they do not.
async fn live_again(
    followers: &[Follower],
    appender: &Appender,
    what: &str,
    problems: &mut Vec<String>,
) {
    let target = appender.max_seq() + 10;
    let since = Instant::now();
    if wait_for(FLEET_RECOVERY, || Rig::min_received(followers) >= target).await {
        eprintln!(
            "fault_drills: {FLEET_KEY}: every follower at seq {target} {:?} {what}",
            since.elapsed()
        );
    } else {
        problems.push(format!(
            "not every follower reached seq {target} within {FLEET_RECOVERY:?} {what}: the slowest at {}",
            Rig::min_received(followers)
        ));
    }
}

fn print_fleet(run: &FleetRun) {
    let figures = &run.figures;
    println!();
    println!("### Fleet behind HAProxy");
    println!();
    println!("`cargo bench --bench fault_drills -- {FLEET_KEY}`");
    println!();
    println!(
        "{FLEET_FOLLOWERS} SSE followers (reconnecting with `Last-Event-ID`, as an `EventSource`) through HAProxy ({}) in front of {FLEET_INSTANCES} instances (release build, `--heartbeat {FLEET_HEARTBEAT}`) on one PostgreSQL and one Redis; one writer at ~{} appends/s through HAProxy, resending an append without an answer; one instance SIGKILLed, then another drained with SIGTERM, each once every follower was live. Took {:.1} s.",
        version(&Haproxy::binary()).lines().next().unwrap_or("?"),
        1000 / FLEET_APPEND_EVERY.as_millis(),
        run.took.as_secs_f64(),
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| appends / stored | {} / {} |", run.appends, run.stored);
    println!("| followers exact | {}/{FLEET_FOLLOWERS} |", run.exact);
    println!(
        "| reconnects | {} ({} after a broken response, {} after a drain's clean end with a `retry:` hint); per follower {} |",
        figures.reconnects, figures.broken, figures.drained, figures.per_follower
    );
    println!(
        "| drop to the next response | median {}, worst {} |",
        ms(figures.reconnect_median),
        ms(figures.reconnect_worst)
    );
    println!(
        "| worst gap (an append's answer to a follower having it) | {} (seq {}); p99 {} |",
        ms(figures.gap_worst),
        figures.gap_worst_seq,
        ms(figures.gap_p99)
    );
    println!();
}
