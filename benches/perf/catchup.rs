//! `catchup`: a follow from the start to its last byte, and the JSON array snapshot of
//! the same history, beside one SELECT of the same rows; and the server's memory while
//! 100 followers catch up at once.

use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{connect, io_error, read_head, Chunked, Conn};
use crate::env::Env;
use crate::figures::{mib, ms, quantile, ratio, thousands};
use crate::instances;
use crate::messages::batch;
use crate::report::{Report, Scenario};
use crate::usage::RssSampler;

const CATCHUP_SHORT: u64 = 10_000;
const CATCHUP_LONG: u64 = 50_000;
const CATCHUP_FOLLOWERS: usize = 100;
const CATCHUP_REPEATS: usize = 7;
const SCENARIO: Scenario = Scenario::Catchup;

/// What an NDJSON follow from the start got.
#[derive(Debug)]
pub struct NdjsonRead {
    /// Time from the request's first byte to the response's last.
    pub elapsed: Duration,
    pub lines: u64,
    pub bytes: u64,
    pub end: Option<String>,
    /// Every byte, when kept.
    pub body: Option<Vec<u8>>,
}

/// `GET /processes/{name}/messages` as NDJSON from the start, read to the last byte.
pub async fn read_ndjson(port: u16, name: &str, keep: bool) -> io::Result<NdjsonRead> {
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
pub fn verify_ndjson(body: &[u8], count: u64) -> Result<(), String> {
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

/// What a JSON array snapshot got.
#[derive(Debug)]
pub struct ArrayRead {
    /// Time from the request's first byte to the response's last.
    pub elapsed: Duration,
    pub bytes: u64,
    /// Every byte, when kept.
    pub body: Option<Vec<u8>>,
}

/// `GET /processes/{name}/messages` with no `Accept` (the JSON array of every message),
/// read to the last byte.
pub async fn read_array(port: u16, name: &str, keep: bool) -> io::Result<ArrayRead> {
    let mut stream = connect(port).await?;
    let started = Instant::now();
    stream
        .write_all(
            format!("GET /processes/{name}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::with_capacity(64 * 1024);
    let head = read_head(&mut stream, &mut raw).await?;
    if head.status != 200 {
        return Err(io_error(format!("snapshot answered {}", head.status)));
    }
    let mut chunked = Chunked::default();
    let mut data = Vec::with_capacity(64 * 1024);
    let mut kept = Vec::new();
    let mut bytes = 0u64;
    loop {
        if head.chunked {
            chunked.decode(&mut raw, &mut data)?;
        } else {
            data.append(&mut raw);
        }
        bytes += data.len() as u64;
        if keep {
            kept.extend_from_slice(&data);
        }
        data.clear();
        let done = if head.chunked {
            chunked.done()
        } else {
            head.content_length
                .is_some_and(|length| bytes >= length as u64)
        };
        if done {
            break;
        }
        if raw.capacity() - raw.len() < 16 * 1024 {
            raw.reserve(64 * 1024);
        }
        if stream.read_buf(&mut raw).await? == 0 {
            return Err(io_error("the response ended before its last byte"));
        }
    }
    Ok(ArrayRead {
        elapsed: started.elapsed(),
        bytes,
        body: keep.then_some(kept),
    })
}

/// One JSON array of the messages with seq 1, 2, … `count`.
pub fn verify_array(body: &[u8], count: u64) -> Result<(), String> {
    let messages: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON array: {e}"))?;
    if messages.len() as u64 != count {
        return Err(format!("{} messages, expected {count}", messages.len()));
    }
    for (expected, message) in (1..=count).zip(&messages) {
        if message["stream_id"] != format!("{expected}-0") {
            return Err(format!(
                "expected {expected}-0, got {}",
                message["stream_id"]
            ));
        }
    }
    Ok(())
}

/// Appends `count` messages to `name` in arrays of 1,000, one request at a time, then
/// finishes it.
pub async fn fill(port: u16, name: &str, count: u64) {
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

/// Peak server RSS while `CATCHUP_FOLLOWERS` NDJSON follows of `name` catch up at once
/// (on a freshly started server, so VmHWM is theirs); and the RSS of the idle server.
async fn catchup_memory(env: &mut Env, report: &mut Report, name: &str, count: u64) -> Memory {
    env.server.kill9();
    env.server.launch();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = env.server_pid();
    let idle = instances::vm_hwm_kib(pid).unwrap_or(0);
    let sampler = RssSampler::spawn(pid, Duration::from_millis(10));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CATCHUP_FOLLOWERS)
        .map(|_| {
            let (port, name) = (env.port, name.to_owned());
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(300), read_ndjson(port, &name, false))
                    .await
            })
        })
        .collect();
    for task in tasks {
        match task.await {
            Ok(Ok(Ok(read))) => {
                if read.lines != count + 1 || read.end.as_deref() != Some(&format!("{count}-1")) {
                    report.problem(
                        SCENARIO,
                        format!(
                            "a follower of {count} messages got {} lines, end {:?}",
                            read.lines, read.end
                        ),
                    );
                }
            }
            other => report.problem(
                SCENARIO,
                format!("a follower of {count} messages: {other:?}"),
            ),
        }
    }
    let elapsed = started.elapsed();
    let sampled = sampler.stop().await;
    Memory {
        peak: instances::vm_hwm_kib(pid).unwrap_or(0).max(sampled),
        idle,
        elapsed,
    }
}

/// The server's memory while followers catch up at once.
struct Memory {
    peak: u64,
    idle: u64,
    /// Until the last follower had its last byte.
    elapsed: Duration,
}

pub async fn run(report: &mut Report) {
    // Set up: two finished processes with 10,000 and 50,000 messages.
    let mut env = Env::start(false, &[]).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let short = format!("catchup-10k-{run}");
    let long = format!("catchup-50k-{run}");
    history(&env, report, &short, &long).await;

    // Drive and measure: one follow and one snapshot against the raw SELECT, then many
    // follows at once.
    follow_vs_select(&env, report, &short).await;
    let cpu = env.cpu();
    let short_memory = catchup_memory(&mut env, report, &short, CATCHUP_SHORT).await;
    report.note(
        SCENARIO,
        format!(
            "{CATCHUP_FOLLOWERS} followers of {CATCHUP_SHORT} messages all done in {:.1} s; {}",
            short_memory.elapsed.as_secs_f64(),
            cpu.describe(&env.cpu())
        ),
    );
    let long_memory = catchup_memory(&mut env, report, &long, CATCHUP_LONG).await;
    report.note(
        SCENARIO,
        format!(
            "{CATCHUP_FOLLOWERS} followers of {CATCHUP_LONG} messages all done in {:.1} s",
            long_memory.elapsed.as_secs_f64()
        ),
    );
    memory_rows(report, &short_memory, &long_memory);
    drop(env);
}

/// Writes both histories over HTTP, then lets PostgreSQL's statistics catch up.
async fn history(env: &Env, report: &mut Report, short: &str, long: &str) {
    let started = Instant::now();
    fill(env.port, short, CATCHUP_SHORT).await;
    fill(env.port, long, CATCHUP_LONG).await;
    report.note(
        SCENARIO,
        format!(
            "history written in {:.1} s (arrays of 1,000 over HTTP)",
            started.elapsed().as_secs_f64()
        ),
    );
    let _ = sqlx::query("VACUUM ANALYZE messages")
        .execute(&env.db)
        .await;
}

/// One follow and one JSON array snapshot to their last byte vs the raw SELECT,
/// alternated, median of each; their rows.
async fn follow_vs_select(env: &Env, report: &mut Report, name: &str) {
    let (mut follows, mut arrays, mut selects) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bytes, mut array_bytes, mut select_bytes) = (0, 0, 0);
    for i in 0..CATCHUP_REPEATS + 1 {
        let read = read_ndjson(env.port, name, i == 0)
            .await
            .expect("catch-up follow");
        if let Some(Err(e)) = read.body.as_ref().map(|b| verify_ndjson(b, CATCHUP_SHORT)) {
            report.problem(SCENARIO, format!("the timed follow: {e}"));
        }
        bytes = read.bytes;
        let array = read_array(env.port, name, i == 0)
            .await
            .expect("JSON array snapshot");
        if let Some(Err(e)) = array.body.as_ref().map(|b| verify_array(b, CATCHUP_SHORT)) {
            report.problem(SCENARIO, format!("the timed snapshot: {e}"));
        }
        array_bytes = array.bytes;
        let (select, rows_bytes) = raw_select(env, name).await;
        select_bytes = rows_bytes;
        // The first of each warms caches and is not counted.
        if i > 0 {
            follows.push(read.elapsed);
            arrays.push(array.elapsed);
            selects.push(select);
        }
    }
    follows.sort();
    arrays.sort();
    selects.sort();
    let (follow, array, select) = (
        quantile(&follows, 0.5),
        quantile(&arrays, 0.5),
        quantile(&selects, 0.5),
    );
    let baseline = format!(
        "{} (`SELECT body … ORDER BY seq`, {:.1} MiB)",
        ms(select),
        select_bytes as f64 / (1 << 20) as f64
    );
    let follow_ratio = ratio(follow.as_secs_f64(), select.as_secs_f64());
    report.row(
        SCENARIO,
        format!(
            "follow from the start to its last byte, {} messages of ~1 KiB (NDJSON, {:.1} MiB), median of {CATCHUP_REPEATS}",
            thousands(CATCHUP_SHORT as f64),
            bytes as f64 / (1 << 20) as f64
        ),
        ms(follow),
        baseline.clone(),
        follow_ratio,
        "≤ 1.5x",
        follow_ratio.map(|r| r <= 1.5),
    );
    let snapshot_ratio = ratio(array.as_secs_f64(), select.as_secs_f64());
    report.row(
        SCENARIO,
        format!(
            "JSON array snapshot to its last byte, the same {} messages ({:.1} MiB), median of {CATCHUP_REPEATS}",
            thousands(CATCHUP_SHORT as f64),
            array_bytes as f64 / (1 << 20) as f64
        ),
        ms(array),
        baseline,
        snapshot_ratio,
        "≤ 1.5x",
        snapshot_ratio.map(|r| r <= 1.5),
    );
    report.note(
        SCENARIO,
        format!(
            "follow min / max {} / {}; snapshot min / max {} / {}; SELECT min / max {} / {}",
            ms(follows[0]),
            ms(follows[follows.len() - 1]),
            ms(arrays[0]),
            ms(arrays[arrays.len() - 1]),
            ms(selects[0]),
            ms(selects[selects.len() - 1])
        ),
    );
}

