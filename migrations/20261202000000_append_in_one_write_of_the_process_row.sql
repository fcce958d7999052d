-- An append costs PostgreSQL less (issue 12, adr/0020): `append_messages_v2` does what
-- `append_messages` does (20261127110000_append_in_one_round_trip.sql says what, and
-- 20261201000000_append_writes_the_process_row_once.sql how it locks), with fewer
-- statements in the usual case (a running process, every message new):
-- - one UPDATE of the process row both locks it and moves last_seq and updated_at, as
--   if every message were new; there is no SELECT … FOR UPDATE before it, whose row
--   lock was a write (and WAL) of its own;
-- - one INSERT of every message, with ON CONFLICT (process_id, id) DO NOTHING: the
--   (process_id, id) index answers whether an id is stored, with no probe per id before;
-- - it returns one row (the first seq), not a row per message through a tuplestore.
-- When the INSERT stored fewer rows than it was given (a stored id, or one repeated in
-- the batch), its rows are deleted and the general case runs as before, from the
-- last_seq read under the lock. A process that is not running (or not known yet) goes
-- the general way from the start.
--
-- `append_messages` stays, unchanged, for the instances of the previous release during
-- a rolling deploy; nothing of this release calls it.
--
-- In: the process id, the messages' ids and their wire JSON heads (`{"id":…,"payload":{…}`
-- without the closing brace), in order. Out: one row: the process's status, the
-- created_at text of the new messages and, either `first` (the usual case: every message
-- was new and took the seqs first, first + 1, … in order; `seqs` and `created` are null)
-- or, per message in order, its seq and whether this call created it (`first` is null).
CREATE FUNCTION append_messages_v2(
    p_process text, p_ids text[], p_heads text[],
    OUT status text, OUT stamp text, OUT first bigint, OUT seqs bigint[], OUT created boolean[])
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    n      bigint := cardinality(p_ids);
    v_last bigint;
    v_now  timestamptz;
    v_rows bigint;
BEGIN
    -- Locks the row until commit: concurrent appends to one process take turns, so seqs
    -- are gap-free and commit in order. An UPDATE that waited for another append's
    -- commit re-reads the row and re-evaluates its SET, so last_seq is the latest and
    -- the clock is read once the lock is held: created_at grows with seq.
    UPDATE processes AS p SET last_seq = p.last_seq + n, updated_at = clock_timestamp()
    WHERE p.process_id = p_process AND p.status = 'running'
    RETURNING p.last_seq - n, p.updated_at,
              to_char(p.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    INTO v_last, v_now, stamp;
    IF FOUND THEN
        status := 'running';
        -- Each statement below takes a new snapshot: it sees every append committed
        -- before the lock was granted.
        INSERT INTO messages (process_id, seq, id, body)
        SELECT p_process, v_last + t.i, t.id,
               t.head || ',"stream_id":"' || (v_last + t.i) || '-0","created_at":"' || stamp || '"}'
        FROM unnest(p_ids, p_heads) WITH ORDINALITY AS t (id, head, i)
        ON CONFLICT (process_id, id) DO NOTHING;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows = n THEN
            first := v_last + 1;
            RETURN;
        END IF;
        -- A stored or repeated id: the seqs above are not the ones to give. Undone here
        -- (the rows are this transaction's own), then planned by the general case.
        DELETE FROM messages AS m WHERE m.process_id = p_process AND m.seq > v_last;
    ELSE
        -- Not running, or not known yet: lock it, registering it if new (another append
        -- may register it first: then this waits for its lock).
        SELECT p.status, p.last_seq, clock_timestamp() INTO status, v_last, v_now
        FROM processes AS p WHERE p.process_id = p_process FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO processes AS p (process_id) VALUES (p_process)
            ON CONFLICT (process_id) DO UPDATE SET last_seq = p.last_seq
            RETURNING p.status, p.last_seq, clock_timestamp() INTO status, v_last, v_now;
        END IF;
        stamp := to_char(v_now AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
    END IF;
    SELECT g.seqs, g.created INTO seqs, created
    FROM append_messages_v2_general(p_process, p_ids, p_heads, status, v_last, v_now, stamp) AS g;
END
$$;

-- The general case of `append_messages_v2`, with the process row locked by its caller
-- (`p_last` its last_seq then): retried ids keep their seq, repeated ones are stored
-- once, each new one takes the next seq, and last_seq and updated_at are set (a
-- process that is not running stores nothing and is not written). Out, per message in
-- order: its seq and whether this call created it.
CREATE FUNCTION append_messages_v2_general(
    p_process text, p_ids text[], p_heads text[],
    p_status text, p_last bigint, p_now timestamptz, p_stamp text,
    OUT seqs bigint[], OUT created boolean[])
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    WITH input AS (
        SELECT t.i, t.id, t.head
        FROM unnest(p_ids, p_heads) WITH ORDINALITY AS t (id, head, i)
    ), stored AS (
        -- Each id probed by both columns of the (process_id, id) index (adr/0005).
        SELECT DISTINCT m.id, m.seq FROM unnest(p_ids) AS x (id)
        JOIN messages m ON m.process_id = p_process AND m.id = x.id
    ), fresh AS (
        SELECT f.id, f.i, f.head, p_last + row_number() OVER (ORDER BY f.i) AS seq
        FROM (
            SELECT DISTINCT ON (input.id) input.id, input.i, input.head FROM input
            WHERE NOT EXISTS (SELECT 1 FROM stored WHERE stored.id = input.id)
            ORDER BY input.id, input.i
        ) AS f
    ), inserted AS (
        INSERT INTO messages (process_id, seq, id, body)
        SELECT p_process, fresh.seq, fresh.id,
               fresh.head || ',"stream_id":"' || fresh.seq || '-0","created_at":"' || p_stamp || '"}'
        FROM fresh WHERE p_status = 'running'
        RETURNING messages.seq
    ), moved AS (
        -- Also when nothing is new: the caller's UPDATE may have moved last_seq already.
        UPDATE processes
        SET last_seq = coalesce((SELECT max(inserted.seq) FROM inserted), p_last), updated_at = p_now
        WHERE process_id = p_process AND p_status = 'running'
    )
    SELECT array_agg(coalesce(stored.seq, fresh.seq) ORDER BY input.i),
           array_agg(coalesce(fresh.i = input.i, false) ORDER BY input.i)
    INTO seqs, created
    FROM input
    LEFT JOIN stored ON stored.id = input.id
    LEFT JOIN fresh ON fresh.id = input.id;
END
$$;

-- The general case is planned once per connection and reused (adr/0005: re-planning
-- its CTE per call cost more than running it). The usual case's two statements are
-- left to PostgreSQL, which settles on their generic plans: a function-wide setting
-- would cost every call a save and restore of it.
ALTER FUNCTION append_messages_v2_general(text, text[], text[], text, bigint, timestamptz, text)
    SET plan_cache_mode = force_generic_plan;

-- Every message is inserted by an append, which holds the lock on its process's row
-- (made first if new) until it commits, and no process row is ever deleted: the
-- foreign key checked again, per message, what the append already made sure of, with
-- a trigger and a query of `processes` for each row inserted.
ALTER TABLE messages DROP CONSTRAINT messages_process_id_fkey;
