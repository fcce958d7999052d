//! A scenario's environment: its own PostgreSQL, Redis and agent-stream, and the
//! bench's connections to them (statement counts, Redis clients, CPU).

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::instances::{Postgres, Redis, Server};
use crate::throughput::WRITERS;
use crate::usage::{cpu_ticks, tree_cpu_ticks, CpuSnapshot};

/// PostgreSQL as production runs it: every commit flushed to disk, with a server's
/// page cache (the drills' 32 MB made every backend write out pages itself) and room
/// for a few GB of WAL between checkpoints (the default 1 GB checkpointed every few
/// seconds of the throughput scenario, whichever setup was running). The private
/// cluster's own defaults (fsync and full_page_writes off, for the drills' speed) come
/// first in its postgresql.conf; the last setting wins.
pub const PRODUCTION_DURABILITY: &str =
    "fsync = on\nfull_page_writes = on\nsynchronous_commit = on\nmin_wal_size = 1GB\nmax_wal_size = 4GB\nshared_buffers = 512MB\n";
/// WAL written (and checkpointed) before a scenario measures anything, so that the
/// scenario's commits go to WAL segments PostgreSQL recycled, as in a server that has
/// been in service (`min_wal_size` keeps them). A fresh cluster instead makes each new
/// 16 MB segment as it fills the last, writing it full of zeros and flushing it while
/// every commit waits (`wal_init_zero`): a stall of up to a few hundred ms on this
/// machine's disk, which a server in service meets only when its WAL outgrows what it
/// recycles.
const WAL_WARM_UP_MIB: i64 = 256;
/// The warm-up's WAL: messages of 1 MiB written to the WAL alone (no table, no effect),
/// then a checkpoint, which recycles the segments they filled into the next ones.
const WAL_WARM_UP: &str = "SELECT count(pg_logical_emit_message(false, 'agent-stream bench: WAL warm-up', repeat('x', 1048576))) FROM generate_series(1, $1)";
/// Loads `pg_stat_statements`, to count statements.
const STATEMENT_STATISTICS: &str =
    "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track_utility = off\n";

/// Name of the bench's own Redis connections, left out of the server's count.
pub const BENCH_CLIENT_NAME: &str = "perf-bench";

/// A private PostgreSQL, Redis and agent-stream, plus the bench's own connections.
pub struct Env {
    pub pg: Postgres,
    pub redis: Redis,
    pub server: Server,
    pub db: PgPool,
    pub port: u16,
    pub stats: bool,
}

impl Env {
    /// `stats`: load `pg_stat_statements` to count statements.
    pub async fn start(stats: bool, server_args: &[&str]) -> Self {
        let mut settings = PRODUCTION_DURABILITY.to_owned();
        if stats {
            settings.push_str(STATEMENT_STATISTICS);
        }
        let pg = Postgres::start_with(&settings);
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
            "CREATE TABLE perf.processes (id text PRIMARY KEY, last_seq bigint NOT NULL DEFAULT 0)",
        ] {
            sqlx::query(statement)
                .execute(&db)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        sqlx::query(WAL_WARM_UP)
            .bind(WAL_WARM_UP_MIB)
            .execute(&db)
            .await
            .expect("write the WAL warm-up");
        sqlx::query("CHECKPOINT")
            .execute(&db)
            .await
            .expect("CHECKPOINT after the WAL warm-up");
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

    pub fn server_pid(&self) -> u32 {
        self.server.pid().expect("the server runs")
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        bench_redis(&self.redis.url(), Duration::from_secs(10)).await
    }

    /// Redis clients other than the bench's own.
    pub async fn server_redis_clients(&self) -> usize {
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

    /// Bytes of WAL PostgreSQL has written so far.
    pub async fn wal_bytes(&self) -> i64 {
        sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
            .fetch_one(&self.db)
            .await
            .unwrap_or(0)
    }

    /// Statements (pg_stat_statements, without the bench's reads of the statistics)
    /// and committed transactions so far.
    pub async fn pg_counts(&self) -> PgCounts {
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
    pub async fn top_statements(&self, n: i64) -> Vec<(i64, String)> {
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
    /// The `n` statements that took the most execution time since the last reset: calls,
    /// mean execution time (ms), mean bytes of WAL written, and the statement's start.
    pub async fn top_by_time(&self, n: i64) -> Vec<(i64, f64, f64, String)> {
        if !self.stats {
            return Vec::new();
        }
        sqlx::query_as::<_, (i64, f64, f64, String)>(
            "SELECT calls, mean_exec_time, (wal_bytes / greatest(calls, 1))::float8, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat%' ORDER BY total_exec_time DESC LIMIT $1",
        )
        .bind(n)
        .fetch_all(&self.db)
        .await
        .unwrap_or_default()
    }

    pub async fn reset_statements(&self) {
        if self.stats {
            let _ = sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(&self.db)
                .await;
        }
    }

    pub fn cpu(&self) -> CpuSnapshot {
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
pub struct PgCounts {
    pub at: Instant,
    pub xacts: i64,
    pub statements: i64,
}

impl PgCounts {
    /// (statements/s, transactions/s) from `self` to `later`.
    pub fn rates(&self, later: &PgCounts) -> (f64, f64) {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        (
            (later.statements - self.statements) as f64 / seconds,
            (later.xacts - self.xacts) as f64 / seconds,
        )
    }
}

pub async fn bench_redis(
    url: &str,
    response_timeout: Duration,
) -> redis::aio::MultiplexedConnection {
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
