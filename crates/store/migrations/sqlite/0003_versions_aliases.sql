-- Published versions: immutable snapshots of a function's spec (code hash + full config).
CREATE TABLE versions (
    namespace     TEXT    NOT NULL DEFAULT 'default',
    function      TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    spec          TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (namespace, function, version)
) STRICT;
-- The last version number a function gave out: numbers of deleted versions are never
-- given out again while the function exists.
ALTER TABLE functions ADD COLUMN last_version INTEGER NOT NULL DEFAULT 0;
-- Aliases: a name pointing at a version, with an optional canary; `config` is the JSON
-- model::Alias.
CREATE TABLE aliases (
    namespace     TEXT    NOT NULL DEFAULT 'default',
    function      TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    config        TEXT    NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (namespace, function, name)
) STRICT;
