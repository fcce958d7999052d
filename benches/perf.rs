//! Performance figures of issue 4, each beside a raw baseline measured in the same run:
//!
//! ```sh
//! AGENT_STREAM_TEST_PG_BINDIR=/usr/lib/postgresql/15/bin AGENT_STREAM_TEST_PG_USER=postgres \
//! AGENT_STREAM_TEST_REDIS_SERVER=/usr/bin/redis-server cargo bench --bench perf
//! ```
//!
//! Every scenario starts its own PostgreSQL cluster, Redis and agent-stream (release
//! build, default flags unless said) on 127.0.0.1, as `tests/drills/instances.rs` does
//! for the fault drills; the baselines run from this process against the same
//! PostgreSQL and Redis, on a table of the bench's own (`perf.messages`, the shape and
//! indexes of `messages`) and keys of its own.
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
//!   the same concurrency and batch sizes.
//! - `polling`: 1,000 clients polling the JSON snapshot every second vs 1,000 SSE
//!   followers, under 10 appends/s over 10 processes: delivery delay and PostgreSQL
//!   statements/s.
//!
//! Prints one markdown table (figure, agent-stream, baseline, ratio, target, met?), the
//! machine and the command; `--write-readme` also rewrites the rows of the scenarios
//! that ran in README.md, between `<!-- perf:begin -->` and `<!-- perf:end -->`.
//! A name after `--` runs one scenario: `cargo bench --bench perf -- fanout`. Under
//! `cargo test` (no `--bench` argument) it does nothing.
//!
//! The clients are lean on purpose (raw tokio `TcpStream`, HTTP/1.1 with keep-alive,
//! chunked bodies decoded by hand, SSE and NDJSON framed without parsing the JSON), so
//! that 10,000 of them fit in this process and their cost stays small beside the
//! server's. Every loop is bounded in count and time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use agent_stream_testkit::instances::{self, Postgres, Redis, Server};

/// Size of every message the bench writes (its JSON as sent), in bytes.
const MESSAGE_BYTES: usize = 1024;
/// Bound on one HTTP call of the lean client.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Followers connect this many at a time.
const CONNECT_BATCH: usize = 500;
/// Name of the bench's own Redis connections, left out of the server's count.
const BENCH_CLIENT_NAME: &str = "perf-bench";

// --- latency ---
const LATENCY_WARMUP: u64 = 30;
const LATENCY_SAMPLES_ONE: u64 = 1000;
const LATENCY_SAMPLES_MANY: u64 = 300;
const MANY_FOLLOWERS: usize = 1000;
// --- fan-out ---
const FANOUT_FOLLOWERS: usize = 10_000;
const FANOUT_PROCESSES: usize = 1000;
const FANOUT_RATE: u64 = 1000;
const FANOUT_RUN: Duration = Duration::from_secs(20);
/// Connections that register and finish the processes.
const FANOUT_WORKERS: usize = 40;
// --- catch-up ---
const CATCHUP_SHORT: u64 = 10_000;
const CATCHUP_LONG: u64 = 50_000;
const CATCHUP_FOLLOWERS: usize = 100;
const CATCHUP_REPEATS: usize = 7;
// --- throughput ---
const WRITERS: usize = 8;
const BATCH: usize = 100;
const THROUGHPUT_RUN: Duration = Duration::from_secs(5);
const THROUGHPUT_WARMUP: Duration = Duration::from_secs(1);
// --- polling ---
const POLL_CLIENTS: usize = 1000;
const POLL_PROCESSES: usize = 10;
const POLL_RATE: u64 = 10;
const POLL_RUN: Duration = Duration::from_secs(15);
const POLL_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Latency,
    Fanout,
    Catchup,
    Throughput,
    Polling,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Latency,
        Scenario::Fanout,
        Scenario::Catchup,
        Scenario::Throughput,
        Scenario::Polling,
    ];

    fn key(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Fanout => "fanout",
            Scenario::Catchup => "catchup",
            Scenario::Throughput => "throughput",
            Scenario::Polling => "polling",
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.key() == key)
    }
}

