//! [`PostgresStore`]: the store port on PostgreSQL, the source of truth.
//!
//! An append is one transaction in one round trip, the `append_messages_v2` function of
//! `migrations/`: lock the process row (creating it if needed) while moving `last_seq`,
//! insert the messages that are new with the next seqs (a stored id keeps its seq),
//! commit. Because the row lock is held until commit, concurrent writers to
//! one process get distinct, gap-free seqs and commit in seq order; so a reader that
//! sees seq `n` committed knows every seq below it is committed too.
//!
//! With a read replica ([`replica`]), catch-up pages and snapshots are read from it,
//! and completed from the primary when it lags.

mod kept;
mod options;
mod replica;
pub mod sql;

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, FromRow, Row};

use crate::adapters::tls;
use crate::config::redact;
use crate::domain::{
    FinishStatus, NewMessage, ProcessId, ProcessInfo, ProcessStatus, RecentProcess, StoredMessage,
    StreamId,
};
use crate::metrics::ReplicaRead;
use crate::ports::{
    AppendOutcome, Appended, Epoch, MessageSink, MessageStore, Registration, StoreError,
};
use kept::KeptConnections;
use replica::Replica;

/// The schema migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long the diagnosis of an unreachable server waits for its connection.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection idle this long is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// While another instance holds the republisher lease, how often this one tries to take
/// it: the longest a fleet goes without a republisher after its holder dies. Each try
/// is a transaction, so this is what each further instance costs PostgreSQL while its
/// followers are quiet.
pub const LEASE_RETRY: Duration = Duration::from_secs(10);

/// The longest the republisher's query may take before its connection (and with it the
/// lease) is given up: a connection that hangs must not hold the lease forever.
const LEASE_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a PostgreSQL TLS failure says which CA to give.
const HOW_TO_TRUST: &str = "sslrootcert=FILE in DATABASE_URL";

/// The republisher lease ([`sql::REPUBLISHER_LEASE`]): a session advisory lock, held
/// by a connection of its own, outside the pool, for as long as it lives.
#[derive(Default)]
struct Lease {
    connection: Option<sqlx::PgConnection>,
    held: bool,
    /// While not held: when to try to take it again.
    next_try: Option<std::time::Instant>,
}

pub struct PostgresStore {
    lease: tokio::sync::Mutex<Lease>,
    pool: PgPool,
    /// Connections kept for appends between them, out of `pool`: at most half of it.
    kept: KeptConnections,
    /// `host:port` (or the socket), for messages.
    server: String,
    /// DATABASE_URL without its secrets, for messages.
    redacted_url: String,
    /// The read replica for catch-up pages, if one is set (`--database-read-url`).
    replica: Option<Replica>,
}

impl PostgresStore {
    /// Sets up a pool for `database_url` (read as libpq reads it: see [`options`]);
    /// connections are opened on first use. `acquire_timeout` bounds how long a call
    /// waits for a connection.
    pub fn connect_lazy(
        database_url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let options = options::connect_options(database_url, "DATABASE_URL")?;
        let server = options::server(&options);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            // sqlx pings every connection it hands out, a round trip per call; ping
            // only one that sat idle a while (a busy connection that broke fails its
            // call, and the pool drops it).
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        connection.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        Ok(Self {
            kept: KeptConnections::new(
                pool.clone(),
                (max_connections as usize / 2).max(1),
                PING_IF_IDLE_FOR,
            ),
            pool,
            server,
            redacted_url: redact(database_url),
            replica: None,
            lease: tokio::sync::Mutex::default(),
        })
    }

    /// Reads catch-up pages and snapshots from the replica at `read_url` (a pool of
    /// its own, as large as the primary's), completed from the primary when it lags.
    /// `epoch` is the primary's ([`Self::epoch`]): the replica must hold the same
    /// database. Returns the replica's URL without its secrets, for the log.
    pub fn read_from_replica(
        &mut self,
        read_url: &str,
        acquire_timeout: Duration,
        epoch: Epoch,
    ) -> anyhow::Result<String> {
        let max_connections = self.pool.options().get_max_connections();
        let replica = Replica::connect_lazy(read_url, max_connections, acquire_timeout, epoch)?;
        let redacted = replica.redacted_url().to_owned();
        self.replica = Some(replica);
        Ok(redacted)
    }

