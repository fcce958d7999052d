//! `throughput`: appends/s of concurrent writers, single and batched, beside raw INSERTs.

use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::env::Env;
use crate::figures::{per_second, ratio, thousands};
use crate::messages::{batch, message};
use crate::report::{Report, Scenario};

pub const WRITERS: usize = 8;
const BATCH: usize = 100;
const THROUGHPUT_RUN: Duration = Duration::from_secs(5);
const THROUGHPUT_WARMUP: Duration = Duration::from_secs(1);

/// `WRITERS` HTTP writers, each to its own process, one request at a time of `batch`
/// messages, for `run`: messages stored per second.
pub async fn http_throughput(
    port: u16,
    tag: &str,
    size: usize,
    run: Duration,
) -> Result<f64, String> {
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
pub async fn raw_throughput(env: &Env, tag: &str, size: usize, run: Duration) -> f64 {
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

pub async fn run(report: &mut Report) {
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
