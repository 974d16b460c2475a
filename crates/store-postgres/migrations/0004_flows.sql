-- Workflows (see the embedded backend's migrations 0012 and 0013): flows and every
-- revision of their definitions, executions (summary columns and the engine's snapshot),
-- their histories, and `flow_work`, the outbox of effects that nodes claim with a lease.
--
-- Names, ids and keys compare as bytes (`COLLATE "C"`), as SQLite compares text: lists come
-- out in the same order on both backends whatever collation the database was created with.
CREATE TABLE flows (
    name          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    revision      BIGINT NOT NULL,
    description   TEXT   NOT NULL DEFAULT '',
    -- The flow's triggers, not a revision's: changing them changes no running execution.
    triggers      TEXT   NOT NULL DEFAULT '[]',
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- Kept while the flow or an execution uses them, and after the flow is deleted, so a flow
-- made again continues its revision numbers.
CREATE TABLE flow_revisions (
    flow       TEXT COLLATE "C" NOT NULL,
    revision   BIGINT NOT NULL,
    definition TEXT   NOT NULL,
    PRIMARY KEY (flow, revision)
);

-- `name` is the idempotency key of a start.
CREATE TABLE flow_executions (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    flow          TEXT COLLATE "C" NOT NULL,
    revision      BIGINT NOT NULL,
    name          TEXT COLLATE "C" NOT NULL,
    status        TEXT   NOT NULL,
    input         TEXT   NOT NULL,
    output        TEXT,
    error         TEXT,
    cause         TEXT,
    started_at_ms BIGINT NOT NULL,
    stopped_at_ms BIGINT,
    transitions   BIGINT NOT NULL DEFAULT 0,
    snapshot      TEXT   NOT NULL,
    UNIQUE (flow, name)
);
CREATE INDEX flow_executions_by_status ON flow_executions (flow, status, started_at_ms);
CREATE INDEX flow_executions_stopped ON flow_executions (stopped_at_ms)
    WHERE stopped_at_ms IS NOT NULL;

CREATE TABLE flow_history (
    execution TEXT COLLATE "C" NOT NULL,
    id        BIGINT NOT NULL,
    event     TEXT   NOT NULL,
    PRIMARY KEY (execution, id)
);

-- A row is written in the transaction of the step that made the effect and deleted in the
-- transaction of the step that consumes its answer, so an answer is applied once. `owner`
-- and `lease_until_ms` are a node's claim; an expired claim is anyone's again.
CREATE TABLE flow_work (
    execution      TEXT COLLATE "C" NOT NULL,
    key            TEXT COLLATE "C" NOT NULL,
    kind           TEXT   NOT NULL,
    due_ms         BIGINT NOT NULL,
    body           TEXT   NOT NULL,
    owner          TEXT,
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (execution, key)
);
CREATE INDEX flow_work_due ON flow_work (due_ms);
