//! `throughput`: appends/s of 8 concurrent writers (each sequential, each its own
//! process), one message per request and arrays of 100, beside two raw baselines of the
//! same concurrency and batch sizes, each followed by the `XADD`s: the bare `INSERT` of
//! rows whose seqs the client gives, and the `INSERT` that does what an append must (its
//! seqs taken from the process's row in the same statement, a repeated id skipped).

use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::Postgres;

use crate::client::Conn;
use crate::env::Env;
use crate::figures::{per_second, thousands};
use crate::messages::{batch, message};
use crate::report::{Report, Scenario};

pub const WRITERS: usize = 8;
const BATCH: usize = 100;
const THROUGHPUT_RUN: Duration = Duration::from_secs(3);
const THROUGHPUT_WARMUP: Duration = Duration::from_secs(1);
/// Bound on the requests of one writer (it stops at its deadline long before).
const MAX_MESSAGES: u64 = 10_000_000;
const SCENARIO: Scenario = Scenario::Throughput;

/// The raw baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Baseline {
    /// `INSERT` of rows with the seqs the writer gives.
    Bare,
    /// `INSERT` whose seqs come from the process's row (`UPDATE … RETURNING`, in the
    /// same statement) and which skips an id the process already has.
    Constrained,
}

/// The bare one, one row.
const BARE_INSERT: &str =
    "INSERT INTO perf.messages (process_id, seq, id, body) VALUES ($1, $2, $3, $4)";
/// The bare one, an array of rows.
const BARE_INSERT_ARRAY: &str = "INSERT INTO perf.messages (process_id, seq, id, body) SELECT $1, seq, id, body FROM UNNEST($2::bigint[], $3::text[], $4::text[]) AS m (seq, id, body)";
/// The constrained one's process row, made once per writer.
const CONSTRAINED_PROCESS: &str =
    "INSERT INTO perf.processes (id) VALUES ($1) ON CONFLICT (id) DO NOTHING";
/// The constrained one, one row: its seq is the process's next.
const CONSTRAINED_INSERT: &str = "WITH next AS (UPDATE perf.processes SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq) INSERT INTO perf.messages (process_id, seq, id, body) SELECT $1, next.last_seq, $2, $3 FROM next ON CONFLICT (process_id, id) DO NOTHING RETURNING seq";
/// The constrained one, an array of rows: their seqs follow the process's last.
const CONSTRAINED_INSERT_ARRAY: &str = "WITH next AS (UPDATE perf.processes SET last_seq = last_seq + cardinality($2::text[]) WHERE id = $1 RETURNING last_seq - cardinality($2::text[]) AS base) INSERT INTO perf.messages (process_id, seq, id, body) SELECT $1, next.base + m.ord, m.id, m.body FROM next, UNNEST($2::text[], $3::text[]) WITH ORDINALITY AS m (id, body, ord) ON CONFLICT (process_id, id) DO NOTHING RETURNING seq";

/// Rounds of the three setups at each batch size, each round in a turned order. One
/// run of a setup varies by ±10% and more on this shared 2-core machine (the disk's
/// writeback of 100 MB/s of WAL and tables comes and goes), and the three of a round
/// run within seconds of each other: a ratio is the median of the rounds' ratios, a
/// rate the median of its rounds, and the notes give every round.
const ROUNDS: usize = 5;

/// What one round runs: agent-stream, or a raw baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Ours,
    Raw(Baseline),
}

const SETUPS: [Setup; 3] = [
    Setup::Ours,
    Setup::Raw(Baseline::Bare),
    Setup::Raw(Baseline::Constrained),
];

/// One batch size's rates, in messages/s, and ours against each baseline (the medians
/// of the rounds), and what the CPUs and PostgreSQL did.
struct Rates {
    ours: f64,
    bare: f64,
    constrained: f64,
    against_bare: f64,
    against_constrained: f64,
    notes: String,
}

pub async fn run(report: &mut Report) {
    let env = Env::start(true, &[]).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    // Warm every path (connections, prepared statements, caches).
    let _ = http_throughput(env.port, &format!("warm-{run}"), 1, THROUGHPUT_WARMUP).await;
    for baseline in [Baseline::Bare, Baseline::Constrained] {
        let tag = format!("rawwarm-{baseline:?}-{run}");
        let _ = raw_throughput(&env, &tag, 1, THROUGHPUT_WARMUP, baseline).await;
    }
    for (size, label) in [(1, "single"), (BATCH, "batched")] {
        let rates = measure(&env, report, &run, size, label).await;
        rows(report, size, &rates);
        report.note(SCENARIO, format!("{label}: {}", rates.notes));
    }
    drop(env);
}

