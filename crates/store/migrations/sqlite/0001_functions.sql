-- Functions: one row per function; the spec is the complete, validated JSON FunctionSpec.
CREATE TABLE functions (
    namespace     TEXT    NOT NULL DEFAULT 'default',
    name          TEXT    NOT NULL,
    spec          TEXT    NOT NULL,
    revision      INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
) STRICT;
