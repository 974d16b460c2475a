-- Every index costs each insert: log chunks and events have none on time. Rows arrive about in
-- time order, so `seq` (the rowid) stands in for time when old rows are pruned.
--
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
CREATE INDEX records_by_time ON invocation_records (started_at_ms);

-- One row per call with all its lines (a JSON array of [time_ms, severity, level, message]):
-- a call costs one row and two index entries however much it logs. Queries unpack the
-- chunks they read; the chunk's bounds (times, highest severity) let them skip most.
CREATE TABLE log_chunks (
    seq          INTEGER PRIMARY KEY,
    function     TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    request_id   TEXT    NOT NULL,
    instance_id  INTEGER NOT NULL,
    first_ms     INTEGER NOT NULL,
    last_ms      INTEGER NOT NULL,
    max_severity INTEGER NOT NULL,
    line_count   INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    lines        TEXT    NOT NULL
);
CREATE INDEX chunks_by_function ON log_chunks (function, seq);
CREATE INDEX chunks_by_request ON log_chunks (request_id);

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
