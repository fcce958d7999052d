//! Every SQL statement agent-stream runs, named. The schema is in `migrations/`. Public
//! for the tests that hold the statements to the plans they were written for.

/// Registers a process; returns the row only when it was created.
pub const REGISTER: &str = "\
    INSERT INTO processes (process_id) VALUES ($1) \
    ON CONFLICT (process_id) DO NOTHING \
    RETURNING process_id, status, last_seq, created_at, finished_at";

/// One process by id.
pub const SELECT_PROCESS: &str = "\
    SELECT process_id, status, last_seq, created_at, finished_at \
    FROM processes WHERE process_id = $1";

/// An append in one round trip: `append_messages_v2` (defined in `migrations/`) locks the
/// process row, plans seqs as `AppendOutcome::plan` does, completes and inserts the new
/// messages (adr/0005; adr/0020 for this form: the usual case writes the process row once
/// and inserts with ON CONFLICT instead of probing each id first). In: process id,
/// message ids, wire JSON heads. Out, one row: the process's status, the new messages'
/// created_at text, and either `first` (every message new, seqs `first`, `first + 1`, …
/// in order) or, per message in order, `seqs` and `created`.
pub const APPEND: &str =
    "SELECT status, stamp, first, seqs, created FROM append_messages_v2($1, $2, $3)";

/// Finishes a running process; returns nothing when it is unknown or already finished.
pub const FINISH: &str = "\
    UPDATE processes SET status = $2, finished_at = clock.t, updated_at = clock.t \
    FROM (SELECT clock_timestamp() AS t) AS clock \
    WHERE process_id = $1 AND status = 'running' \
    RETURNING process_id, status, last_seq, created_at, finished_at";

/// A page of a process's messages after a seq, the keyset read of catch-up: at most
/// `$3` rows, and past the first, at most `$4` bytes of JSON. The byte count runs over
/// the `$3` rows only, so a page never scans more of the history than its rows.
pub const READ_AFTER: &str = "\
    SELECT seq, body FROM ( \
        SELECT seq, body, sum(octet_length(body)) OVER (ORDER BY seq) AS upto FROM ( \
            SELECT seq, body FROM messages \
            WHERE process_id = $1 AND seq > $2 ORDER BY seq LIMIT $3 \
        ) AS page \
    ) AS sized \
    WHERE upto <= $4 OR upto = octet_length(body) \
    ORDER BY seq";

/// A process's messages after a seq, up to `$3`, in seq order: the one query of a
/// catch-up stream, read as its follower or snapshot takes the rows
/// (`PostgresStore::stream_after`). The same keyset as [`READ_AFTER`], without its limit
/// and its byte count: the stream's memory is bounded by reading the rows only as they
/// are taken. (`$3` stops a snapshot's stream at its last message, so that it ends, and
/// its connection goes back to the pool, instead of being closed halfway.)
pub const STREAM_AFTER: &str = "\
    SELECT seq, body FROM messages WHERE process_id = $1 AND seq > $2 AND seq <= $3 \
    ORDER BY seq";

/// The processes last active, the most recent first: the keyset of
/// `processes_recent_activity` (by `updated_second`, the second of `updated_at`), sorted
/// by `updated_at` within each second as it is read, so a page reads about `$1` index
/// entries whatever the table's size. `$2`, when not null, limits it to those process
/// ids (a token's).
pub const RECENT: &str = "\
    SELECT process_id, status, last_seq, created_at, finished_at, updated_at \
    FROM processes WHERE $2::text[] IS NULL OR process_id = ANY ($2) \
    ORDER BY updated_second DESC, updated_at DESC, process_id LIMIT $1";

/// The processes appended to or finished in the last `$1` seconds, the most recent
/// first, at most `$2`, for the republisher: a range of `processes_recent_activity`. The
/// window is measured from the statement's start (`statement_timestamp()`, stable within
/// the statement: `clock_timestamp()` is volatile, and a condition on it cannot use the
/// index, so every sweep read every row of `processes`).
pub const CHANGED_PROCESSES: &str = "\
    SELECT process_id, status, last_seq, created_at, finished_at FROM processes \
    WHERE updated_second >= \
            date_trunc('second', (statement_timestamp() - make_interval(secs => $1)) AT TIME ZONE 'UTC') \
        AND updated_at > statement_timestamp() - make_interval(secs => $1) \
    ORDER BY updated_second DESC, updated_at DESC, process_id LIMIT $2";

/// Takes the republisher lease, `$1` = [`REPUBLISHER_LEASE`], if no other session holds
/// it: a session-level advisory lock, released when its connection closes.
pub const TAKE_REPUBLISHER_LEASE: &str = "SELECT pg_try_advisory_lock($1)";

/// The advisory lock key of the republisher lease ("agstream" in ASCII). Advisory locks
/// are per database, so deployments on other databases each have their own.
pub const REPUBLISHER_LEASE: i64 = 0x6167_7374_7265_616d;

/// The database's epoch (one row, made by the migrations; adr/0007).
pub const EPOCH: &str = "SELECT epoch FROM store_epoch";

pub const PING: &str = "SELECT 1";
