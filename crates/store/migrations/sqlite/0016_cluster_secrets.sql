-- Secrets every node of a cluster shares (the admin token): the first node to start stores
-- its own, the others take that one.
CREATE TABLE cluster_secrets (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
