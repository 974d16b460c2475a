-- The nodes sharing this store (one, on the embedded backend) and singleton leases. A node
-- heartbeats its row; one not seen for a bound is dead to the others. A lease is held by one
-- node until a time; `epoch` grows with each change of holder (the fencing token), so the
-- row stays when its holder lets go.
CREATE TABLE nodes (
    id            TEXT    NOT NULL PRIMARY KEY,
    address       TEXT    NOT NULL,
    started_at_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE leases (
    name     TEXT    NOT NULL PRIMARY KEY,
    holder   TEXT,
    epoch    INTEGER NOT NULL,
    until_ms INTEGER NOT NULL
) STRICT;
