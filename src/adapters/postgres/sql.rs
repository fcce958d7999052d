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

/// An append in one round trip: `append_messages` (defined in `migrations/`) locks the
/// process row, plans seqs as `AppendOutcome::plan` does, completes and inserts the new
/// messages. In: process id, message ids, wire JSON heads. Out, per message in order:
/// seq, created, and the process's status and the new messages' created_at text.
pub const APPEND: &str = "SELECT seq, created, status, stamp FROM append_messages($1, $2, $3)";

/// Finishes a running process; returns nothing when it is unknown or already finished.
pub const FINISH: &str = "\
    UPDATE processes SET status = $2, finished_at = clock_timestamp() \
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

pub const PING: &str = "SELECT 1";