/// One line of the table.
struct Row {
    scenario: Scenario,
    figure: String,
    value: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn markdown(&self) -> String {
        let ratio = self
            .ratio
            .map(|r| format!("{r:.2}x"))
            .unwrap_or_else(|| "–".to_owned());
        let met = match self.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        format!(
            "| {}: {} | {} | {} | {} | {} | {} |",
            self.scenario.key(),
            self.figure,
            self.value,
            self.baseline,
            ratio,
            self.target,
            met
        )
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<(Scenario, String)>,
    /// Follower or append problems: the bench exits 1 when there are any.
    problems: Vec<String>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        scenario: Scenario,
        figure: impl Into<String>,
        value: impl Into<String>,
        baseline: impl Into<String>,
        ratio: Option<f64>,
        target: impl Into<String>,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            scenario,
            figure: figure.into(),
            value: value.into(),
            baseline: baseline.into(),
            ratio,
            target: target.into(),
            met,
        });
    }

    fn note(&mut self, scenario: Scenario, text: impl Into<String>) {
        let text = text.into();
        eprintln!("perf: {}: {text}", scenario.key());
        self.notes.push((scenario, text));
    }

    fn problem(&mut self, scenario: Scenario, text: impl Into<String>) {
        let text = format!("{}: {}", scenario.key(), text.into());
        eprintln!("perf: PROBLEM {text}");
        self.problems.push(text);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("perf: a benchmark; run it with `cargo bench --bench perf`");
        return;
    }
    let write_readme = args.iter().any(|a| a == "--write-readme");
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| filter.is_empty() || filter.iter().any(|w| s.key().contains(w.as_str())))
        .collect();
    if scenarios.is_empty() {
        eprintln!(
            "perf: no scenario matches {filter:?}; scenarios: latency, fanout, catchup, throughput, polling"
        );
        std::process::exit(2);
    }
    let mut command = "cargo bench --bench perf".to_owned();
    if !filter.is_empty() || write_readme {
        command.push_str(" --");
        for word in &filter {
            command.push(' ');
            command.push_str(word);
        }
        if write_readme {
            command.push_str(" --write-readme");
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = Report::default();
    for scenario in &scenarios {
        eprintln!("perf: {} …", scenario.key());
        let started = Instant::now();
        runtime.block_on(async {
            match scenario {
                Scenario::Latency => latency(&mut report).await,
                Scenario::Fanout => fanout(&mut report).await,
                Scenario::Catchup => catchup(&mut report).await,
                Scenario::Throughput => throughput(&mut report).await,
                Scenario::Polling => polling(&mut report).await,
            }
        });
        report.note(
            *scenario,
            format!(
                "measured by `{command}` in {:.0} s",
                started.elapsed().as_secs_f64()
            ),
        );
    }
    runtime.shutdown_timeout(Duration::from_secs(5));

    let machine = machine();
    let section = render(&machine, &report.rows, &report.notes);
    println!();
    println!("{section}");
    if write_readme {
        match write_readme_section(&machine, &scenarios, &report) {
            Ok(path) => eprintln!("perf: rewrote the table in {path}"),
            Err(error) => {
                eprintln!("perf: could not rewrite README.md: {error}");
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

// --- the environment ---------------------------------------------------------------

/// A private PostgreSQL, Redis and agent-stream, plus the bench's own connections.
struct Env {
    pg: Postgres,
    redis: Redis,
    server: Server,
    db: PgPool,
    port: u16,
    stats: bool,
}

impl Env {
    /// `stats`: load `pg_stat_statements` to count statements.
    async fn start(stats: bool, server_args: &[&str]) -> Self {
        let settings = if stats {
            "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track_utility = off\n"
        } else {
            ""
        };
        let pg = Postgres::start_with(settings);
        let redis = Redis::start();
        let server = Server::start(&pg.url(), Some(&redis.url()), server_args);
        let db = PgPoolOptions::new()
            .max_connections(WRITERS as u32 + 4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&pg.url())
            .await
            .expect("connect to the private PostgreSQL");
        for statement in [
            "CREATE SCHEMA perf",
            "CREATE TABLE perf.messages (process_id text NOT NULL, seq bigint NOT NULL, id text NOT NULL, body text NOT NULL, PRIMARY KEY (process_id, seq), UNIQUE (process_id, id))",
        ] {
            sqlx::query(statement)
                .execute(&db)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        if stats {
            sqlx::query("CREATE EXTENSION pg_stat_statements")
                .execute(&db)
                .await
                .expect("CREATE EXTENSION pg_stat_statements");
        }
        let port = server.port();
        Self {
            pg,
            redis,
            server,
            db,
            port,
            stats,
        }
    }

    fn server_pid(&self) -> u32 {
        self.server.pid().expect("the server runs")
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        bench_redis(&self.redis.url(), Duration::from_secs(10)).await
    }

    /// Redis clients other than the bench's own.
    async fn server_redis_clients(&self) -> usize {
        let mut conn = self.redis().await;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .expect("CLIENT LIST");
        list.lines()
            .filter(|l| !l.trim().is_empty() && !l.contains(&format!("name={BENCH_CLIENT_NAME} ")))
            .count()
    }

    /// Statements (pg_stat_statements, without the bench's reads of the statistics)
    /// and committed transactions so far.
    async fn pg_counts(&self) -> PgCounts {
        let xacts: i64 =
            sqlx::query_scalar("SELECT sum(xact_commit)::bigint FROM pg_stat_database")
                .fetch_one(&self.db)
                .await
                .unwrap_or(0);
        let statements: i64 = if self.stats {
            sqlx::query_scalar(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat%'",
            )
            .fetch_one(&self.db)
            .await
            .unwrap_or(0)
        } else {
            0
        };
        PgCounts {
            at: Instant::now(),
            xacts,
            statements,
        }
    }

    /// The statements run most since the last reset, as `calls × statement`.
    async fn top_statements(&self, n: i64) -> Vec<(i64, String)> {
        if !self.stats {
            return Vec::new();
        }
        sqlx::query_as::<_, (i64, String)>(
            "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat%' ORDER BY calls DESC LIMIT $1",
        )
        .bind(n)
        .fetch_all(&self.db)
        .await
        .unwrap_or_default()
    }

    /// The statements that took most execution time since the last reset: calls,
    /// mean ms, statement.
    async fn top_by_time(&self, n: i64) -> Vec<(i64, f64, String)> {
        if !self.stats {
            return Vec::new();
        }
        sqlx::query_as::<_, (i64, f64, String)>(
            "SELECT calls, mean_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat%' ORDER BY total_exec_time DESC LIMIT $1",
        )
        .bind(n)
        .fetch_all(&self.db)
        .await
        .unwrap_or_default()
    }

    async fn reset_statements(&self) {
        if self.stats {
            let _ = sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(&self.db)
                .await;
        }
    }

    fn cpu(&self) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            server: self.server.pid().and_then(cpu_ticks).unwrap_or(0),
            postgres: self
                .pg
                .postmaster_pid()
                .map(tree_cpu_ticks)
                .unwrap_or_default(),
            redis: self.redis.pid().and_then(cpu_ticks).unwrap_or(0),
            bench: cpu_ticks(std::process::id()).unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct PgCounts {
    at: Instant,
    xacts: i64,
    statements: i64,
}

impl PgCounts {
    /// (statements/s, transactions/s) from `self` to `later`.
    fn rates(&self, later: &PgCounts) -> (f64, f64) {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        (
            (later.statements - self.statements) as f64 / seconds,
            (later.xacts - self.xacts) as f64 / seconds,
        )
    }
}

async fn bench_redis(url: &str, response_timeout: Duration) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("Redis URL");
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to the private Redis");
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(BENCH_CLIENT_NAME)
        .query_async(&mut conn)
        .await
        .expect("CLIENT SETNAME");
    conn
}

// --- CPU and memory ----------------------------------------------------------------

/// utime + stime of a process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of a process and of each of its children (PostgreSQL's postmaster and
/// backends), by pid.
fn tree_cpu_ticks(root: u32) -> HashMap<u32, u64> {
    let mut total = HashMap::new();
    total.insert(root, cpu_ticks(root).unwrap_or(0));
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(root) {
            total.insert(pid, cpu_ticks(pid).unwrap_or(0));
        }
    }
    total
}

#[derive(Debug, Clone)]
struct CpuSnapshot {
    at: Instant,
    server: u64,
    /// By pid: a backend that exits in between loses its share, never goes negative.
    postgres: HashMap<u32, u64>,
    redis: u64,
    bench: u64,
}

impl CpuSnapshot {
    /// CPU used from `self` to `later`, in % of one core, per process.
    fn describe(&self, later: &CpuSnapshot) -> String {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let pct = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        format!(
            "CPU (% of one core; 2 cores in all): agent-stream {:.0}%, PostgreSQL {:.0}%, Redis {:.0}%, bench clients {:.0}%",
            pct(self.server, later.server),
            later
                .postgres
                .iter()
                .map(|(pid, ticks)| ticks.saturating_sub(self.postgres.get(pid).copied().unwrap_or(0)))
                .sum::<u64>() as f64
                / seconds,
            pct(self.redis, later.redis),
            pct(self.bench, later.bench),
        )
    }
}

/// Samples a process's VmRSS until stopped; returns the highest.
struct RssSampler {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    fn spawn(pid: u32, every: Duration) -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut peak = 0;
                // Bounded: at most 20,000 samples.
                for _ in 0..20_000 {
                    if let Some(rss) = instances::vm_rss_kib(pid) {
                        peak = peak.max(rss);
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
                peak
            }
        });
        Self { stop, handle }
    }

    async fn stop(self) -> u64 {
        self.stop.cancel();
        self.handle.await.unwrap_or(0)
    }
}

// --- messages ------------------------------------------------------------------------

/// A message of [`MESSAGE_BYTES`] bytes of JSON with the id `<tag>-<n>`.
fn message(tag: &str, n: u64) -> String {
    const TEXT: &str = "Reading src/follow.rs to see how the follower waits on the feed. ";
    let head = format!(
        r#"{{"id":"{tag}-{n}","type":"AssistantMessage","turn":{n},"agent":"CLAUDE_CODE","model":"claude-sonnet-4-5-20250929","payload":{{"content":[{{"type":"text","text":""#
    );
    let tail = r#""}]}}"#;
    let mut out = String::with_capacity(MESSAGE_BYTES + 16);
    out.push_str(&head);
    let pad = MESSAGE_BYTES.saturating_sub(head.len() + tail.len());
    out.extend(TEXT.chars().cycle().take(pad));
    out.push_str(tail);
    out
}

/// A JSON array of `count` messages, n = first, first + 1, …
fn batch(tag: &str, first: u64, count: usize) -> String {
    let mut out = String::with_capacity(count * (MESSAGE_BYTES + 1) + 2);
    out.push('[');
    for i in 0..count as u64 {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&message(tag, first + i));
    }
    out.push(']');
    out
}

// --- the lean HTTP client -------------------------------------------------------------

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn io_error(text: impl Into<String>) -> io::Error {
    io::Error::other(text.into())
}

struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
}

/// Reads a response head into `buf` and parses it; the bytes after it stay in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Head> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = text.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io_error(format!("bad status line in {text:?}")))?;
            let (mut chunked, mut content_length) = (false, None);
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if name == "content-length" {
                    content_length = value.parse().ok();
                }
            }
            return Ok(Head {
                status,
                chunked,
                content_length,
            });
        }
        if buf.len() > 64 * 1024 {
            return Err(io_error("response head over 64 KiB"));
        }
        reserve(buf);
        if stream.read_buf(buf).await? == 0 {
            return Err(io_error(CLOSED_BEFORE_HEAD));
        }
    }
}

const CLOSED_BEFORE_HEAD: &str = "connection closed before the response head";

fn reserve(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(8192);
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
}

