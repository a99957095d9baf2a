-- Client keys and tenants as data, managed while the gateway runs (`/admin/keys`,
-- `/admin/tenants`, `ragway keys`). A key is kept as its SHA-256 only; revoking
-- marks the row, so key ids on audit rows keep their meaning.
--
-- Every change takes the next number from `gateway_revision` in its transaction:
-- the row lock there orders writers, so revisions become visible in order, and a
-- replica that has read up to revision N needs only rows past N.
CREATE TABLE gateway_revision (
    id       smallint PRIMARY KEY CHECK (id = 1),
    revision bigint   NOT NULL
);
INSERT INTO gateway_revision VALUES (1, 0);

-- JSON is kept as text, so that both databases take the same statements.
CREATE TABLE gateway_keys (
    id         text    PRIMARY KEY,
    sha256     bytea   NOT NULL UNIQUE,
    name       text    NOT NULL,
    tenant     text    NOT NULL,
    -- Model alias patterns the key may use (JSON array; empty: every model).
    models     text    NOT NULL,
    -- {"rpm", "tpm", "tpd", "concurrency"}, each optional.
    limits     text    NOT NULL,
    -- {"amount", "period"} or null.
    budget     text,
    metadata   text    NOT NULL,
    -- Microseconds since the Unix epoch.
    expires_us bigint,
    revoked_us bigint,
    created_us bigint  NOT NULL,
    updated_us bigint  NOT NULL,
    revision   bigint  NOT NULL
);
CREATE INDEX gateway_keys_revision ON gateway_keys (revision);
CREATE INDEX gateway_keys_tenant ON gateway_keys (tenant);

CREATE TABLE gateway_tenants (
    tenant     text   PRIMARY KEY,
    limits     text   NOT NULL,
    budget     text,
    updated_us bigint NOT NULL,
    revision   bigint NOT NULL
);
CREATE INDEX gateway_tenants_revision ON gateway_tenants (revision);