/// [`ROUNDS`] rounds of agent-stream and each baseline at one batch size.
async fn measure(env: &Env, report: &mut Report, run: &str, size: usize, label: &str) -> Rates {
    let mut rounds = Vec::with_capacity(ROUNDS);
    let mut phases = Vec::new();
    for round in 0..ROUNDS {
        let mut rates = [0.0; SETUPS.len()];
        for turn in 0..SETUPS.len() {
            let at = (round + turn) % SETUPS.len();
            let setup = SETUPS[at];
            env.reset_statements().await;
            let cpu = env.cpu();
            let tag = format!("{label}-{at}-{round}-{run}");
            rates[at] = match setup {
                Setup::Ours => match http_throughput(env.port, &tag, size, THROUGHPUT_RUN).await {
                    Ok(rate) => rate,
                    Err(e) => {
                        report.problem(SCENARIO, e);
                        0.0
                    }
                },
                Setup::Raw(baseline) => {
                    raw_throughput(env, &tag, size, THROUGHPUT_RUN, baseline).await
                }
            };
            if round == 0 {
                let top = env
                    .top_by_time(if setup == Setup::Ours { 5 } else { 2 })
                    .await;
                let name = match setup {
                    Setup::Ours => "agent-stream",
                    Setup::Raw(Baseline::Bare) => "bare raw",
                    Setup::Raw(Baseline::Constrained) => "constrained raw",
                };
                phases.push(format!(
                    "{name} phase {}; its statements by execution time (BEGIN and COMMIT not counted): {}",
                    cpu.describe(&env.cpu()),
                    describe(&top)
                ));
            }
        }
        rounds.push(rates);
    }
    let median = |of: &dyn Fn(&[f64; 3]) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(of).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let each = rounds
        .iter()
        .map(|[ours, bare, constrained]| {
            format!(
                "{} / {} / {} msg/s ({:.2}x)",
                thousands(*ours),
                thousands(*bare),
                thousands(*constrained),
                ours / constrained
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Rates {
        ours: median(&|rates| rates[0]),
        bare: median(&|rates| rates[1]),
        constrained: median(&|rates| rates[2]),
        against_bare: median(&|rates| rates[0] / rates[1]),
        against_constrained: median(&|rates| rates[0] / rates[2]),
        notes: format!(
            "{ROUNDS} rounds of {THROUGHPUT_RUN:?} of agent-stream / bare / constrained (and ours \
            against constrained), each in a turned order, medians in the table: {each}; first \
            round: {}",
            phases.join("; ")
        ),
    }
}

/// Statements as `` `query` calls × mean ms ``.
fn describe(top: &[(i64, f64, f64, String)]) -> String {
    top.iter()
        .map(|(calls, mean, wal, query)| {
            format!(
                "`{query}` {calls} × {mean:.3} ms and {:.1} KiB of WAL",
                wal / 1024.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ours against each baseline: single ≥ 0.5x, batched ≥ 0.8x and > 20,000/s.
fn rows(report: &mut Report, size: usize, rates: &Rates) {
    let (figure, target, floor, least) = if size == 1 {
        (
            format!("appends/s, one message per request, {WRITERS} writers each sequential"),
            "≥ 0.5x",
            0.5,
            0.0,
        )
    } else {
        (
            format!("appends/s, arrays of {BATCH} messages, {WRITERS} writers each sequential"),
            "≥ 0.8x and > 20,000/s",
            0.8,
            20_000.0,
        )
    };
    let unnest = if size == 1 { "" } else { " … UNNEST" };
    let against = [
        (
            figure,
            rates.bare,
            rates.against_bare,
            format!("bare INSERT{unnest} of given seqs + XADD, same concurrency"),
        ),
        (
            "the same, against an INSERT that assigns seqs and skips known ids".to_owned(),
            rates.constrained,
            rates.against_constrained,
            format!("INSERT{unnest} with seqs from the process row (UPDATE … RETURNING), ON CONFLICT (process_id, id) DO NOTHING, + XADD"),
        ),
    ];
    // Each ratio is the median of the rounds' ratios.
    for (figure, baseline, r, described) in against {
        report.row(
            SCENARIO,
            figure,
            format!("{} msg/s", thousands(rates.ours)),
            format!("{} msg/s ({described})", thousands(baseline)),
            Some(r),
            target,
            Some(r >= floor && rates.ours > least),
        );
    }
}

/// `WRITERS` HTTP writers, each to its own process, one request at a time of `size`
/// messages, for `run`: messages stored per second.
async fn http_throughput(port: u16, tag: &str, size: usize, run: Duration) -> Result<f64, String> {
    let started = Instant::now();
    let deadline = started + run;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(http_writer(port, format!("{tag}-{w}"), size, deadline)))
        .collect();
    let mut stored = 0;
    for task in tasks {
        stored += task.await.map_err(|e| e.to_string())??;
    }
    Ok(per_second(stored as f64, started.elapsed()))
}

/// One HTTP writer: appends of `size` messages to `name` until `deadline`; how many stored.
async fn http_writer(
    port: u16,
    name: String,
    size: usize,
    deadline: Instant,
) -> Result<u64, String> {
    let mut conn = Conn::open(port).await.map_err(|e| e.to_string())?;
    let mut n = 1u64;
    // Bounded by time, and by count.
    while Instant::now() < deadline && n < MAX_MESSAGES {
        let body = if size == 1 {
            message(&name, n)
        } else {
            batch(&name, n, size)
        };
        let seq = conn.append(&name, body.as_bytes()).await?;
        let expected = n + size as u64 - 1;
        if seq != expected {
            return Err(format!("{name}: stored up to {seq}, expected {expected}"));
        }
        n += size as u64;
    }
    Ok(n - 1)
}

/// The same with a raw baseline (one row, or `size` rows in one statement) + `XADD`
/// (pipelined for a batch), one PostgreSQL connection per writer and one shared
/// multiplexed Redis connection, as the server has.
async fn raw_throughput(
    env: &Env,
    tag: &str,
    size: usize,
    run: Duration,
    baseline: Baseline,
) -> f64 {
    let redis = env.redis().await;
    let started = Instant::now();
    let deadline = started + run;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db, redis) = (env.db.clone(), redis.clone());
            let name = format!("{tag}-{w}");
            tokio::spawn(async move {
                let conn = db.acquire().await.expect("a raw connection");
                raw_writer(conn, redis, name, size, deadline, baseline).await
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        stored += task.await.expect("raw writer");
    }
    per_second(stored as f64, started.elapsed())
}

/// One raw writer: `size` rows to `name` at a time, then their `XADD`s, until
/// `deadline`; how many stored.
async fn raw_writer(
    mut conn: PoolConnection<Postgres>,
    mut redis: redis::aio::MultiplexedConnection,
    name: String,
    size: usize,
    deadline: Instant,
    baseline: Baseline,
) -> u64 {
    if baseline == Baseline::Constrained {
        sqlx::query(CONSTRAINED_PROCESS)
            .bind(&name)
            .execute(&mut *conn)
            .await
            .expect("the constrained baseline's process row");
    }
    let key = format!("perf:{name}:stream");
    let mut n = 1u64;
    // Bounded by time, and by count.
    while Instant::now() < deadline && n < MAX_MESSAGES {
        let bodies: Vec<String> = (0..size as u64).map(|i| message(&name, n + i)).collect();
        let seqs = match baseline {
            Baseline::Bare => bare_insert(&mut conn, &name, n, &bodies).await,
            Baseline::Constrained => constrained_insert(&mut conn, &name, n, &bodies).await,
        };
        let mut pipe = redis::pipe();
        for (seq, body) in seqs.iter().zip(&bodies) {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(1000)
                .arg(format!("{seq}-0"))
                .arg("message")
                .arg(body.as_str())
                .ignore();
        }
        let _: () = pipe.query_async(&mut redis).await.expect("raw XADD");
        n += size as u64;
    }
    n - 1
}

/// The bare `INSERT` of `bodies` as seqs `first`, `first + 1`, …; those seqs.
async fn bare_insert(
    conn: &mut PoolConnection<Postgres>,
    name: &str,
    first: u64,
    bodies: &[String],
) -> Vec<i64> {
    let seqs: Vec<i64> = (0..bodies.len() as i64).map(|i| first as i64 + i).collect();
    let ids: Vec<String> = seqs.iter().map(|s| format!("{name}-{s}")).collect();
    let query = if bodies.len() == 1 {
        sqlx::query(BARE_INSERT)
            .bind(name)
            .bind(seqs[0])
            .bind(&ids[0])
            .bind(&bodies[0])
    } else {
        sqlx::query(BARE_INSERT_ARRAY)
            .bind(name)
            .bind(&seqs)
            .bind(&ids)
            .bind(bodies)
    };
    query.execute(&mut **conn).await.expect("raw INSERT");
    seqs
}

/// The constrained `INSERT` of `bodies` with ids `<name>-<first>`, …; the seqs it gave.
async fn constrained_insert(
    conn: &mut PoolConnection<Postgres>,
    name: &str,
    first: u64,
    bodies: &[String],
) -> Vec<i64> {
    let ids: Vec<String> = (0..bodies.len() as u64)
        .map(|i| format!("{name}-{}", first + i))
        .collect();
    let query = if bodies.len() == 1 {
        sqlx::query_scalar(CONSTRAINED_INSERT)
            .bind(name)
            .bind(&ids[0])
            .bind(&bodies[0])
    } else {
        sqlx::query_scalar(CONSTRAINED_INSERT_ARRAY)
            .bind(name)
            .bind(&ids)
            .bind(bodies)
    };
    let mut seqs: Vec<i64> = query
        .fetch_all(&mut **conn)
        .await
        .expect("raw constrained INSERT");
    // RETURNING's order is not promised; XADD wants its ids rising.
    seqs.sort_unstable();
    assert_eq!(seqs.len(), bodies.len(), "every new id stored");
    seqs
}
