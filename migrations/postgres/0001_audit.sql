-- The audit trail: one row per call, never updated.

-- Names that repeat on most rows (instances, tenants, client keys, routes, models,
-- targets, cache results, outcomes, error types) are stored once here;
-- rows carry their ids. `audit_log` below shows rows with the names put back.
CREATE TABLE audit_names (
    id   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    name text NOT NULL,
    UNIQUE (kind, name)
);

-- Range-partitioned by month: retention drops whole partitions (no DELETE, no
-- VACUUM debt). The gateway creates each month's partition before its first row.
CREATE TABLE audit_calls (
    at                timestamptz NOT NULL,
    instance_id       integer     NOT NULL,
    -- The row's place in its instance's hash chain (1, 2, 3 …).
    seq               bigint      NOT NULL,
    request_id        text        NOT NULL,
    tenant_id         integer,
    key_id            integer,
    -- The `user` field of the request (the client's end user), sanitised.
    end_user          text,
    route_id          integer     NOT NULL,
    alias_id          integer,
    -- The target that answered, `provider:model`.
    target_id         integer,
    -- Every upstream attempt: [{"target", "outcome", "http_status", "error", "latency_ms"}].
    attempts          json        NOT NULL,
    cache_id          integer,
    local_fallback    boolean     NOT NULL,
    stream            boolean     NOT NULL,
    status            smallint    NOT NULL,
    outcome_id        integer     NOT NULL,
    error_id          integer,
    latency_us        bigint      NOT NULL,
    ttft_us           bigint,
    prompt_tokens     bigint,
    completion_tokens bigint,
    cost              double precision,
    -- Personal data found, per kind: {"phone": 2}. Never a value.
    pii               json        NOT NULL,
    -- Sanitised text (placeholders only), its SHA-256, or nothing (audit.text).
    prompt            text,
    answer            text,
    -- Retrieved passages: [{"doc_id", "chunk", "score"}].
    passages          json        NOT NULL,
    client_ip         inet,
    -- Kept on the row: clients choose it, so it is not a bounded set of names.
    user_agent        text,
    prev_hash         bytea       NOT NULL,
    row_hash          bytea       NOT NULL
) PARTITION BY RANGE (at);

-- The auditor's questions: a time range (newest first), a tenant over time, one
-- request; and the chain walk of `ragway audit verify`.
CREATE INDEX audit_calls_at ON audit_calls (at);
CREATE INDEX audit_calls_tenant_at ON audit_calls (tenant_id, at);
CREATE INDEX audit_calls_request ON audit_calls (request_id);
CREATE INDEX audit_calls_chain ON audit_calls (instance_id, seq);

-- The end of each instance's chain, moved in the same transaction as the rows:
-- `audit verify` notices rows deleted from the end, and the spool position says
-- which spooled rows are already in the table.
CREATE TABLE audit_chain_heads (
    instance_id  integer PRIMARY KEY,
    seq          bigint  NOT NULL,
    row_hash     bytea   NOT NULL,
    spool_file   bigint  NOT NULL,
    spool_offset bigint  NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW audit_log AS
SELECT c.at, i.name AS instance, c.seq, c.request_id, t.name AS tenant,
       k.name AS client_key, c.end_user, r.name AS route, a.name AS alias,
       g.name AS target, split_part(g.name, ':', 2) AS upstream_model,
       c.attempts, ca.name AS cache, c.local_fallback, c.stream, c.status,
       o.name AS outcome, e.name AS error, c.latency_us / 1000.0 AS latency_ms,
       c.ttft_us / 1000.0 AS ttft_ms, c.prompt_tokens, c.completion_tokens, c.cost,
       c.pii, c.prompt, c.answer, c.passages, c.client_ip, c.user_agent,
       encode(c.prev_hash, 'hex') AS prev_hash, encode(c.row_hash, 'hex') AS row_hash
FROM audit_calls c
JOIN audit_names i ON i.id = c.instance_id
JOIN audit_names r ON r.id = c.route_id
JOIN audit_names o ON o.id = c.outcome_id
LEFT JOIN audit_names t ON t.id = c.tenant_id
LEFT JOIN audit_names k ON k.id = c.key_id
LEFT JOIN audit_names a ON a.id = c.alias_id
LEFT JOIN audit_names g ON g.id = c.target_id
LEFT JOIN audit_names ca ON ca.id = c.cache_id
LEFT JOIN audit_names e ON e.id = c.error_id;
