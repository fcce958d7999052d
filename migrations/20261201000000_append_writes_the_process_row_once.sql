-- `append_messages` does less per append (issue 12, adr/0015):
-- - it writes the process row once instead of twice: the row is locked with
--   SELECT … FOR UPDATE rather than with a no-op `ON CONFLICT DO UPDATE`, which wrote a
--   row version (and its WAL) of its own before the UPDATE of last_seq and updated_at;
-- - one new message is inserted with ON CONFLICT DO NOTHING on (process_id, id), with no
--   probe of the id before it.
-- Everything else is as in 20261127110000_append_in_one_round_trip.sql, whose comments
-- say what the function does.
CREATE OR REPLACE FUNCTION append_messages(p_process text, p_ids text[], p_heads text[])
RETURNS TABLE (seq bigint, created boolean, status text, stamp text)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_status text;
    v_last   bigint;
    v_now    timestamptz;
    v_stamp  text;
    n        bigint;
    v_usual  boolean;
    v_id     text;
BEGIN
    -- Locks the row until commit: concurrent appends to one process take turns, so seqs
    -- are gap-free and commit in order. The clock is read once the lock is held, so
    -- created_at grows with seq. A process that exists is locked with FOR UPDATE, which
    -- writes no new row version (the previous form's no-op update wrote one per append,
    -- before the real one); a new one is inserted, which locks it just as well.
    SELECT p.status, p.last_seq, clock_timestamp() INTO v_status, v_last, v_now
    FROM processes AS p WHERE p.process_id = p_process FOR UPDATE;
    IF NOT FOUND THEN
        -- Another append may register it first: then this waits for its lock.
        INSERT INTO processes AS p (process_id) VALUES (p_process)
        ON CONFLICT (process_id) DO UPDATE SET last_seq = p.last_seq
        RETURNING p.status, p.last_seq, clock_timestamp() INTO v_status, v_last, v_now;
    END IF;
    v_stamp := to_char(v_now AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');

    -- Each statement below takes a new snapshot: it sees every append committed before
    -- the lock was granted.

    -- One new message, the commonest append, in two statements: its insert asks the
    -- (process_id, id) index itself whether the id is stored, instead of a probe
    -- before it. A stored id inserts nothing and goes the general way below.
    n := cardinality(p_ids);
    IF v_status = 'running' AND n = 1 THEN
        INSERT INTO messages (process_id, seq, id, body)
        VALUES (p_process, v_last + 1, p_ids[1],
                p_heads[1] || ',"stream_id":"' || (v_last + 1) || '-0","created_at":"' || v_stamp || '"}')
        ON CONFLICT (process_id, id) DO NOTHING;
        IF FOUND THEN
            UPDATE processes SET last_seq = v_last + 1, updated_at = v_now WHERE process_id = p_process;
            RETURN QUERY SELECT v_last + 1, true, v_status, v_stamp;
            RETURN;
        END IF;
    END IF;

    -- The usual case, in two short statements: the process is running and every
    -- message is new (no id stored, none repeated in the batch).
    -- Each id is probed on its own, by both columns of the (process_id, id) index: in
    -- a generic plan, a probe for a whole array can come out as a scan of every message
    -- of the process.
    v_usual := v_status = 'running'
               AND (n = 1 OR n = (SELECT count(DISTINCT x) FROM unnest(p_ids) AS x));
    IF v_usual THEN
        FOREACH v_id IN ARRAY p_ids LOOP
            IF EXISTS (SELECT 1 FROM messages m WHERE m.process_id = p_process AND m.id = v_id) THEN
                v_usual := false;
                EXIT;
            END IF;
        END LOOP;
    END IF;
    IF v_usual THEN
        INSERT INTO messages (process_id, seq, id, body)
        SELECT p_process, v_last + t.i, t.id,
               t.head || ',"stream_id":"' || (v_last + t.i) || '-0","created_at":"' || v_stamp || '"}'
        FROM unnest(p_ids, p_heads) WITH ORDINALITY AS t (id, head, i);
        UPDATE processes SET last_seq = v_last + n, updated_at = v_now WHERE process_id = p_process;
        RETURN QUERY SELECT v_last + i, true, v_status, v_stamp FROM generate_series(1::bigint, n) AS i;
        RETURN;
    END IF;

    -- The general case: retried ids keep their seq, repeated ones are stored once.
    RETURN QUERY
    WITH input AS (
        SELECT t.i, t.id, t.head
        FROM unnest(p_ids, p_heads) WITH ORDINALITY AS t (id, head, i)
    ), stored AS (
        SELECT DISTINCT m.id, m.seq FROM unnest(p_ids) AS x (id)
        JOIN messages m ON m.process_id = p_process AND m.id = x.id
    ), fresh AS (
        SELECT f.id, f.i, f.head, v_last + row_number() OVER (ORDER BY f.i) AS seq
        FROM (
            SELECT DISTINCT ON (input.id) input.id, input.i, input.head FROM input
            WHERE NOT EXISTS (SELECT 1 FROM stored WHERE stored.id = input.id)
            ORDER BY input.id, input.i
        ) AS f
    ), inserted AS (
        INSERT INTO messages (process_id, seq, id, body)
        SELECT p_process, fresh.seq, fresh.id,
               fresh.head || ',"stream_id":"' || fresh.seq || '-0","created_at":"' || v_stamp || '"}'
        FROM fresh WHERE v_status = 'running'
        RETURNING messages.seq
    ), moved AS (
        UPDATE processes SET last_seq = (SELECT max(inserted.seq) FROM inserted), updated_at = v_now
        WHERE process_id = p_process AND EXISTS (SELECT 1 FROM inserted)
    )
    SELECT coalesce(stored.seq, fresh.seq), coalesce(fresh.i = input.i, false), v_status, v_stamp
    FROM input
    LEFT JOIN stored ON stored.id = input.id
    LEFT JOIN fresh ON fresh.id = input.id
    ORDER BY input.i;
END
$$;

-- The function's statements are planned once per connection and reused: custom plans
-- per call (PostgreSQL's default for the first calls, and whenever it guesses they pay)
-- cost more than the statements themselves.
ALTER FUNCTION append_messages(text, text[], text[]) SET plan_cache_mode = force_generic_plan;
