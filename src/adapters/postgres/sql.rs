//! Every SQL statement agent-stream runs, named. The schema is in `migrations/`.

/// Registers a process; returns the row only when it was created.
pub const REGISTER: &str = "\
    INSERT INTO processes (process_id) VALUES ($1) \
    ON CONFLICT (process_id) DO NOTHING \
    RETURNING process_id, status, last_seq, created_at, finished_at";

/// One process by id.
pub const SELECT_PROCESS: &str = "\
    SELECT process_id, status, last_seq, created_at, finished_at \
    FROM processes WHERE process_id = $1";

/// First statement of an append: registers the process if needed and locks its row
/// until commit, so concurrent appends to one process take turns and commit in seq
/// order. The clock is read after the lock is held, so `created_at` grows with `seq`.
pub const LOCK_FOR_APPEND: &str = "\
    INSERT INTO processes (process_id) VALUES ($1) \
    ON CONFLICT (process_id) DO UPDATE SET last_seq = processes.last_seq \
    RETURNING status, last_seq, clock_timestamp()";

/// Which of the given message ids the process already has, with their seqs.
pub const SELECT_EXISTING_IDS: &str = "\
    SELECT id, seq FROM messages WHERE process_id = $1 AND id = ANY($2)";

/// Inserts the new messages (parallel arrays of seq, id, body) and moves the process's
/// `last_seq` to `$5`, in one round trip.
pub const INSERT_MESSAGES: &str = "\
    WITH inserted AS ( \
        INSERT INTO messages (process_id, seq, id, body) \
        SELECT $1, seq, id, body FROM UNNEST($2::bigint[], $3::text[], $4::text[]) AS m (seq, id, body) \
    ) \
    UPDATE processes SET last_seq = $5, updated_at = clock_timestamp() WHERE process_id = $1";

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

/// The processes last active, the most recent first: the keyset of
/// `processes_recent_activity`, so a page reads `$1` index entries whatever the table's size.
pub const RECENT: &str = "\
    SELECT process_id, status, last_seq, created_at, finished_at, updated_at \
    FROM processes ORDER BY updated_at DESC, process_id LIMIT $1";

pub const PING: &str = "SELECT 1";
