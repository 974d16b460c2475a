-- AWS-style access keys for the Lambda API (and the S3 API to come), signed with SigV4.
-- SigV4 is an HMAC keyed by the secret, so the server must hold the secret itself, not a
-- hash of it (as AWS, MinIO and every SigV4 server do); the data dir's permissions guard it.
-- `builtin` marks the admin's key, made by the first server start and written to
-- `<data-dir>/aws.credentials`; the partial unique index lets nodes race to make it safely.
CREATE TABLE aws_keys (
    access_key_id TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    secret        TEXT    NOT NULL,
    scope         TEXT    NOT NULL CHECK (scope IN ('admin', 'invoke')),
    builtin       INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX aws_keys_one_builtin ON aws_keys (builtin) WHERE builtin = 1;
