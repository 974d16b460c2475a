-- Function metadata shared by every node: functions, versions, aliases, keys, builds and
-- timers' progress, as the embedded backend's migrations 0001-0008 keep them. Specs stay
-- JSON text (compared as text, as on SQLite: an identical redeploy changes nothing);
-- times are Unix milliseconds.
CREATE TABLE functions (
    namespace     TEXT   NOT NULL DEFAULT 'default',
    name          TEXT   NOT NULL,
    spec          TEXT   NOT NULL,
    revision      BIGINT NOT NULL,
    last_version  BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);

CREATE TABLE invoke_keys (
    id            TEXT   NOT NULL PRIMARY KEY,
    name          TEXT   NOT NULL,
    sha256        TEXT   NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE versions (
    namespace     TEXT   NOT NULL DEFAULT 'default',
    function      TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    spec          TEXT   NOT NULL,
    description   TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, function, version)
);

CREATE TABLE aliases (
    namespace     TEXT   NOT NULL DEFAULT 'default',
    function      TEXT   NOT NULL,
    name          TEXT   NOT NULL,
    config        TEXT   NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, function, name)
);

-- A running build is claimed by a node until its lease ends.
CREATE TABLE builds (
    key            TEXT   NOT NULL PRIMARY KEY,
    state          TEXT   NOT NULL CHECK (state IN ('running', 'done')),
    deps_sha256    TEXT,
    node           TEXT   NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    started_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT,
    duration_ms    BIGINT
);

-- The partial unique index lets nodes starting together race to make the admin's key.
CREATE TABLE aws_keys (
    access_key_id TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    secret        TEXT    NOT NULL,
    scope         TEXT    NOT NULL CHECK (scope IN ('admin', 'invoke')),
    builtin       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_ms BIGINT  NOT NULL
);
CREATE UNIQUE INDEX aws_keys_one_builtin ON aws_keys (builtin) WHERE builtin;

CREATE TABLE timer_state (
    function          TEXT    NOT NULL,
    timer             TEXT    NOT NULL,
    paused            BOOLEAN NOT NULL DEFAULT FALSE,
    last_scheduled_ms BIGINT,
    last_fire_ms      BIGINT,
    last_request_id   TEXT,
    last_error        TEXT,
    skipped           BIGINT  NOT NULL DEFAULT 0,
    updated_at_ms     BIGINT  NOT NULL,
    PRIMARY KEY (function, timer)
);
