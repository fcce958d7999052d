-- One row per process: its status and the last seq it handed out. Appends lock this row
-- for their transaction, which is what makes seqs gap-free and in commit order.
CREATE TABLE processes (
    process_id  text        PRIMARY KEY,
    status      text        NOT NULL DEFAULT 'running',
    last_seq    bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);

-- One row per message. `body` is the wire JSON, rendered once at append time (with its
-- stream_id and created_at), so reads send stored bytes and never re-serialise.
CREATE TABLE messages (
    process_id text   NOT NULL REFERENCES processes (process_id),
    seq        bigint NOT NULL,
    id         text   NOT NULL,
    body       text   NOT NULL,
    PRIMARY KEY (process_id, seq),
    UNIQUE (process_id, id)
);
