-- Bucket events waiting for delivery (the outbox): each row is written in the transaction
-- of the object change it tells of, so a committed change always has its event, and is
-- deleted once every matching rule's asynchronous invocation is queued. `seq` orders
-- the changes and is the records' `sequencer`. `node` is the node that committed it: that
-- node delivers it at once; any node delivers rows of a node that has not for a while.
CREATE TABLE object_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket     TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    event      TEXT    NOT NULL,  -- ObjectCreated:Put, ObjectRemoved:Delete, ...
    size_bytes INTEGER,
    etag       TEXT,
    at_ms      INTEGER NOT NULL,
    node       TEXT    NOT NULL,
    lineage    INTEGER NOT NULL DEFAULT 0  -- hops of the writer's call chain
);

-- The chain of calls an asynchronous invocation continues (a bucket event's function that
-- writes to a bucket): its attempts carry it on, and a chain past 16 hops is stopped.
ALTER TABLE async_invocations ADD COLUMN lineage INTEGER NOT NULL DEFAULT 0;

-- Rules set the AWS way (PutBucketNotificationConfiguration): the bucket's Lambda
-- function configurations as JSON, read whole by the object trigger.
CREATE TABLE bucket_notifications (
    bucket TEXT NOT NULL PRIMARY KEY REFERENCES buckets (name) ON DELETE CASCADE,
    rules  TEXT NOT NULL
);
