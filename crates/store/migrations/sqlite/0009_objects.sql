-- The object store's metadata: buckets, objects, multipart uploads and their parts.
-- An object's bytes live in a file named by `blob_id` (a random id, see store::objects);
-- a row is committed only after its file is durable, so a reader that finds the row finds
-- the whole object. Replacing an object swaps the row in one transaction, which is also
-- where a bucket event's outbox row will be written (issue 17, part 3).
-- Keys compare with BINARY collation, byte by byte in UTF-8: S3's listing order.
CREATE TABLE buckets (
    name          TEXT    NOT NULL PRIMARY KEY,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE objects (
    bucket        TEXT    NOT NULL REFERENCES buckets (name),
    key           TEXT    NOT NULL,
    blob_id       TEXT    NOT NULL,
    size_bytes    INTEGER NOT NULL,
    etag          TEXT    NOT NULL,
    modified_ms   INTEGER NOT NULL,
    -- Content type, encoding, disposition, language, cache control, user metadata and
    -- checksums as JSON (`store::objects::ObjectAttrs`): read and written whole.
    attrs         TEXT    NOT NULL,
    PRIMARY KEY (bucket, key)
) STRICT, WITHOUT ROWID;

CREATE TABLE uploads (
    upload_id     TEXT    NOT NULL PRIMARY KEY,
    bucket        TEXT    NOT NULL REFERENCES buckets (name),
    key           TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    attrs         TEXT    NOT NULL
) STRICT;
CREATE INDEX uploads_by_key ON uploads (bucket, key, upload_id);

CREATE TABLE upload_parts (
    upload_id     TEXT    NOT NULL REFERENCES uploads (upload_id),
    part_number   INTEGER NOT NULL,
    blob_id       TEXT    NOT NULL,
    size_bytes    INTEGER NOT NULL,
    etag          TEXT    NOT NULL,
    modified_ms   INTEGER NOT NULL,
    checksums     TEXT    NOT NULL,
    PRIMARY KEY (upload_id, part_number)
) STRICT, WITHOUT ROWID;
