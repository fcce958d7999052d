//! Performance figures of issues 4 and 12, each beside a raw baseline (or the peer)
//! measured in the same run:
//!
//! ```sh
//! AGENT_STREAM_TEST_PG_BINDIR=/usr/lib/postgresql/15/bin AGENT_STREAM_TEST_PG_USER=postgres \
//! AGENT_STREAM_TEST_REDIS_SERVER=/usr/bin/redis-server cargo bench --bench perf
//! ```
//!
//! Every scenario starts its own PostgreSQL cluster, Redis and agent-stream (release
//! build, default flags unless said) on 127.0.0.1, as `tests/drills/instances.rs` does
//! for the fault drills; PostgreSQL runs as production does (fsync on, see
//! `env::PRODUCTION_DURABILITY`). The baselines run from this process against the same
//! PostgreSQL and Redis, on tables of the bench's own (`perf.messages`, the shape and
//! indexes of `messages`; `perf.processes`) and keys of its own.
//!
//! - `latency`: append request sent → follower received, one append at a time, with 1
//!   and with 1,000 SSE followers of one process. Baseline: `INSERT` (autocommit) +
//!   `XADD` → a raw `XREAD BLOCK` reader on its own connection.
//! - `fanout`: 10,000 SSE followers over 1,000 processes, 1,000 appends/s spread over
//!   them for 20 s; delivery delay, exactness (every follower gets exactly every message
//!   then the end), server peak RSS (VmHWM), Redis connections (`CLIENT LIST`, less the
//!   bench's own), PostgreSQL statements/s.
//! - `catchup`: a follow (NDJSON) of 10,000 ~1 KiB messages from the start, to its last
//!   byte, vs `SELECT body … ORDER BY seq` of the same rows; the server's peak RSS while
//!   100 followers catch up at once, with 10,000 and with 50,000 messages of history.
//! - `throughput`: appends/s of 8 concurrent writers (each sequential, each its own
//!   process), one message per request and arrays of 100, vs raw `INSERT` + `XADD` of
//!   the same concurrency and batch sizes: the bare `INSERT`, and one that assigns seqs
//!   and skips known ids as an append must.
//! - `polling`: 1,000 clients polling the JSON snapshot every second vs 1,000 SSE
//!   followers, under 10 appends/s over 10 processes: delivery delay and PostgreSQL
//!   statements/s.
//! - `peer`: one producer, 2,000 small events 1 ms apart, K = 1, 50, 200 SSE followers
//!   attached first, on agent-stream and on Vercel's `resumable-stream` (Node, same
//!   Redis; `peer/`): per-event delay p50/p99 and server RSS, ours beside the peer's.
//!
//! Each scenario is a file (set up → drive → measure → rows), on the shared pieces:
//! `env` (the servers), `client` (HTTP/1.1), `follower` (SSE), `raw` (the baselines),
//! `messages`, `usage` (CPU, RSS), `figures` and `report` (the table, docs/performance.md).
//!
//! Prints one markdown table (figure, agent-stream, baseline, ratio, target, met?), the
//! machine and the command; `--write-docs` also rewrites the rows of the scenarios
//! that ran in docs/performance.md, between `<!-- perf:begin -->` and `<!-- perf:end -->`.
//! A name after `--` runs one scenario: `cargo bench --bench perf -- fanout`. Under
//! `cargo test` (no `--bench` argument) it does nothing.
//!
//! The clients are lean on purpose (raw tokio `TcpStream`, HTTP/1.1 with keep-alive,
//! chunked bodies decoded by hand, SSE and NDJSON framed without parsing the JSON), so
//! that 10,000 of them fit in this process and their cost stays small beside the
//! server's. Every loop is bounded in count and time.

use agent_stream_testkit::instances;

mod catchup;
mod client;
mod env;
mod fanout;
mod figures;
mod follower;
mod latency;
mod messages;
mod peer;
mod polling;
mod raw;
mod report;
mod throughput;
mod usage;

use std::time::{Duration, Instant};

use report::{machine, render, write_docs_section, Report, Scenario};

/// What the command line asks for.
struct Args {
    scenarios: Vec<Scenario>,
    write_docs: bool,
    /// The command as it was typed, for the table's notes.
    command: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("perf: a benchmark; run it with `cargo bench --bench perf`");
        return;
    }
    let args = parse(&args);
    let report = run(&args);
    let machine = machine();
    println!();
    println!("{}", render(&machine, &report.rows, &report.notes));
    if args.write_docs {
        match write_docs_section(&machine, &args.scenarios, &report) {
            Ok(path) => eprintln!("perf: rewrote the table in {path}"),
            Err(error) => {
                eprintln!("perf: could not rewrite docs/performance.md: {error}");
                std::process::exit(1);
            }
        }
    }
    if !report.problems.is_empty() {
        for problem in &report.problems {
            eprintln!("PROBLEM: {problem}");
        }
        std::process::exit(1);
    }
}

/// The scenarios named (all when none is), `--write-docs`, and the command; exits 2
/// when a name matches no scenario.
fn parse(args: &[String]) -> Args {
    let write_docs = args.iter().any(|a| a == "--write-docs");
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| filter.is_empty() || filter.iter().any(|w| s.key().contains(w.as_str())))
        .collect();
    if scenarios.is_empty() {
        let keys: Vec<&str> = Scenario::ALL.iter().map(|s| s.key()).collect();
        eprintln!(
            "perf: no scenario matches {filter:?}; scenarios: {}",
            keys.join(", ")
        );
        std::process::exit(2);
    }
    let mut command = "cargo bench --bench perf".to_owned();
    if !filter.is_empty() || write_docs {
        command.push_str(" --");
        for word in &filter {
            command.push(' ');
            command.push_str(word);
        }
        if write_docs {
            command.push_str(" --write-docs");
        }
    }
    Args {
        scenarios,
        write_docs,
        command,
    }
}

/// Runs each scenario in turn on a two-thread runtime, the bench's own clients.
fn run(args: &Args) -> Report {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = Report::default();
    for scenario in &args.scenarios {
        eprintln!("perf: {} …", scenario.key());
        let started = Instant::now();
        runtime.block_on(async {
            match scenario {
                Scenario::Latency => latency::run(&mut report).await,
                Scenario::Fanout => fanout::run(&mut report).await,
                Scenario::Catchup => catchup::run(&mut report).await,
                Scenario::Throughput => throughput::run(&mut report).await,
                Scenario::Polling => polling::run(&mut report).await,
                Scenario::Peer => peer::run(&mut report).await,
            }
        });
        report.note(
            *scenario,
            format!(
                "measured by `{}` in {:.0} s",
                args.command,
                started.elapsed().as_secs_f64()
            ),
        );
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    report
}