/// The baseline: every body of `name` in one SELECT; its time and bytes (a newline each).
async fn raw_select(env: &Env, name: &str) -> (Duration, u64) {
    let started = Instant::now();
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT body FROM messages WHERE process_id = $1 ORDER BY seq")
            .bind(name)
            .fetch_all(&env.db)
            .await
            .expect("raw SELECT");
    let elapsed = started.elapsed();
    assert_eq!(rows.len() as u64, CATCHUP_SHORT, "raw SELECT rows");
    (elapsed, rows.iter().map(|r| r.len() as u64 + 1).sum())
}

/// Peak RSS with 10,000 and with 50,000 messages of history: flat with history.
fn memory_rows(report: &mut Report, short: &Memory, long: &Memory) {
    report.row(
        SCENARIO,
        format!(
            "server peak RSS while {CATCHUP_FOLLOWERS} followers catch up at once, {} messages",
            thousands(CATCHUP_SHORT as f64)
        ),
        mib(short.peak),
        format!("{} (the same server idle)", mib(short.idle)),
        ratio(short.peak as f64, short.idle as f64),
        "–",
        None,
    );
    let flat = ratio(long.peak as f64, short.peak as f64);
    report.row(
        SCENARIO,
        format!(
            "server peak RSS while {CATCHUP_FOLLOWERS} followers catch up at once, {} messages",
            thousands(CATCHUP_LONG as f64)
        ),
        mib(long.peak),
        format!(
            "{} (with {} messages; idle {})",
            mib(short.peak),
            thousands(CATCHUP_SHORT as f64),
            mib(long.idle)
        ),
        flat,
        "flat with history (≤ 1.25x)",
        flat.map(|r| r <= 1.25),
    );
}
