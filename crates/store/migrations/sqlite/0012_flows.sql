-- Workflows. A flow is a named Amazon States Language definition; every change of it is a
-- new revision, kept while executions may run it (an execution runs the revision it
-- started with, as on Step Functions).
CREATE TABLE flows (
    name          TEXT    NOT NULL PRIMARY KEY,
    revision      INTEGER NOT NULL,
    description   TEXT    NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE flow_revisions (
    flow       TEXT    NOT NULL,
    revision   INTEGER NOT NULL,
    definition TEXT    NOT NULL,
    PRIMARY KEY (flow, revision)
) WITHOUT ROWID;

-- An execution: its summary columns (what lists and describes read) and the engine's
-- snapshot (JSON), rewritten by every step. `name` is the idempotency key of a start.
CREATE TABLE flow_executions (
    id            TEXT    NOT NULL PRIMARY KEY,
    flow          TEXT    NOT NULL,
    revision      INTEGER NOT NULL,
    name          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    input         TEXT    NOT NULL,
    output        TEXT,
    error         TEXT,
    cause         TEXT,
    started_at_ms INTEGER NOT NULL,
    stopped_at_ms INTEGER,
    transitions   INTEGER NOT NULL DEFAULT 0,
    snapshot      TEXT    NOT NULL,
    UNIQUE (flow, name)
);
CREATE INDEX flow_executions_by_status ON flow_executions (flow, status, started_at_ms);
CREATE INDEX flow_executions_stopped ON flow_executions (stopped_at_ms) WHERE stopped_at_ms IS NOT NULL;

-- Each execution's history, in Step Functions' shape (JSON per event).
CREATE TABLE flow_history (
    execution TEXT    NOT NULL,
    id        INTEGER NOT NULL,
    event     TEXT    NOT NULL,
    PRIMARY KEY (execution, id)
) WITHOUT ROWID;

-- The outbox: the effects of committed steps still to be carried out — function calls
-- (`invoke`) and timers (`timer`: waits, retry delays, timeouts) — each due at `due_ms`. A
-- row is written in the transaction of the step that made it and deleted in the
-- transaction of the step that consumes its answer, so an answer is applied once. `owner`
-- and `lease_until_ms` are a node's claim; an expired claim is anyone's again.
CREATE TABLE flow_work (
    execution      TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    due_ms         INTEGER NOT NULL,
    body           TEXT    NOT NULL,
    owner          TEXT,
    lease_until_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (execution, key)
);
CREATE INDEX flow_work_due ON flow_work (due_ms);
