-- What started an asynchronous invocation when it was not a client (`timer:nightly`): its
-- attempts' records name it.
ALTER TABLE async_invocations ADD COLUMN source TEXT;

-- Each timer's progress and pause state, by function and timer name. A fire itself is
-- claimed in the queue (its idempotency key is the timer and the scheduled time), so two
-- nodes never both fire a time; this row only says how far the schedule got, so a node
-- that starts knows what it missed, and whether the timer is paused.
CREATE TABLE timer_state (
    function          TEXT    NOT NULL,
    timer             TEXT    NOT NULL,
    paused            INTEGER NOT NULL DEFAULT 0,
    last_scheduled_ms INTEGER,            -- the latest scheduled time fired (or skipped)
    last_fire_ms      INTEGER,            -- when that fire was queued
    last_request_id   TEXT,               -- its asynchronous invocation
    last_error        TEXT,               -- why the last fire could not be queued
    skipped           INTEGER NOT NULL DEFAULT 0, -- fires skipped by `overlap: skip`
    updated_at_ms     INTEGER NOT NULL,
    PRIMARY KEY (function, timer)
) STRICT;