    /// Applies the migrations that have not run yet: the first use of the server, so
    /// its error says which server, and a TLS failure says why in one sentence.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        use sqlx::migrate::MigrateError;
        let error = match MIGRATOR.run(&self.pool).await {
            Ok(()) => return Ok(()),
            Err(MigrateError::Execute(sqlx::Error::PoolTimedOut)) => self.why_unreachable().await,
            Err(MigrateError::Execute(error)) if is_connecting(&error) => {
                unreachable_because(error, &self.server)
            }
            Err(error) => {
                anyhow::Error::new(error).context("applying the database migrations failed")
            }
        };
        if error.is::<UntrustedTls>() {
            // Says the server and the reason already, in one sentence.
            return Err(error);
        }
        Err(error.context(format!(
            "could not prepare PostgreSQL ({})",
            self.redacted_url
        )))
    }

    /// The database's epoch, made by the migrations: run [`Self::migrate`] first.
    pub async fn epoch(&self) -> anyhow::Result<Epoch> {
        let epoch: String = sqlx::query_scalar(sql::EPOCH)
            .fetch_one(&self.pool)
            .await
            .context("reading the store's epoch failed")?;
        Ok(Epoch::new(epoch))
    }

    /// The pool says only that it timed out, whatever kept it from connecting: one
    /// connection of its own says why (refused, unknown host, bad password, …), in
    /// words that say what to check.
    async fn why_unreachable(&self) -> anyhow::Error {
        let options = self.pool.connect_options();
        let at = &self.server;
        let connected =
            tokio::time::timeout(DIAGNOSE_TIMEOUT, sqlx::PgConnection::connect_with(&options))
                .await;
        match connected {
            Ok(Ok(_)) => anyhow::anyhow!(
                "PostgreSQL at {at} answers now but did not in time: retry, or raise \
                    --database-timeout"
            ),
            Ok(Err(error)) => unreachable_because(error, at),
            Err(_) => anyhow::anyhow!(
                "no answer from {at} in {DIAGNOSE_TIMEOUT:?}: is PostgreSQL running there, and \
                    does the network let the connection through?"
            ),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// sqlx reports both an overload and an unreachable server as `PoolTimedOut` (no
    /// connection freed up, or none could be opened, in time); it is `Busy` here, and
    /// `TrackedStore` tells the two apart by whether the store answered anything lately.
    /// (The pool's size does not tell: it counts connections being opened, and a busy
    /// pool replaces the connections it closes.)
    fn failed(&self, error: sqlx::Error) -> StoreError {
        match error {
            sqlx::Error::PoolTimedOut => StoreError::Busy,
            error => unavailable(error),
        }
    }
}

/// Whether the error is one of opening a connection (rather than of a statement).
fn is_connecting(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(database) => database
            .code()
            .is_some_and(|code| code.starts_with("28") || code == "3D000"),
        _ => false,
    }
}

/// A TLS handshake with PostgreSQL that failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("could not connect to PostgreSQL at {at} over TLS: {reason}")]
struct UntrustedTls {
    at: String,
    reason: String,
}