impl Chunked {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Moves the payload bytes of `raw` to `out`, leaving in `raw` what is incomplete.
    fn decode(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<()> {
        let mut pos = 0;
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(i) = find(&raw[pos..], b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&raw[pos..pos + i])
                        .map_err(|_| io_error("chunk size is not text"))?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| io_error(format!("bad chunk size {line:?}")))?;
                    pos += i + 2;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let take = left.min(raw.len() - pos);
                    out.extend_from_slice(&raw[pos..pos + take]);
                    pos += take;
                    if take < left {
                        self.state = ChunkState::Data(left - take);
                        break;
                    }
                    self.state = ChunkState::DataEnd;
                }
                ChunkState::DataEnd | ChunkState::Trailer => {
                    if raw.len() - pos < 2 {
                        break;
                    }
                    if &raw[pos..pos + 2] != b"\r\n" {
                        return Err(io_error("chunk not followed by CRLF (or a trailer)"));
                    }
                    pos += 2;
                    self.state = if self.state == ChunkState::Trailer {
                        ChunkState::Done
                    } else {
                        ChunkState::Size
                    };
                }
                ChunkState::Done => break,
            }
        }
        raw.drain(..pos);
        Ok(())
    }
}

/// One keep-alive HTTP/1.1 connection for plain calls. The server closes a keep-alive
/// connection that stays idle past `--header-read-timeout`: a call that finds it closed
/// before any answer is sent again once on a new connection (appends carry ids, so a
/// resend stores nothing twice).
struct Conn {
    port: u16,
    stream: TcpStream,
    buf: Vec<u8>,
}

