-- A running invocation is a node's until its lease ends: the node renews it while the
-- attempt runs; any node queues again one whose lease ran out (its node died or stalled),
-- and a restarting node at once those it held. An attempt's end is recorded only by the
-- node that holds it (or after it was queued again and before another node took it).
ALTER TABLE async_invocations ADD COLUMN owner TEXT;
ALTER TABLE async_invocations ADD COLUMN lease_until_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX async_running ON async_invocations (lease_until_ms) WHERE status = 'running';
