-- Telemetry lives in its own database file: its steady stream of batched writes never
-- waits on the metadata and queue database's write lock, nor the other way round.

-- One row per finished (or throttled) call, sync or async attempt.
CREATE TABLE invocation_records (
    seq             INTEGER PRIMARY KEY,
    request_id      TEXT    NOT NULL,
    function        TEXT    NOT NULL,
    version         TEXT    NOT NULL,
    trigger         TEXT    NOT NULL,
    attempt         INTEGER NOT NULL,
    started_at_ms   INTEGER NOT NULL,
    queue_ms        REAL    NOT NULL,
    init_ms         REAL    NOT NULL,
    handler_ms      REAL    NOT NULL,
    duration_ms     REAL    NOT NULL,
    cold            INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    error_type      TEXT,
    billed_ms       INTEGER NOT NULL,
    memory_mb       INTEGER NOT NULL,
    instance_id     INTEGER NOT NULL,
    -- Log-scale bucket of handler_ms (5% wide), so percentiles come out of GROUP BY.
    duration_bucket INTEGER NOT NULL
);
CREATE INDEX records_by_function ON invocation_records (function, started_at_ms);
CREATE INDEX records_by_request ON invocation_records (request_id);
CREATE INDEX records_by_time ON invocation_records (started_at_ms);

CREATE TABLE log_lines (
    seq         INTEGER PRIMARY KEY,
    time_ms     INTEGER NOT NULL,
    function    TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    instance_id INTEGER NOT NULL,
    severity    INTEGER NOT NULL,
    level       TEXT    NOT NULL,
    message     TEXT    NOT NULL
);
CREATE INDEX logs_by_function ON log_lines (function, seq);
CREATE INDEX logs_by_request ON log_lines (request_id);
CREATE INDEX logs_by_time ON log_lines (time_ms);

-- Bytes of stored log messages per function, and lines dropped to keep under the cap.
CREATE TABLE log_accounts (
    function      TEXT PRIMARY KEY,
    bytes         INTEGER NOT NULL,
    dropped_lines INTEGER NOT NULL
);

CREATE TABLE lifecycle_events (
    seq         INTEGER PRIMARY KEY,
    time_ms     INTEGER NOT NULL,
    function    TEXT    NOT NULL,
    instance_id INTEGER NOT NULL,
    event       TEXT    NOT NULL,
    reason      TEXT    NOT NULL
);
CREATE INDEX events_by_function ON lifecycle_events (function, seq);
CREATE INDEX events_by_time ON lifecycle_events (time_ms);

-- Per function and minute: the most instances seen, and provisioned (min_instances) time.
CREATE TABLE instance_minutes (
    function                TEXT    NOT NULL,
    minute_ms               INTEGER NOT NULL,
    instances_max           INTEGER NOT NULL,
    provisioned_instance_ms INTEGER NOT NULL,
    provisioned_mb_ms       INTEGER NOT NULL,
    PRIMARY KEY (function, minute_ms)
);
CREATE INDEX minutes_by_time ON instance_minutes (minute_ms);
