-- The audit trail in a SQLite file (the embedded default): the same rows and
-- names as the Postgres schema; times are microseconds since the Unix epoch, and
-- retention deletes rows (SQLite has no partitions).
CREATE TABLE audit_names (
    id   INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    UNIQUE (kind, name)
);

CREATE TABLE audit_calls (
    at_us             INTEGER NOT NULL,
    instance_id       INTEGER NOT NULL,
    seq               INTEGER NOT NULL,
    request_id        TEXT    NOT NULL,
    tenant_id         INTEGER,
    key_id            INTEGER,
    end_user          TEXT,
    route_id          INTEGER NOT NULL,
    alias_id          INTEGER,
    target_id         INTEGER,
    attempts          TEXT    NOT NULL,
    cache_id          INTEGER,
    local_fallback    INTEGER NOT NULL,
    stream            INTEGER NOT NULL,
    status            INTEGER NOT NULL,
    outcome_id        INTEGER NOT NULL,
    error_id          INTEGER,
    latency_us        INTEGER NOT NULL,
    ttft_us           INTEGER,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    cost              REAL,
    pii               TEXT    NOT NULL,
    prompt            TEXT,
    answer            TEXT,
    passages          TEXT    NOT NULL,
    client_ip         TEXT,
    user_agent        TEXT,
    prev_hash         BLOB    NOT NULL,
    row_hash          BLOB    NOT NULL
);

CREATE INDEX audit_calls_at ON audit_calls (at_us);
CREATE INDEX audit_calls_tenant_at ON audit_calls (tenant_id, at_us);
CREATE INDEX audit_calls_request ON audit_calls (request_id);
CREATE INDEX audit_calls_chain ON audit_calls (instance_id, seq);

CREATE TABLE audit_chain_heads (
    instance_id  INTEGER PRIMARY KEY,
    seq          INTEGER NOT NULL,
    row_hash     BLOB    NOT NULL,
    spool_file   INTEGER NOT NULL,
    spool_offset INTEGER NOT NULL,
    -- Seconds since the Unix epoch.
    updated_at   INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
);
