-- When each process last changed (registered, appended to or finished), so the viewer can
-- list the processes last active without scanning the messages. Appends and finishes set
-- it; existing rows take their last message's time, their finish or their creation.
ALTER TABLE processes ADD COLUMN updated_at timestamptz;

UPDATE processes AS p SET updated_at = greatest(
    p.created_at,
    p.finished_at,
    (SELECT (m.body::json ->> 'created_at')::timestamptz FROM messages AS m
     WHERE m.process_id = p.process_id ORDER BY m.seq DESC LIMIT 1)
);

ALTER TABLE processes
    ALTER COLUMN updated_at SET DEFAULT clock_timestamp(),
    ALTER COLUMN updated_at SET NOT NULL;

CREATE INDEX processes_recent_activity ON processes (updated_at DESC, process_id);
