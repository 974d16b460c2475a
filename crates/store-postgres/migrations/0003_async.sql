-- Asynchronous invocations (see the embedded backend's migrations 0004, 0005, 0015):
-- accepted events, their attempts and outcomes, and the lease of the node running one.
-- `seq` orders events by arrival (SQLite's rowid there).
CREATE TABLE async_invocations (
    seq                BIGSERIAL NOT NULL,
    id                 TEXT   NOT NULL PRIMARY KEY,
    function           TEXT   NOT NULL,
    payload            BYTEA  NOT NULL,
    status             TEXT   NOT NULL,
    attempts           BIGINT NOT NULL,
    function_errors    BIGINT NOT NULL,
    enqueued_at_ms     BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    idempotency_key    TEXT,
    result             BYTEA,
    version            TEXT,
    traceparent        TEXT,
    source             TEXT,
    lineage            BIGINT NOT NULL DEFAULT 0,
    owner              TEXT,
    lease_until_ms     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX async_waiting ON async_invocations (function, enqueued_at_ms, seq)
    WHERE status IN ('queued', 'retrying');
CREATE UNIQUE INDEX async_idempotency ON async_invocations (function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX async_running ON async_invocations (lease_until_ms) WHERE status = 'running';
CREATE INDEX async_by_status ON async_invocations (status, seq);
