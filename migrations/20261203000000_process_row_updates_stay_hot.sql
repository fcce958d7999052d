-- An append's UPDATE of its process row stays a HOT update (issue 12, adr/0023): it
-- writes no index entry and leaves none dead behind it.
--
-- PostgreSQL updates a row "heap-only" (HOT) only when no indexed column changes and
-- the row's page has room for the new version. Every append moves `updated_at`, which
-- `processes_recent_activity` indexed, so each append wrote an entry into that index and
-- one into `processes_pkey`, and left two dead ones: under a steady stream of appends
-- both indexes bloated and each append's lookup of its row slowed down.
--
-- The index now holds `updated_second`, `updated_at` cut to the second, which PostgreSQL
-- computes on every write of the row: an append changes it at most once a second per
-- process, so the others are HOT. `updated_at` keeps its full precision (it orders the
-- list and is `last_activity_at`); the queries order by `updated_second` first, which the
-- index gives, then by `updated_at` within the second (src/adapters/postgres/sql.rs).
-- A fifth of each page is left free for the new versions of its rows.
ALTER TABLE processes
    SET (fillfactor = 80),
    ADD COLUMN updated_second timestamp
        GENERATED ALWAYS AS (date_trunc('second', updated_at AT TIME ZONE 'UTC')) STORED;

DROP INDEX processes_recent_activity;
CREATE INDEX processes_recent_activity ON processes (updated_second DESC);