/// Why a connection to `at` failed, with what to check.
fn unreachable_because(error: sqlx::Error, at: &str) -> anyhow::Error {
    use std::io::ErrorKind;
    let error = anyhow::Error::new(error);
    if let Some(failure) = tls::failure(&error) {
        return anyhow::Error::new(UntrustedTls {
            at: at.to_owned(),
            reason: failure.explain(HOW_TO_TRUST),
        });
    }
    let Ok(error) = error.downcast::<sqlx::Error>() else {
        unreachable!("made from a sqlx::Error just above")
    };
    let hint = match &error {
        sqlx::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => {
            return anyhow::anyhow!(
                "connection refused at {at}: is PostgreSQL running, on that port?"
            )
        }
        sqlx::Error::Io(io) if io.to_string().contains("lookup address") => {
            "check the host in DATABASE_URL"
        }
        sqlx::Error::Io(_) => {
            "is PostgreSQL running there, and does the network let the connection through?"
        }
        sqlx::Error::Tls(_) => "check the sslmode of DATABASE_URL against the server's TLS setup",
        sqlx::Error::Database(database) => match database.code().as_deref() {
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => "check the user and password in DATABASE_URL",
            // invalid_catalog_name
            Some("3D000") => "check the database name in DATABASE_URL, or create that database",
            _ => "see PostgreSQL's message",
        },
        _ => "check DATABASE_URL",
    };
    let cause = crate::report::one_line(&anyhow::Error::new(error));
    anyhow::anyhow!("could not connect to PostgreSQL at {at}: {cause}: {hint}")
}

