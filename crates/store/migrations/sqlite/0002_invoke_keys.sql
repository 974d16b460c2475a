-- Invoke keys for HTTP routes with `auth: key`. Only the sha256 of a key is stored; the key
-- itself is shown once, when it is created.
CREATE TABLE invoke_keys (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    sha256        TEXT    NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
) STRICT;
