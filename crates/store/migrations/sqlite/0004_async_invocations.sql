-- Asynchronous invocations: accepted events, their attempts and outcomes. Rows stay after
-- they finish (for the status API and the dead-letter queue) until their retention ends.
-- The implicit rowid orders events by arrival.
CREATE TABLE async_invocations (
    id                 TEXT    NOT NULL PRIMARY KEY,
    function           TEXT    NOT NULL,  -- the target: name or name:qualifier
    payload            BLOB    NOT NULL,
    status             TEXT    NOT NULL,  -- queued|running|retrying|succeeded|failed|expired|dead_lettered
    attempts           INTEGER NOT NULL,  -- attempts started
    function_errors    INTEGER NOT NULL,  -- attempts the function failed (count towards max_retries)
    enqueued_at_ms     INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    idempotency_key    TEXT,
    result             BLOB,              -- the last attempt's result (success) or error (JSON)
    version            TEXT              -- the version the last attempt ran
);
-- Waiting invocations per target in arrival order: the dispatcher walks this index and
-- stops at its limit, instead of sorting every waiting row on each round.
CREATE INDEX async_waiting ON async_invocations (function, enqueued_at_ms)
    WHERE status IN ('queued', 'retrying');
CREATE UNIQUE INDEX async_idempotency ON async_invocations (function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