/// A page of `process`'s messages after `after` from `pool` (the primary's or the
/// replica's): at most `limit`, and past the first, at most `max_bytes` of JSON.
async fn read_page(
    pool: &PgPool,
    process: &ProcessId,
    after: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<StoredMessage>, sqlx::Error> {
    let rows = sqlx::query(sql::READ_AFTER)
        .bind(process.as_str())
        .bind(to_i64(after))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
    rows.iter().map(stored_message).collect()
}

/// A row of `READ_AFTER` or `STREAM_AFTER`.
fn stored_message(row: &PgRow) -> Result<StoredMessage, sqlx::Error> {
    Ok(StoredMessage {
        seq: to_seq(row.try_get(0)?),
        json: Bytes::from(row.try_get::<String, _>(1)?),
    })
}

/// How a catch-up stream of one pool went.
struct Streamed {
    /// The seq of the last message the sink took (the stream's `after` if none).
    last: u64,
    /// How it ended.
    outcome: StreamOutcome,
}

enum StreamOutcome {
    /// Every row was read and taken.
    Ended,
    /// The sink said stop.
    Stopped,
    /// The database failed (or, with a `row_wait`, did not send a row in time).
    Failed(anyhow::Error),
}

/// Streams `process`'s messages after `after` (up to `upto`) from `pool` into `sink`,
/// in batches of the sink's bytes, one query whose rows are read only as the sink takes them (so
/// PostgreSQL waits on the socket meanwhile); a row that takes over `row_wait` is a
/// failure.
async fn stream_rows(
    pool: &PgPool,
    process: &ProcessId,
    (after, upto): (u64, u64),
    sink: &MessageSink,
    row_wait: Option<Duration>,
) -> Streamed {
    let mut last = after;
    let outcome = match stream_into(pool, process, (&mut last, upto), sink, row_wait).await {
        Ok(true) => StreamOutcome::Ended,
        Ok(false) => StreamOutcome::Stopped,
        Err(error) => StreamOutcome::Failed(error),
    };
    Streamed { last, outcome }
}

/// [`stream_rows`]' work: moves `last` on as batches are taken; whether every row was.
async fn stream_into(
    pool: &PgPool,
    process: &ProcessId,
    (last, upto): (&mut u64, u64),
    sink: &MessageSink,
    row_wait: Option<Duration>,
) -> anyhow::Result<bool> {
    let mut connection = StreamConnection {
        connection: within(row_wait, pool.acquire()).await?,
        read_to_the_end: false,
    };
    let (mut batch, mut bytes) = (Vec::new(), 0);
    {
        let mut rows = sqlx::query(sql::STREAM_AFTER)
            .bind(process.as_str())
            .bind(to_i64(*last))
            .bind(to_i64(upto))
            .fetch(&mut *connection.connection);
        while let Some(row) = within(row_wait, rows.try_next()).await? {
            let message = stored_message(&row)?;
            bytes += message.json.len();
            batch.push(message);
            if bytes >= sink.batch_bytes() {
                let reached = batch.last().map_or(*last, |message| message.seq);
                if !sink.send(std::mem::take(&mut batch)).await {
                    return Ok(false);
                }
                (*last, bytes) = (reached, 0);
            }
        }
    }
    connection.read_to_the_end = true;
    let reached = batch.last().map_or(*last, |message| message.seq);
    if !batch.is_empty() && !sink.send(batch).await {
        return Ok(false);
    }
    *last = reached;
    Ok(true)
}

/// `wait`'s answer, or a failure past `limit` if there is one.
async fn within<T>(
    limit: Option<Duration>,
    wait: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> anyhow::Result<T> {
    let Some(limit) = limit else {
        return Ok(wait.await?);
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(anyhow::anyhow!("no answer in {limit:?}")),
    }
}

/// The pooled connection of a catch-up stream. Dropped before its rows were all read (a
/// stream that stopped or failed), it is closed, not returned to the pool: sqlx would
/// first read every row left, holding the connection as long as that takes.
struct StreamConnection {
    connection: sqlx::pool::PoolConnection<sqlx::Postgres>,
    read_to_the_end: bool,
}

impl Drop for StreamConnection {
    fn drop(&mut self) {
        if !self.read_to_the_end {
            self.connection.close_on_drop();
        }
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.into())
}

fn to_seq(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A row of `processes`, as `REGISTER`, `SELECT_PROCESS`, `FINISH` and `RECENT` return it.
#[derive(sqlx::FromRow)]
struct ProcessRow {
    process_id: String,
    status: String,
    last_seq: i64,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

/// The row of `append_messages_v2` (see `sql::APPEND`).
#[derive(sqlx::FromRow)]
struct AppendRow {
    /// The process's status.
    status: String,
    /// The new messages' created_at text.
    stamp: String,
    /// The usual case: every message was new, and took the seqs from this one on.
    first: Option<i64>,
    /// Else, per message in order: its seq, and whether this call created it.
    seqs: Option<Vec<i64>>,
    created: Option<Vec<bool>>,
}

impl AppendRow {
    /// The i-th message's seq and whether this call created it.
    fn message(&self, i: usize) -> Option<(u64, bool)> {
        match (self.first, &self.seqs, &self.created) {
            (Some(first), _, _) => Some((to_seq(first) + i as u64, true)),
            (None, Some(seqs), Some(created)) => Some((to_seq(*seqs.get(i)?), *created.get(i)?)),
            _ => None,
        }
    }
}

fn process_info(row: &PgRow) -> Result<ProcessInfo, StoreError> {
    let row = ProcessRow::from_row(row).map_err(unavailable)?;
    let process_id = ProcessId::parse(&row.process_id).map_err(|e| {
        StoreError::Unavailable(anyhow::anyhow!(
            "stored process id {:?}: {e}",
            row.process_id
        ))
    })?;
    Ok(ProcessInfo {
        process_id,
        status: ProcessStatus::from_stored(&row.status),
        last_seq: to_seq(row.last_seq),
        created_at: row.created_at,
        finished_at: row.finished_at,
    })
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn register(&self, process: &ProcessId) -> Result<Registration, StoreError> {
        let created = sqlx::query(sql::REGISTER)
            .bind(process.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        if let Some(row) = created {
            return Ok(Registration::Created(process_info(&row)?));
        }
        match self.process(process).await? {
            Some(info) => Ok(Registration::Existing(info)),
            None => Err(StoreError::Unavailable(anyhow::anyhow!(
                "process {process} vanished while registering"
            ))),
        }
    }

    async fn append(
        &self,
        process: &ProcessId,
        messages: &[NewMessage],
    ) -> Result<AppendOutcome, StoreError> {
        let ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
        let heads: Vec<&str> = messages.iter().map(NewMessage::head).collect();
        let mut lent = self.kept.lend().await.map_err(|e| self.failed(e))?;
        let row = sqlx::query_as::<_, AppendRow>(sql::APPEND)
            .bind(process.as_str())
            .bind(&ids)
            .bind(&heads)
            .fetch_one(lent.connection())
            .await
            .map_err(|e| self.failed(e))?;
        lent.give_back();
        let status = ProcessStatus::from_stored(&row.status);
        let mut outcome = AppendOutcome::default();
        for (i, message) in messages.iter().enumerate() {
            let (seq, created) = row.message(i).ok_or_else(|| {
                StoreError::Unavailable(anyhow::anyhow!(
                    "append_messages_v2 answered no seq for message {i} of {}",
                    messages.len()
                ))
            })?;
            if created {
                outcome
                    .stored
                    .push(StoredMessage::from_head(message.head(), seq, &row.stamp));
            }
            outcome.results.push(Appended {
                id: message.id.clone(),
                stream_id: StreamId::message(seq),
                created,
            });
        }
        // The function stored nothing for a finished process; the rule is `plan`'s.
        outcome.refuse_if_finished(process, &status)
    }

    async fn finish(
        &self,
        process: &ProcessId,
        status: &FinishStatus,
    ) -> Result<ProcessInfo, StoreError> {
        let finished = sqlx::query(sql::FINISH)
            .bind(process.as_str())
            .bind(status.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        if let Some(row) = finished {
            return process_info(&row);
        }
        let info = self
            .process(process)
            .await?
            .ok_or_else(|| StoreError::UnknownProcess(process.clone()))?;
        match info.status.finished() {
            Some(current) if current == status => Ok(info),
            Some(current) => Err(StoreError::StatusConflict {
                process: process.clone(),
                current: current.clone(),
            }),
            None => Err(StoreError::Unavailable(anyhow::anyhow!(
                "process {process} is running but could not be finished"
            ))),
        }
    }

    async fn process(&self, process: &ProcessId) -> Result<Option<ProcessInfo>, StoreError> {
        let row = sqlx::query(sql::SELECT_PROCESS)
            .bind(process.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        row.as_ref().map(process_info).transpose()
    }

    /// From the replica when there is one: its page is whole if it is full (`limit`
    /// messages) or reaches `known`; else the replica lags, and the rest of the page
    /// (within the same `limit` and `max_bytes`) is read from the primary after the
    /// replica's last seq. A replica that fails or rests: the primary alone.
    async fn read_after(
        &self,
        process: &ProcessId,
        after: u64,
        known: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let primary = |after, limit, max_bytes| async move {
            read_page(&self.pool, process, after, limit, max_bytes)
                .await
                .map_err(|e| self.failed(e))
        };
        let Some(replica) = &self.replica else {
            return primary(after, limit, max_bytes).await;
        };
        let Some(mut page) = replica.page(process, after, limit, max_bytes).await else {
            return primary(after, limit, max_bytes).await;
        };
        let reached = page.last().map_or(after, |message| message.seq);
        if page.len() >= limit || reached >= known {
            crate::metrics::replica_read(ReplicaRead::Replica);
            return Ok(page);
        }
        crate::metrics::replica_read(ReplicaRead::Completed);
        let mut bytes: usize = page.iter().map(|message| message.json.len()).sum();
        let rest = primary(reached, limit - page.len(), max_bytes.saturating_sub(bytes)).await?;
        // The primary's page always holds its first message; past the replica's
        // messages, the byte bound holds for the whole page.
        for message in rest {
            bytes += message.json.len();
            if !page.is_empty() && bytes > max_bytes {
                break;
            }
            page.push(message);
        }
        Ok(page)
    }

    /// One query's rows, read as the sink takes them (`sql::STREAM_AFTER`): from the
    /// replica when there is one, then, if it ended short of `known` (it lags) or
    /// failed, the rest from the primary after the last message taken. Counted as
    /// replica reads: `replica` for the replica's part, then `completed` for the
    /// primary's, or `fallback` when the replica rests or failed.
    async fn stream_after(
        &self,
        process: &ProcessId,
        after: u64,
        known: u64,
        upto: u64,
        _page: usize,
        sink: &MessageSink,
    ) -> Result<bool, StoreError> {
        let (mut from, known) = (after, known.min(upto));
        if let Some(replica) = &self.replica {
            match replica.stream(process, (after, upto), sink).await {
                Some(Streamed {
                    outcome: StreamOutcome::Stopped,
                    ..
                }) => return Ok(false),
                Some(Streamed {
                    outcome: StreamOutcome::Ended,
                    last,
                }) => {
                    if last > after || last >= known {
                        crate::metrics::replica_read(ReplicaRead::Replica);
                    }
                    if last >= known {
                        return Ok(true);
                    }
                    crate::metrics::replica_read(ReplicaRead::Completed);
                    from = last;
                }
                // Counted by the replica; what it sent is taken.
                Some(Streamed { last, .. }) => from = last,
                None => {}
            }
        }
        match stream_rows(&self.pool, process, (from, upto), sink, None)
            .await
            .outcome
        {
            StreamOutcome::Ended => Ok(true),
            StreamOutcome::Stopped => Ok(false),
            StreamOutcome::Failed(error) => Err(match error.downcast::<sqlx::Error>() {
                Ok(error) => self.failed(error),
                Err(error) => StoreError::Unavailable(error),
            }),
        }
    }

    async fn recent(
        &self,
        limit: usize,
        only: Option<&[ProcessId]>,
    ) -> Result<Vec<RecentProcess>, StoreError> {
        let only: Option<Vec<&str>> = only.map(|ids| ids.iter().map(ProcessId::as_str).collect());
        let rows = sqlx::query(sql::RECENT)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(only)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        rows.iter()
            .map(|row| {
                Ok(RecentProcess {
                    info: process_info(row)?,
                    last_activity: row.try_get("updated_at").map_err(unavailable)?,
                })
            })
            .collect()
    }

    fn elects_a_republisher(&self) -> bool {
        true
    }

    async fn changed_if_republisher(
        &self,
        within: Duration,
        limit: usize,
    ) -> Result<Option<Vec<ProcessInfo>>, StoreError> {
        let mut lease = self.lease.lock().await;
        let lease = &mut *lease;
        if !lease.held {
            let now = std::time::Instant::now();
            if lease.next_try.is_some_and(|at| now < at) {
                return Ok(None);
            }
            lease.next_try = Some(now + LEASE_RETRY);
            if lease.connection.is_none() {
                let options = self.pool.connect_options();
                let connection = sqlx::PgConnection::connect_with(&options)
                    .await
                    .map_err(unavailable)?;
                lease.connection = Some(connection);
            }
            let Some(connection) = lease.connection.as_mut() else {
                return Ok(None);
            };
            let taken = sqlx::query_scalar::<_, bool>(sql::TAKE_REPUBLISHER_LEASE)
                .bind(sql::REPUBLISHER_LEASE)
                .fetch_one(connection)
                .await;
            match taken {
                Ok(true) => {
                    tracing::info!(
                        "this instance republishes what the live feed missed (it holds \
                        the republisher lease)"
                    );
                    lease.held = true;
                }
                Ok(false) => return Ok(None),
                Err(error) => {
                    lease.connection = None;
                    return Err(unavailable(error));
                }
            }
        }
        let Some(connection) = lease.connection.as_mut() else {
            lease.held = false;
            return Ok(None);
        };
        let rows = sqlx::query(sql::CHANGED_PROCESSES)
            .bind(within.as_secs_f64())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(connection);
        let error = match tokio::time::timeout(LEASE_QUERY_TIMEOUT, rows).await {
            Ok(Ok(rows)) => {
                return rows
                    .iter()
                    .map(process_info)
                    .collect::<Result<_, _>>()
                    .map(Some)
            }
            Ok(Err(error)) => StoreError::Unavailable(error.into()),
            Err(_) => StoreError::Unavailable(anyhow::anyhow!(
                "the republisher's query took over {LEASE_QUERY_TIMEOUT:?}"
            )),
        };
        // The lease goes with its connection: another instance takes it.
        tracing::info!("this instance gave up the republisher lease with its connection");
        lease.connection = None;
        lease.held = false;
        Err(error)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(sql::PING)
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    fn record_metrics(&self) {
        let (size, idle) = (self.pool.size(), self.pool.num_idle());
        let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
        crate::metrics::postgres_pool(size - idle, idle, self.pool.options().get_max_connections());
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}