async fn connect(port: u16) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| io_error("connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Conn {
    async fn open(port: u16) -> io::Result<Self> {
        Ok(Self {
            port,
            stream: connect(port).await?,
            buf: Vec::with_capacity(4096),
        })
    }

    async fn call(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let answer = tokio::time::timeout(CALL_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| io_error(format!("{method} {path}: no answer in {CALL_TIMEOUT:?}")))?;
        match answer {
            Err(e) if e.to_string().contains(CLOSED_BEFORE_HEAD) => {
                self.stream = connect(self.port).await?;
                self.buf.clear();
                tokio::time::timeout(CALL_TIMEOUT, self.exchange(method, path, body))
                    .await
                    .map_err(|_| {
                        io_error(format!("{method} {path}: no answer in {CALL_TIMEOUT:?}"))
                    })?
            }
            answer => answer,
        }
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        let mut request = Vec::with_capacity(body.len() + 160);
        request.extend_from_slice(
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n").as_bytes(),
        );
        if method != "GET" {
            request.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                )
                .as_bytes(),
            );
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        let head = read_head(&mut self.stream, &mut self.buf).await?;
        let mut out = Vec::new();
        if head.chunked {
            let mut chunked = Chunked::default();
            loop {
                chunked.decode(&mut self.buf, &mut out)?;
                if chunked.done() {
                    break;
                }
                reserve(&mut self.buf);
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(io_error("connection closed mid-body"));
                }
            }
        } else {
            let length = head.content_length.unwrap_or(0);
            while self.buf.len() < length {
                reserve(&mut self.buf);
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(io_error("connection closed mid-body"));
                }
            }
            out.extend(self.buf.drain(..length));
        }
        Ok((head.status, out))
    }

    /// `POST /processes/{process}/messages`; the seq of the (last) message stored.
    async fn append(&mut self, process: &str, body: &[u8]) -> Result<u64, String> {
        let (status, answer) = self
            .call("POST", &format!("/processes/{process}/messages"), body)
            .await
            .map_err(|e| format!("append to {process}: {e}"))?;
        if status != 201 && status != 200 {
            return Err(format!(
                "append to {process}: {status} {}",
                String::from_utf8_lossy(&answer)
            ));
        }
        last_stream_seq(&answer).ok_or_else(|| {
            format!(
                "append to {process}: no stream_id in {}",
                String::from_utf8_lossy(&answer)
            )
        })
    }

    async fn put(&mut self, process: &str) -> Result<(), String> {
        match self
            .call("PUT", &format!("/processes/{process}"), b"")
            .await
        {
            Ok((201 | 200, _)) => Ok(()),
            Ok((status, body)) => Err(format!(
                "PUT {process}: {status} {}",
                String::from_utf8_lossy(&body)
            )),
            Err(e) => Err(format!("PUT {process}: {e}")),
        }
    }

    /// Finishes the process; its last seq (from `last_stream_id`).
    async fn finish(&mut self, process: &str) -> Result<u64, String> {
        let (status, body) = self
            .call(
                "POST",
                &format!("/processes/{process}/finish"),
                br#"{"status":"succeeded"}"#,
            )
            .await
            .map_err(|e| format!("finish {process}: {e}"))?;
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match (status, value["last_stream_id"].as_str()) {
            (200, Some(id)) => id
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("finish {process}: last_stream_id {id:?}")),
            _ => Err(format!(
                "finish {process}: {status} {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }
}

/// The seq of the last `"stream_id":"N-0"` in an append's answer.
fn last_stream_seq(answer: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(answer).ok()?;
    let at = text.rfind("\"stream_id\":\"")? + "\"stream_id\":\"".len();
    text[at..].split('-').next()?.parse().ok()
}

// --- the lean followers ---------------------------------------------------------------

/// Counters the followers share with the driver.
#[derive(Default)]
struct Tally {
    /// Follows whose `200` head arrived.
    opened: AtomicUsize,
    /// Follows answered 503 (busy) and tried again, as EventSource does.
    open_retries: AtomicUsize,
    /// Messages received, all followers together.
    delivered: AtomicU64,
    notify: Notify,
}

impl Tally {
    /// Waits until `delivered` reaches `target`, up to `timeout`.
    async fn wait_delivered(&self, target: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if self.delivered.load(Ordering::SeqCst) >= target {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.delivered.load(Ordering::SeqCst) >= target;
            }
        }
    }

    /// Waits until `opened` reaches `target`, up to `timeout`.
    async fn wait_opened(&self, target: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.opened.load(Ordering::SeqCst) < target {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// What one SSE follower saw.
#[derive(Debug, Default)]
struct Followed {
    process: usize,
    received: u64,
    last_seq: u64,
    /// Messages at or below a seq already received.
    duplicates: u64,
    /// The end event's id.
    end: Option<String>,
    problems: Vec<String>,
    /// Seq and receipt time of each message, when recorded.
    times: Vec<(u32, Instant)>,
}

impl Followed {
    /// Exactly seqs 1..=`last`, then the end `<last>-1`, and nothing wrong.
    fn verify(&self, last: u64) -> Result<(), String> {
        let mut wrong = self.problems.clone();
        if self.received != last || self.last_seq != last {
            wrong.push(format!(
                "received {} messages up to seq {}, expected {last}",
                self.received, self.last_seq
            ));
        }
        if self.end.as_deref() != Some(format!("{last}-1").as_str()) {
            wrong.push(format!("end {:?}, expected {last}-1", self.end));
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }
}

/// Follows `/processes/{name}/messages` over SSE from the beginning until the end
/// event and the end of the response, or `deadline`.
async fn follow_sse(
    port: u16,
    name: String,
    process: usize,
    tally: Arc<Tally>,
    record: bool,
    deadline: tokio::time::Instant,
) -> Followed {
    let mut out = Followed {
        process,
        ..Default::default()
    };
    match tokio::time::timeout_at(
        deadline,
        follow_sse_inner(port, &name, &tally, record, &mut out),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => out.problems.push(format!("{name}: {error}")),
        Err(_) => out.problems.push(format!(
            "{name}: no end by the deadline (last seq {})",
            out.last_seq
        )),
    }
    out
}

async fn follow_sse_inner(
    port: u16,
    name: &str,
    tally: &Tally,
    record: bool,
    out: &mut Followed,
) -> io::Result<()> {
    let mut tries = 0;
    let (mut stream, mut raw, head) = loop {
        let mut stream = connect(port).await?;
        stream
            .write_all(
                format!("GET /processes/{name}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut raw = Vec::with_capacity(2048);
        let head = read_head(&mut stream, &mut raw).await?;
        // A busy instance says so with a 503; a client tries again a second later.
        if head.status == 503 && tries < 30 {
            tries += 1;
            tally.open_retries.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        break (stream, raw, head);
    };
    if head.status != 200 || !head.chunked {
        let mut body = raw.clone();
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read_buf(&mut body)).await;
        return Err(io_error(format!(
            "follow answered {} (chunked: {}): {}",
            head.status,
            head.chunked,
            String::from_utf8_lossy(&body)
        )));
    }
    tally.opened.fetch_add(1, Ordering::SeqCst);
    let mut chunked = Chunked::default();
    let mut data = Vec::with_capacity(2048);
    let mut at = Instant::now();
    loop {
        chunked.decode(&mut raw, &mut data)?;
        let mut start = 0;
        let mut delivered = 0;
        while let Some(i) = find(&data[start..], b"\n\n") {
            if sse_frame(&data[start..start + i], at, record, out) {
                delivered += 1;
            }
            start += i + 2;
        }
        data.drain(..start);
        if delivered > 0 {
            tally.delivered.fetch_add(delivered, Ordering::SeqCst);
            tally.notify.notify_one();
        }
        if chunked.done() {
            break;
        }
        if data.capacity() > 64 * 1024 && data.len() < 1024 {
            data.shrink_to(4096);
        }
        reserve(&mut raw);
        let n = stream.read_buf(&mut raw).await?;
        at = Instant::now();
        if n == 0 {
            return Err(io_error(format!(
                "the response ended without its last chunk (last seq {}, end {:?})",
                out.last_seq, out.end
            )));
        }
    }
    if out.end.is_none() {
        return Err(io_error(format!(
            "the response ended without the end event (last seq {})",
            out.last_seq
        )));
    }
    if !data.is_empty() {
        out.problems.push(format!(
            "bytes after the last frame: {:?}",
            String::from_utf8_lossy(&data)
        ));
    }
    Ok(())
}

/// Handles one SSE frame; true when it was a message.
fn sse_frame(frame: &[u8], at: Instant, record: bool, out: &mut Followed) -> bool {
    let mut id: Option<&[u8]> = None;
    let mut event: Option<&[u8]> = None;
    let mut data: Option<&[u8]> = None;
    for line in frame.split(|b| *b == b'\n') {
        if line.is_empty() || line.starts_with(b":") {
            continue;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"id" => id = Some(value),
            b"event" => event = Some(value),
            b"data" => data = Some(value),
            b"retry" => {}
            _ => out.problems.push(format!(
                "unexpected SSE line {:?}",
                String::from_utf8_lossy(line)
            )),
        }
    }
    if out.end.is_some() && (id.is_some() || event.is_some()) {
        out.problems.push(format!(
            "a frame after the end: {:?}",
            String::from_utf8_lossy(frame)
        ));
        return false;
    }
    match event {
        None if id.is_none() => false,
        Some(b"message") => {
            let id = id.unwrap_or_default();
            let seq = std::str::from_utf8(id)
                .ok()
                .and_then(|s| s.strip_suffix("-0"))
                .and_then(|s| s.parse::<u64>().ok());
            let Some(seq) = seq else {
                out.problems
                    .push(format!("message id {:?}", String::from_utf8_lossy(id)));
                return false;
            };
            if seq != out.last_seq + 1 {
                out.problems
                    .push(format!("seq {seq} after seq {}", out.last_seq));
                if seq <= out.last_seq {
                    out.duplicates += 1;
                    return true;
                }
            }
            let mut tag = Vec::with_capacity(id.len() + 16);
            tag.extend_from_slice(b"\"stream_id\":\"");
            tag.extend_from_slice(id);
            tag.push(b'"');
            if data.is_none_or(|d| find(d, &tag).is_none()) {
                out.problems
                    .push(format!("the data of {seq}-0 does not carry its stream_id"));
            }
            out.last_seq = seq;
            out.received += 1;
            if record {
                out.times.push((seq as u32, at));
            }
            true
        }
        Some(b"end") => {
            out.end = Some(String::from_utf8_lossy(id.unwrap_or_default()).into_owned());
            false
        }
        other => {
            out.problems.push(format!(
                "unexpected SSE event {:?}",
                other.map(String::from_utf8_lossy)
            ));
            false
        }
    }
}

/// Opens `count` SSE follows, `CONNECT_BATCH` at a time, each of the process
/// `names[i % names.len()]`; waits for every head. Returns the handles.
async fn open_followers(
    port: u16,
    names: &[String],
    count: usize,
    tally: &Arc<Tally>,
    record: bool,
    deadline: tokio::time::Instant,
) -> Result<Vec<tokio::task::JoinHandle<Followed>>, String> {
    let mut handles = Vec::with_capacity(count);
    let base = tally.opened.load(Ordering::SeqCst);
    for i in 0..count {
        let process = i % names.len();
        handles.push(tokio::spawn(follow_sse(
            port,
            names[process].clone(),
            process,
            tally.clone(),
            record,
            deadline,
        )));
        if ((i + 1) % CONNECT_BATCH == 0 || i + 1 == count)
            && !tally
                .wait_opened(base + i + 1, Duration::from_secs(60))
                .await
        {
            return Err(format!(
                "only {} of {} follows opened within 60 s",
                tally.opened.load(Ordering::SeqCst) - base,
                i + 1
            ));
        }
    }
    Ok(handles)
}

async fn join_all(handles: Vec<tokio::task::JoinHandle<Followed>>) -> Vec<Followed> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap_or_else(|e| Followed {
            problems: vec![format!("follower task failed: {e}")],
            ..Default::default()
        }));
    }
    out
}

// --- figures -----------------------------------------------------------------------

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ratio(value: f64, baseline: f64) -> Option<f64> {
    (baseline > 0.0).then(|| value / baseline)
}

fn per_second(count: f64, elapsed: Duration) -> f64 {
    count / elapsed.as_secs_f64().max(1e-6)
}

fn thousands(n: f64) -> String {
    let n = n.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// --- raw baselines -----------------------------------------------------------------------

/// The message with `"stream_id":"<seq>-0"` added, as the server renders it.
fn with_stream_id(message: &str, seq: u64) -> String {
    let open = message.strip_suffix('}').unwrap_or(message);
    format!("{open},\"stream_id\":\"{seq}-0\"}}")
}

/// The raw baseline's append: a bare `INSERT` (autocommit) into `perf.messages`, then
/// the `XADD` agent-stream would make.
async fn raw_append(
    env: &Env,
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
    stream_key: &str,
    seq: u64,
    body: &str,
) {
    sqlx::query("INSERT INTO perf.messages (process_id, seq, id, body) VALUES ($1, $2, $3, $4)")
        .bind(key)
        .bind(seq as i64)
        .bind(format!("{key}-{seq}"))
        .bind(body)
        .execute(&env.db)
        .await
        .expect("raw INSERT");
    let _: String = redis::cmd("XADD")
        .arg(stream_key)
        .arg("MAXLEN")
        .arg("~")
        .arg(1000)
        .arg(format!("{seq}-0"))
        .arg("message")
        .arg(body)
        .query_async(redis)
        .await
        .expect("raw XADD");
}

/// The floor of fan-out on this machine: `INSERT` + `XADD` → one raw `XREAD BLOCK`
/// reader in this process, which writes each entry as an SSE frame (one chunk) to
/// `followers` plain TCP connections in turn, read by the same lean SSE clients as the
/// server's followers. Each (message, follower)'s time from before the INSERT. Sorted.
async fn raw_fanout_latency(
    env: &Env,
    report: &mut Report,
    key: &str,
    followers: usize,
    samples: u64,
) -> Vec<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the raw fan-out listener");
    let port = listener.local_addr().expect("local address").port();
    let acceptor = tokio::spawn(async move {
        let mut sockets = Vec::with_capacity(followers);
        // Bounded by the count, and by the timeout around the task.
        while sockets.len() < followers {
            let (mut socket, _) = listener.accept().await?;
            socket.set_nodelay(true)?;
            let mut head = Vec::with_capacity(512);
            while find(&head, b"\r\n\r\n").is_none() {
                if socket.read_buf(&mut head).await? == 0 || head.len() > 8192 {
                    return Err(io_error("a raw follower sent no request head"));
                }
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            sockets.push(socket);
        }
        Ok::<_, io::Error>(sockets)
    });
    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let handles = open_followers(port, &[key.to_owned()], followers, &tally, true, deadline)
        .await
        .unwrap_or_else(|e| panic!("raw fan-out: {e}"));
    let mut sockets = tokio::time::timeout(Duration::from_secs(60), acceptor)
        .await
        .expect("raw fan-out: accept timed out")
        .expect("raw fan-out: acceptor")
        .expect("raw fan-out: accept");
    let total = LATENCY_WARMUP + samples;
    let stream_key = format!("perf:{key}:stream");
    let fan = tokio::spawn({
        let (url, stream_key) = (env.redis.url(), stream_key.clone());
        async move {
            let mut conn = bench_redis(&url, Duration::from_secs(10)).await;
            let mut last = "0-0".to_owned();
            let mut seen = 0;
            let stop = Instant::now() + Duration::from_secs(300);
            while seen < total && Instant::now() < stop {
                let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                    redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(100)
                        .arg("BLOCK")
                        .arg(1000)
                        .arg("STREAMS")
                        .arg(&stream_key)
                        .arg(&last)
                        .query_async(&mut conn)
                        .await;
                let Ok(Some(reply)) = reply else { continue };
                for stream in reply.keys {
                    for entry in stream.ids {
                        let body = match entry.map.get("message") {
                            Some(redis::Value::BulkString(body)) => body.clone(),
                            _ => Vec::new(),
                        };
                        let mut frame =
                            format!("id: {}\nevent: message\ndata: ", entry.id).into_bytes();
                        frame.extend_from_slice(&body);
                        frame.extend_from_slice(b"\n\n");
                        let mut chunk = format!("{:x}\r\n", frame.len()).into_bytes();
                        chunk.extend_from_slice(&frame);
                        chunk.extend_from_slice(b"\r\n");
                        for socket in sockets.iter_mut() {
                            let _ = socket.write_all(&chunk).await;
                        }
                        last = entry.id.clone();
                        seen += 1;
                    }
                }
            }
            let frame = format!("id: {seen}-1\nevent: end\ndata: {{\"status\":\"succeeded\"}}\n\n");
            let chunk = format!("{:x}\r\n{frame}\r\n0\r\n\r\n", frame.len());
            for socket in sockets.iter_mut() {
                let _ = socket.write_all(chunk.as_bytes()).await;
            }
        }
    });
    let mut writer = env.redis().await;
    let mut sent = Vec::with_capacity(total as usize + 1);
    sent.push(Instant::now());
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seq in 1..=total {
        let body = with_stream_id(&message(key, seq), seq);
        let started = Instant::now();
        raw_append(env, &mut writer, key, &stream_key, seq, &body).await;
        sent.push(started);
        if !tally
            .wait_delivered(seq * followers as u64, Duration::from_secs(10))
            .await
        {
            panic!("raw fan-out: message {seq} did not reach every follower in 10 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), fan).await;
    let states = join_all(handles).await;
    let mut delays = Vec::with_capacity(samples as usize * followers);
    for state in &states {
        if let Err(e) = state.verify(total) {
            report.problem(Scenario::Latency, format!("raw fan-out follower: {e}"));
        }
        for &(seq, at) in &state.times {
            if u64::from(seq) > LATENCY_WARMUP {
                delays.push(at.duration_since(sent[seq as usize]));
            }
        }
    }
    delays.sort();
    delays
}

/// Where an append's time goes: the library's write path (no HTTP) on the server's
/// database and Redis, timing the store's transaction and the feed's XADD apart.
async fn write_path_breakdown(env: &Env, samples: u64) -> (Vec<Duration>, Vec<Duration>) {
    use agent_stream::domain::{NewMessage, ProcessId};
    let config = agent_stream::config::BackendConfig {
        database_url: Some(env.pg.url()),
        database_read_url: None,
        redis_url: Some(env.redis.url()),
        redis_tls_ca: None,
        redis_prefix: String::new(),
        stream_maxlen: 1000,
        finished_stream_ttl: Duration::from_secs(3600),
        running_stream_ttl: Duration::from_secs(3600),
        stream_inline_bytes: 64 * 1024,
        redis_readers: 1,
        database_timeout: Duration::from_secs(5),
        database_max_connections: 4,
        follower_buffer: 256,
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

/// `INSERT` (autocommit) into `perf.messages` + `XADD` → a raw `XREAD BLOCK` reader on
/// its own connection, one at a time: each sample's time from before the INSERT to the
/// reader's receipt. Sorted.
async fn raw_latency(env: &Env, key: &str, samples: u64) -> Vec<Duration> {
    let url = env.redis.url();
    let stream_key = format!("perf:{key}:stream");
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let total = LATENCY_WARMUP + samples;
    let reader = tokio::spawn({
        let stream_key = stream_key.clone();
        let url = url.clone();
        async move {
            let mut conn = bench_redis(&url, Duration::from_secs(10)).await;
            let mut last = "0-0".to_owned();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut seen = 0;
            while seen < total && Instant::now() < deadline {
                let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                    redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(100)
                        .arg("BLOCK")
                        .arg(1000)
                        .arg("STREAMS")
                        .arg(&stream_key)
                        .arg(&last)
                        .query_async(&mut conn)
                        .await;
                let at = Instant::now();
                let Ok(Some(reply)) = reply else { continue };
                for stream in reply.keys {
                    for entry in stream.ids {
                        let seq = entry
                            .id
                            .split('-')
                            .next()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        last = entry.id.clone();
                        seen += 1;
                        let _ = sender.send((seq, at));
                    }
                }
            }
        }
    });
    let mut writer = env.redis().await;
    let mut delays = Vec::with_capacity(samples as usize);
    // Let the reader block first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seq in 1..=total {
        let body = with_stream_id(&message(key, seq), seq);
        let started = Instant::now();
        raw_append(env, &mut writer, key, &stream_key, seq, &body).await;
        match tokio::time::timeout(Duration::from_secs(5), receiver.recv()).await {
            Ok(Some((got, at))) if got == seq => {
                if seq > LATENCY_WARMUP {
                    delays.push(at.duration_since(started));
                }
            }
            other => panic!("raw reader: expected seq {seq}, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    reader.abort();
    delays.sort();
    delays
}

// --- latency -------------------------------------------------------------------------

/// Appends one message at a time to a process `followers` follow over SSE, waiting
/// for every follower to have it before the next; each (message, follower)'s time
/// from the request's first byte sent to the follower's receipt. Sorted.
async fn stream_latency(
    env: &Env,
    report: &mut Report,
    followers: usize,
    samples: u64,
) -> Vec<Duration> {
    let scenario = Scenario::Latency;
    let name = format!("lat-{followers}-{}", uuid::Uuid::new_v4().simple());
    let mut conn = Conn::open(env.port).await.expect("connect");
    conn.put(&name).await.expect("register");
    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let handles = open_followers(
        env.port,
        std::slice::from_ref(&name),
        followers,
        &tally,
        true,
        deadline,
    )
    .await
    .unwrap_or_else(|e| panic!("latency: {e}"));
    let total = LATENCY_WARMUP + samples;
    let mut sent: Vec<Instant> = Vec::with_capacity(total as usize + 1);
    sent.push(Instant::now());
    let mut append_times = Vec::new();
    let mut answered_at: Vec<Instant> = vec![Instant::now()];
    for n in 1..=total {
        let body = message("m", n);
        let started = Instant::now();
        match conn.append(&name, body.as_bytes()).await {
            Ok(seq) if seq == n => {}
            other => panic!("latency: append {n} answered {other:?}"),
        }
        append_times.push(started.elapsed());
        answered_at.push(Instant::now());
        sent.push(started);
        if !tally
            .wait_delivered(n * followers as u64, Duration::from_secs(10))
            .await
        {
            report.problem(
                scenario,
                format!(
                    "message {n} did not reach all {followers} followers within 10 s ({} deliveries)",
                    tally.delivered.load(Ordering::SeqCst)
                ),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let last = conn.finish(&name).await.expect("finish");
    let states = join_all(handles).await;
    let mut delays = Vec::with_capacity(samples as usize * followers);
    // Receipt minus the 201's arrival, in ms: negative when the message came first.
    let mut after_answer: Vec<f64> = Vec::new();
    let mut exact = 0;
    for state in &states {
        match state.verify(last) {
            Ok(()) => exact += 1,
            Err(e) => report.problem(scenario, e),
        }
        for &(seq, at) in &state.times {
            if u64::from(seq) > LATENCY_WARMUP {
                if let (Some(sent), Some(answered)) =
                    (sent.get(seq as usize), answered_at.get(seq as usize))
                {
                    delays.push(at.duration_since(*sent));
                    after_answer.push(if at >= *answered {
                        at.duration_since(*answered).as_secs_f64() * 1000.0
                    } else {
                        -(answered.duration_since(at).as_secs_f64() * 1000.0)
                    });
                }
            }
        }
    }
    append_times.sort();
    after_answer.sort_by(f64::total_cmp);
    let median_after = after_answer
        .get(after_answer.len() / 2)
        .copied()
        .unwrap_or(0.0);
    report.note(
        scenario,
        format!(
            "{followers} follower(s): {exact}/{followers} exact ({last} messages then the end); append answered (201) in p50 {} / p99 {}; a follower's receipt came p50 {median_after:+.2} ms after the 201",
            ms(quantile(&append_times, 0.5)),
            ms(quantile(&append_times, 0.99)),
        ),
    );
    delays.sort();
    delays
}

async fn latency(report: &mut Report) {
    let scenario = Scenario::Latency;
    let env = Env::start(false, &[]).await;
    let raw_one = raw_latency(&env, "raw-one", LATENCY_SAMPLES_ONE).await;
    let one = stream_latency(&env, report, 1, LATENCY_SAMPLES_ONE).await;
    let (store, publish) = write_path_breakdown(&env, LATENCY_SAMPLES_ONE).await;
    report.note(
        scenario,
        format!(
            "where an append's time goes (the library's write path, no HTTP, same database): the store's append (one call of `append_messages`: lock the process row, look up the ids, INSERT, move last_seq, commit) p50 {} / p99 {}, then XADD p50 {} / p99 {}",
            ms(quantile(&store, 0.5)),
            ms(quantile(&store, 0.99)),
            ms(quantile(&publish, 0.5)),
            ms(quantile(&publish, 0.99)),
        ),
    );
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
        scenario,
        format!("raw fan-out floor phase: {}", cpu.describe(&env.cpu())),
    );
    let cpu = env.cpu();
    let many = stream_latency(&env, report, MANY_FOLLOWERS, LATENCY_SAMPLES_MANY).await;
    report.note(
        scenario,
        format!(
            "{MANY_FOLLOWERS} followers phase: {}",
            cpu.describe(&env.cpu())
        ),
    );
    for (label, delays, raw, count) in [
        ("1 SSE follower", &one, &raw_one, LATENCY_SAMPLES_ONE),
        (
            "1,000 SSE followers",
            &many,
            &raw_many,
            LATENCY_SAMPLES_MANY,
        ),
    ] {
        for (q, name, limit) in [(0.5, "p50", 1.5), (0.99, "p99", 2.0)] {
            let (value, base) = (quantile(delays, q), quantile(raw, q));
            let r = ratio(value.as_secs_f64(), base.as_secs_f64());
            report.row(
                scenario,
                format!("append sent → follower received, {name}, {label} ({count} appends, one at a time)"),
                ms(value),
                format!("{} (INSERT + XADD → XREAD BLOCK reader)", ms(base)),
                r,
                format!("≤ {limit}x"),
                r.map(|r| r <= limit),
            );
        }
    }
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (value, base) = (quantile(&many, q), quantile(&floor, q));
        report.row(
            scenario,
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
    report.note(
        scenario,
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

// --- fan-out -------------------------------------------------------------------------

async fn fanout(report: &mut Report) {
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
async fn connections_only(env: &Env, report: &mut Report) {
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

fn describe_top(top: &[(i64, String)], seconds: f64) -> String {
    if top.is_empty() {
        return "(no statement statistics)".to_owned();
    }
    top.iter()
        .map(|(calls, query)| format!("`{query}` {:.0}/s", *calls as f64 / seconds.max(1e-3)))
        .collect::<Vec<_>>()
        .join(", ")
}

// --- catch-up ------------------------------------------------------------------------

/// What an NDJSON follow from the start got.
#[derive(Debug)]
struct NdjsonRead {
    /// Time from the request's first byte to the response's last.
    elapsed: Duration,
    lines: u64,
    bytes: u64,
    end: Option<String>,
    /// Every byte, when kept.
    body: Option<Vec<u8>>,
}

/// `GET /processes/{name}/messages` as NDJSON from the start, read to the last byte.
async fn read_ndjson(port: u16, name: &str, keep: bool) -> io::Result<NdjsonRead> {
    let mut stream = connect(port).await?;
    let started = Instant::now();
    stream
        .write_all(
            format!("GET /processes/{name}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/x-ndjson\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::with_capacity(64 * 1024);
    let head = read_head(&mut stream, &mut raw).await?;
    if head.status != 200 || !head.chunked {
        return Err(io_error(format!("follow answered {}", head.status)));
    }
    let mut chunked = Chunked::default();
    let mut data = Vec::with_capacity(64 * 1024);
    let mut kept = Vec::new();
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut last_line = Vec::new();
    // Empty lines (heartbeats) are not counted.
    let mut after_newline = true;
    loop {
        chunked.decode(&mut raw, &mut data)?;
        if let Some(cut) = data.iter().rposition(|b| *b == b'\n') {
            let complete = &data[..=cut];
            for &b in complete {
                if b == b'\n' {
                    lines += u64::from(!after_newline);
                    after_newline = true;
                } else {
                    after_newline = false;
                }
            }
            bytes += complete.len() as u64;
            // `data` starts at a line's start: the last line is after the newline before.
            let before = complete[..cut]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            if cut > before {
                last_line.clear();
                last_line.extend_from_slice(&complete[before..cut]);
            }
            if keep {
                kept.extend_from_slice(complete);
            }
            data.drain(..=cut);
        }
        if chunked.done() {
            break;
        }
        if raw.capacity() - raw.len() < 16 * 1024 {
            raw.reserve(64 * 1024);
        }
        if stream.read_buf(&mut raw).await? == 0 {
            return Err(io_error("the response ended without its last chunk"));
        }
    }
    let elapsed = started.elapsed();
    let last: serde_json::Value = serde_json::from_slice(&last_line).unwrap_or_default();
    let end = (last["event"] == "end").then(|| last["stream_id"].as_str().unwrap_or("").to_owned());
    Ok(NdjsonRead {
        elapsed,
        lines,
        bytes,
        end,
        body: keep.then_some(kept),
    })
}

/// Every line a message with seq 1, 2, … `count`, then the end `<count>-1`.
fn verify_ndjson(body: &[u8], count: u64) -> Result<(), String> {
    let mut expected = 1;
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("line {expected}: {e}"))?;
        if expected == count + 1 {
            if value["event"] == "end" && value["stream_id"] == format!("{count}-1") {
                expected += 1;
                continue;
            }
            return Err(format!("expected the end, got {value}"));
        }
        if value["stream_id"] != format!("{expected}-0") {
            return Err(format!("expected {expected}-0, got {}", value["stream_id"]));
        }
        expected += 1;
    }
    if expected == count + 2 {
        Ok(())
    } else {
        Err(format!("{} lines, expected {}", expected - 1, count + 1))
    }
}

/// Appends `count` messages to `name` in arrays of 1,000, one request at a time, then
/// finishes it.
async fn fill(port: u16, name: &str, count: u64) {
    let mut conn = Conn::open(port).await.expect("connect");
    let mut n = 1;
    while n <= count {
        let size = 1000.min(count - n + 1) as usize;
        let body = batch(name, n, size);
        conn.append(name, body.as_bytes()).await.expect("fill");
        n += size as u64;
    }
    conn.finish(name).await.expect("finish");
}

/// Peak server RSS while `followers` NDJSON follows of `name` catch up at once (on a
/// freshly started server, so VmHWM is theirs); and the RSS of the idle server.
async fn catchup_memory(
    env: &mut Env,
    report: &mut Report,
    name: &str,
    count: u64,
    followers: usize,
) -> (u64, u64, Duration) {
    env.server.kill9();
    env.server.launch();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = env.server_pid();
    let idle = instances::vm_hwm_kib(pid).unwrap_or(0);
    let sampler = RssSampler::spawn(pid, Duration::from_millis(10));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..followers {
        let (port, name) = (env.port, name.to_owned());
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(300), read_ndjson(port, &name, false)).await
        }));
    }
    for task in tasks {
        match task.await {
            Ok(Ok(Ok(read))) => {
                if read.lines != count + 1 || read.end.as_deref() != Some(&format!("{count}-1")) {
                    report.problem(
                        Scenario::Catchup,
                        format!(
                            "a follower of {count} messages got {} lines, end {:?}",
                            read.lines, read.end
                        ),
                    );
                }
            }
            other => report.problem(
                Scenario::Catchup,
                format!("a follower of {count} messages: {other:?}"),
            ),
        }
    }
    let all = started.elapsed();
    let sampled = sampler.stop().await;
    let peak = instances::vm_hwm_kib(pid).unwrap_or(0).max(sampled);
    (peak, idle, all)
}

async fn catchup(report: &mut Report) {
    let scenario = Scenario::Catchup;
    let mut env = Env::start(false, &[]).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let short = format!("catchup-10k-{run}");
    let long = format!("catchup-50k-{run}");
    let fill_started = Instant::now();
    fill(env.port, &short, CATCHUP_SHORT).await;
    fill(env.port, &long, CATCHUP_LONG).await;
    report.note(
        scenario,
        format!(
            "history written in {:.1} s (arrays of 1,000 over HTTP)",
            fill_started.elapsed().as_secs_f64()
        ),
    );
    let _ = sqlx::query("VACUUM ANALYZE messages")
        .execute(&env.db)
        .await;

    // One follow, to its last byte, vs the raw SELECT; alternated, median of each.
    let mut follows = Vec::new();
    let mut selects = Vec::new();
    let mut bytes = 0;
    let mut select_bytes = 0;
    for i in 0..CATCHUP_REPEATS + 1 {
        let read = read_ndjson(env.port, &short, i == 0)
            .await
            .expect("catch-up follow");
        if let Some(body) = &read.body {
            if let Err(e) = verify_ndjson(body, CATCHUP_SHORT) {
                report.problem(scenario, format!("the timed follow: {e}"));
            }
        }
        bytes = read.bytes;
        let started = Instant::now();
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT body FROM messages WHERE process_id = $1 ORDER BY seq")
                .bind(&short)
                .fetch_all(&env.db)
                .await
                .expect("raw SELECT");
        let select = started.elapsed();
        assert_eq!(rows.len() as u64, CATCHUP_SHORT, "raw SELECT rows");
        select_bytes = rows.iter().map(|r| r.len() as u64 + 1).sum();
        // The first of each warms caches and is not counted.
        if i > 0 {
            follows.push(read.elapsed);
            selects.push(select);
        }
    }
    follows.sort();
    selects.sort();
    let (follow, select) = (quantile(&follows, 0.5), quantile(&selects, 0.5));
    report.row(
        scenario,
        format!(
            "follow from the start to its last byte, {} messages of ~1 KiB (NDJSON, {:.1} MiB), median of {CATCHUP_REPEATS}",
            thousands(CATCHUP_SHORT as f64),
            bytes as f64 / (1 << 20) as f64
        ),
        ms(follow),
        format!(
            "{} (`SELECT body … ORDER BY seq`, {:.1} MiB)",
            ms(select),
            select_bytes as f64 / (1 << 20) as f64
        ),
        ratio(follow.as_secs_f64(), select.as_secs_f64()),
        "–",
        None,
    );
    report.note(
        scenario,
        format!(
            "follow min / max {} / {}; SELECT min / max {} / {}",
            ms(follows[0]),
            ms(*follows.last().unwrap()),
            ms(selects[0]),
            ms(*selects.last().unwrap())
        ),
    );

    let cpu = env.cpu();
    let (peak_short, idle_short, time_short) =
        catchup_memory(&mut env, report, &short, CATCHUP_SHORT, CATCHUP_FOLLOWERS).await;
    report.note(
        scenario,
        format!(
            "{CATCHUP_FOLLOWERS} followers of {CATCHUP_SHORT} messages all done in {:.1} s; {}",
            time_short.as_secs_f64(),
            cpu.describe(&env.cpu())
        ),
    );
    let (peak_long, idle_long, time_long) =
        catchup_memory(&mut env, report, &long, CATCHUP_LONG, CATCHUP_FOLLOWERS).await;
    report.note(
        scenario,
        format!(
            "{CATCHUP_FOLLOWERS} followers of {CATCHUP_LONG} messages all done in {:.1} s",
            time_long.as_secs_f64()
        ),
    );
    report.row(
        scenario,
        format!(
            "server peak RSS while {CATCHUP_FOLLOWERS} followers catch up at once, {} messages",
            thousands(CATCHUP_SHORT as f64)
        ),
        mib(peak_short),
        format!("{} (the same server idle)", mib(idle_short)),
        ratio(peak_short as f64, idle_short as f64),
        "–",
        None,
    );
    let flat = ratio(peak_long as f64, peak_short as f64);
    report.row(
        scenario,
        format!(
            "server peak RSS while {CATCHUP_FOLLOWERS} followers catch up at once, {} messages",
            thousands(CATCHUP_LONG as f64)
        ),
        mib(peak_long),
        format!(
            "{} (with {} messages; idle {})",
            mib(peak_short),
            thousands(CATCHUP_SHORT as f64),
            mib(idle_long)
        ),
        flat,
        "flat with history (≤ 1.25x)",
        flat.map(|r| r <= 1.25),
    );
    drop(env);
}

// --- throughput ------------------------------------------------------------------------

/// `WRITERS` HTTP writers, each to its own process, one request at a time of `batch`
/// messages, for `run`: messages stored per second.
async fn http_throughput(port: u16, tag: &str, size: usize, run: Duration) -> Result<f64, String> {
    let mut tasks = Vec::new();
    let started = Instant::now();
    let deadline = started + run;
    for w in 0..WRITERS {
        let name = format!("{tag}-{w}");
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(port).await.map_err(|e| e.to_string())?;
            let mut n = 1u64;
            let mut stored = 0u64;
            // Bounded by time, and by count.
            while Instant::now() < deadline && n < 10_000_000 {
                let body = if size == 1 {
                    message(&name, n)
                } else {
                    batch(&name, n, size)
                };
                let seq = conn.append(&name, body.as_bytes()).await?;
                if seq != n + size as u64 - 1 {
                    return Err(format!(
                        "{name}: stored up to {seq}, expected {}",
                        n + size as u64 - 1
                    ));
                }
                n += size as u64;
                stored += size as u64;
            }
            Ok::<u64, String>(stored)
        }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await.map_err(|e| e.to_string())??;
    }
    Ok(per_second(stored as f64, started.elapsed()))
}

/// The same with raw `INSERT` (one row, or `size` rows in one statement) + `XADD`
/// (pipelined for a batch), one PostgreSQL connection per writer and one shared
/// multiplexed Redis connection, as the server has.
async fn raw_throughput(env: &Env, tag: &str, size: usize, run: Duration) -> f64 {
    let redis = env.redis().await;
    let mut tasks = Vec::new();
    let started = Instant::now();
    let deadline = started + run;
    for w in 0..WRITERS {
        let name = format!("{tag}-{w}");
        let db = env.db.clone();
        let mut redis = redis.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = db.acquire().await.expect("a raw connection");
            let key = format!("perf:{name}:stream");
            let mut n = 1u64;
            let mut stored = 0u64;
            while Instant::now() < deadline && n < 10_000_000 {
                let bodies: Vec<String> = (0..size as u64).map(|i| message(&name, n + i)).collect();
                if size == 1 {
                    sqlx::query(
                        "INSERT INTO perf.messages (process_id, seq, id, body) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&name)
                    .bind(n as i64)
                    .bind(format!("{name}-{n}"))
                    .bind(&bodies[0])
                    .execute(&mut *conn)
                    .await
                    .expect("raw INSERT");
                } else {
                    let seqs: Vec<i64> = (0..size as i64).map(|i| n as i64 + i).collect();
                    let ids: Vec<String> = seqs.iter().map(|s| format!("{name}-{s}")).collect();
                    sqlx::query(
                        "INSERT INTO perf.messages (process_id, seq, id, body) SELECT $1, seq, id, body FROM UNNEST($2::bigint[], $3::text[], $4::text[]) AS m (seq, id, body)",
                    )
                    .bind(&name)
                    .bind(&seqs)
                    .bind(&ids)
                    .bind(&bodies)
                    .execute(&mut *conn)
                    .await
                    .expect("raw batch INSERT");
                }
                let mut pipe = redis::pipe();
                for (i, body) in bodies.iter().enumerate() {
                    pipe.cmd("XADD")
                        .arg(&key)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(1000)
                        .arg(format!("{}-0", n + i as u64))
                        .arg("message")
                        .arg(body.as_str())
                        .ignore();
                }
                let _: () = pipe.query_async(&mut redis).await.expect("raw XADD");
                n += size as u64;
                stored += size as u64;
            }
            stored
        }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await.expect("raw writer");
    }
    per_second(stored as f64, started.elapsed())
}

async fn throughput(report: &mut Report) {
    let scenario = Scenario::Throughput;
    let env = Env::start(true, &[]).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    // Warm both paths (connections, prepared statements, caches).
    let _ = http_throughput(env.port, &format!("warm-{run}"), 1, THROUGHPUT_WARMUP).await;
    let _ = raw_throughput(&env, &format!("rawwarm-{run}"), 1, THROUGHPUT_WARMUP).await;
    for (size, label) in [(1, "single"), (BATCH, "batched")] {
        env.reset_statements().await;
        let cpu = env.cpu();
        let ours = match http_throughput(env.port, &format!("{label}-{run}"), size, THROUGHPUT_RUN)
            .await
        {
            Ok(rate) => rate,
            Err(e) => {
                report.problem(scenario, e);
                0.0
            }
        };
        let cpu_ours = env.cpu();
        let top_ours = env.top_by_time(5).await;
        env.reset_statements().await;
        let raw = raw_throughput(&env, &format!("raw{label}-{run}"), size, THROUGHPUT_RUN).await;
        let cpu_raw = env.cpu();
        let top_raw = env.top_by_time(2).await;
        let r = ratio(ours, raw);
        let (figure, target, met) = if size == 1 {
            (
                format!("appends/s, one message per request, {WRITERS} writers each sequential"),
                "≥ 0.8x".to_owned(),
                r.map(|r| r >= 0.8),
            )
        } else {
            (
                format!("appends/s, arrays of {BATCH} messages, {WRITERS} writers each sequential"),
                "≥ 0.8x and > 20,000/s".to_owned(),
                r.map(|r| r >= 0.8 && ours > 20_000.0),
            )
        };
        report.row(
            scenario,
            figure,
            format!("{} msg/s", thousands(ours)),
            format!(
                "{} msg/s (INSERT{} + XADD, same concurrency)",
                thousands(raw),
                if size == 1 { "" } else { " … UNNEST" }
            ),
            r,
            target,
            met,
        );
        let describe = |top: &[(i64, f64, String)]| {
            top.iter()
                .map(|(calls, mean, query)| format!("`{query}` {calls} × {mean:.3} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        report.note(
            scenario,
            format!(
                "{label}: agent-stream phase {}; its statements by execution time (BEGIN and COMMIT not counted): {}; raw phase {}; its statements: {}",
                cpu.describe(&cpu_ours),
                describe(&top_ours),
                cpu_ours.describe(&cpu_raw),
                describe(&top_raw)
            ),
        );
    }
    drop(env);
}

// --- polling -------------------------------------------------------------------------

/// What one polling client saw.
#[derive(Default)]
struct Polled {
    process: usize,
    last_seq: u64,
    times: Vec<(u32, Instant)>,
    polls: u64,
    problems: Vec<String>,
}

/// Polls the JSON snapshot after its last seq every `POLL_EVERY` from `first`, until
/// `stop`.
async fn poll_client(
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
async fn steady_appends(port: u16, names: &[String]) -> Vec<HashMap<u64, Instant>> {
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

fn delays_of<'a>(
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

async fn polling(report: &mut Report) {
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

// --- output --------------------------------------------------------------------------

fn first_line(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| l.split_once(':').map_or(l, |(_, v)| v).trim().to_owned())
}

fn version(program: &std::path::Path) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".to_owned());
    let memory = first_line("/proc/meminfo", "MemTotal")
        .and_then(|m| m.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| format!("{:.0} GiB", kib as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "?".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned());
    format!(
        "{cpus} CPUs ({cpu}), {memory} RAM, Linux {kernel} (load average {load} at the end); {}; {}; agent-stream release build; the server, PostgreSQL (fsync off, synchronous_commit on), Redis and the bench's clients all share the machine, on 127.0.0.1",
        version(&Postgres::bindir().join("postgres")),
        version(&Redis::binary()),
    )
}

fn table_head() -> [&'static str; 2] {
    [
        "| figure | agent-stream | baseline (raw, same run) | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
}

fn render(machine: &str, rows: &[Row], notes: &[(Scenario, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {machine}.");
    let _ = writeln!(out);
    for line in table_head() {
        let _ = writeln!(out, "{line}");
    }
    for row in rows {
        let _ = writeln!(out, "{}", row.markdown());
    }
    let _ = writeln!(out);
    for (scenario, note) in notes {
        let _ = writeln!(out, "- {}: {note}", scenario.key());
    }
    out
}

const BEGIN: &str = "<!-- perf:begin -->";
const END: &str = "<!-- perf:end -->";

/// Rewrites README.md between the markers: the rows and notes of the scenarios that
/// ran replace theirs; those of the others stay.
fn write_readme_section(
    machine: &str,
    ran: &[Scenario],
    report: &Report,
) -> Result<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let (start, end) = match (text.find(BEGIN), text.find(END)) {
        (Some(start), Some(end)) if start < end => (start + BEGIN.len(), end),
        _ => return Err(format!("{path} has no {BEGIN} … {END} markers")),
    };
    let old = &text[start..end];
    let scenario_of = |line: &str| -> Option<Scenario> {
        let body = line
            .strip_prefix("| ")
            .or_else(|| line.strip_prefix("- "))?;
        Scenario::from_key(body.split(':').next()?.trim())
    };
    let mut rows: Vec<(Scenario, String)> = Vec::new();
    let mut notes: Vec<(Scenario, String)> = Vec::new();
    for line in old.lines() {
        let Some(scenario) = scenario_of(line) else {
            continue;
        };
        if ran.contains(&scenario) {
            continue;
        }
        if line.starts_with("| ") {
            rows.push((scenario, line.to_owned()));
        } else {
            notes.push((scenario, line.to_owned()));
        }
    }
    rows.extend(report.rows.iter().map(|r| (r.scenario, r.markdown())));
    notes.extend(
        report
            .notes
            .iter()
            .map(|(s, n)| (*s, format!("- {}: {n}", s.key()))),
    );
    let order = |s: &Scenario| Scenario::ALL.iter().position(|x| x == s).unwrap_or(0);
    rows.sort_by_key(|(s, _)| order(s));
    notes.sort_by_key(|(s, _)| order(s));
    let mut section = String::from("\n");
    let _ = writeln!(section, "Machine: {machine}.");
    let _ = writeln!(section);
    for line in table_head() {
        let _ = writeln!(section, "{line}");
    }
    for (_, row) in &rows {
        let _ = writeln!(section, "{row}");
    }
    let _ = writeln!(section);
    for (_, note) in &notes {
        let _ = writeln!(section, "{note}");
    }
    let updated = format!("{}{section}{}", &text[..start], &text[end..]);
    std::fs::write(path, updated).map_err(|e| format!("{path}: {e}"))?;
    Ok(path.to_owned())
}
