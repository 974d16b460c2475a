-- The object store's metadata (see the embedded backend's migrations 0009, 0010, 0011):
-- buckets, objects, multipart uploads and their parts, the bucket-event outbox, and the
-- buckets' notification rules. An object's bytes live in a file named by `blob_id`; a row
-- is committed only after its file is durable.
--
-- Names, keys and ids are COLLATE "C": S3 lists keys byte by byte in UTF-8, which is what
-- "C" compares, whatever collation the database was made with.

CREATE TABLE buckets (
    name          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_at_ms BIGINT NOT NULL,
    -- `model::bucket::Website` as JSON, NULL when it has none: a column of the bucket's
    -- row, so it goes with the bucket.
    website       TEXT
);

CREATE TABLE objects (
    bucket      TEXT COLLATE "C" NOT NULL REFERENCES buckets (name),
    key         TEXT COLLATE "C" NOT NULL,
    blob_id     TEXT   NOT NULL,
    size_bytes  BIGINT NOT NULL,
    etag        TEXT   NOT NULL,
    modified_ms BIGINT NOT NULL,
    -- `store::objects::ObjectAttrs` as JSON, read and written whole.
    attrs       TEXT   NOT NULL,
    PRIMARY KEY (bucket, key)
);

CREATE TABLE uploads (
    upload_id     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    bucket        TEXT COLLATE "C" NOT NULL REFERENCES buckets (name),
    key           TEXT COLLATE "C" NOT NULL,
    created_at_ms BIGINT NOT NULL,
    attrs         TEXT   NOT NULL
);
CREATE INDEX uploads_by_key ON uploads (bucket, key, upload_id);

CREATE TABLE upload_parts (
    upload_id   TEXT COLLATE "C" NOT NULL REFERENCES uploads (upload_id),
    part_number INTEGER NOT NULL,
    blob_id     TEXT    NOT NULL,
    size_bytes  BIGINT  NOT NULL,
    etag        TEXT    NOT NULL,
    modified_ms BIGINT  NOT NULL,
    checksums   TEXT    NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);

-- Bucket events waiting for delivery (the outbox): each row is written in the transaction
-- of the object change it tells of, and deleted once delivered. `seq` is the order of
-- commits, and the records' `sequencer`: a sequence would hand out numbers in the order
-- transactions asked, not the order they committed, so a reader could see 6 before 5
-- commits; numbers come from `object_event_seq` instead, whose one row a transaction keeps
-- locked from taking its numbers to its commit.
CREATE TABLE object_events (
    seq        BIGINT NOT NULL PRIMARY KEY,
    bucket     TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    event      TEXT   NOT NULL,  -- ObjectCreated:Put, ObjectRemoved:Delete, ...
    size_bytes BIGINT,
    etag       TEXT,
    at_ms      BIGINT NOT NULL,
    node       TEXT   NOT NULL,  -- the node that committed it and delivers it at once
    lineage    BIGINT NOT NULL   -- hops of the writer's call chain
);

CREATE TABLE object_event_seq (
    last BIGINT NOT NULL
);
INSERT INTO object_event_seq (last) VALUES (0);

-- Rules set the AWS way (PutBucketNotificationConfiguration), read whole by the object
-- trigger.
CREATE TABLE bucket_notifications (
    bucket TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES buckets (name) ON DELETE CASCADE,
    rules  TEXT NOT NULL
);
