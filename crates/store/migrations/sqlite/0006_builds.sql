-- Dependency builds, keyed by what they install (runtime, interpreter, dependency files):
-- a finished one names the archive it made, so an unchanged dependency set is never built
-- twice, on any node. A running one is claimed by a node until its lease ends (a node that
-- died mid-build leaves it to the next). Failed builds are not kept: the next deploy tries
-- again.
CREATE TABLE builds (
    key              TEXT    NOT NULL PRIMARY KEY,
    state            TEXT    NOT NULL CHECK (state IN ('running', 'done')),
    deps_sha256      TEXT,
    node             TEXT    NOT NULL,
    lease_until_ms   INTEGER NOT NULL,
    started_at_ms    INTEGER NOT NULL,
    finished_at_ms   INTEGER,
    duration_ms      INTEGER
) STRICT;
