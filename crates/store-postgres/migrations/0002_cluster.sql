-- The nodes sharing this database and singleton leases (see the embedded backend's
-- migration 0014): a node heartbeats its row; a lease's `epoch` grows with each change of
-- holder, the fencing token of the holder's writes.
CREATE TABLE nodes (
    id            TEXT   NOT NULL PRIMARY KEY,
    address       TEXT   NOT NULL,
    started_at_ms BIGINT NOT NULL,
    last_seen_ms  BIGINT NOT NULL
);

CREATE TABLE leases (
    name     TEXT   NOT NULL PRIMARY KEY,
    holder   TEXT,
    epoch    BIGINT NOT NULL,
    until_ms BIGINT NOT NULL
);
