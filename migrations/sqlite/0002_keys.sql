-- The key table in a SQLite file: the same tables and statements as on Postgres.
-- Client keys and tenants as data, managed while the gateway runs (`/admin/keys`,
-- `/admin/tenants`, `ragway keys`). A key is kept as its SHA-256 only; revoking
-- marks the row, so key ids on audit rows keep their meaning.
--
-- Every change takes the next number from `gateway_revision` in its transaction:
-- the row lock there orders writers, so revisions become visible in order, and a
-- replica that has read up to revision N needs only rows past N.
CREATE TABLE gateway_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER   NOT NULL
);
INSERT INTO gateway_revision VALUES (1, 0);

-- JSON is kept as TEXT, so that both databases take the same statements.
CREATE TABLE gateway_keys (
    id         TEXT    PRIMARY KEY,
    sha256     BLOB   NOT NULL UNIQUE,
    name       TEXT    NOT NULL,
    tenant     TEXT    NOT NULL,
    -- Model alias patterns the key may use (JSON array; empty: every model).
    models     TEXT    NOT NULL,
    -- {"rpm", "tpm", "tpd", "concurrency"}, each optional.
    limits     TEXT    NOT NULL,
    -- {"amount", "period"} or null.
    budget     TEXT,
    metadata   TEXT    NOT NULL,
    -- Microseconds since the Unix epoch.
    expires_us INTEGER,
    revoked_us INTEGER,
    created_us INTEGER  NOT NULL,
    updated_us INTEGER  NOT NULL,
    revision   INTEGER  NOT NULL
);
CREATE INDEX gateway_keys_revision ON gateway_keys (revision);
CREATE INDEX gateway_keys_tenant ON gateway_keys (tenant);

CREATE TABLE gateway_tenants (
    tenant     TEXT   PRIMARY KEY,
    limits     TEXT   NOT NULL,
    budget     TEXT,
    updated_us INTEGER NOT NULL,
    revision   INTEGER NOT NULL
);
CREATE INDEX gateway_tenants_revision ON gateway_tenants (revision);
