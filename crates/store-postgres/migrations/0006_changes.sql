-- Secrets every node shares (the admin token): the first node stores its own.
CREATE TABLE cluster_secrets (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

-- The change feed: one row per committed change of what nodes keep in memory, numbered in
-- commit order. The number comes from one counter row, updated in the writing transaction:
-- its row lock is held until commit, so a change numbered n is never visible after one
-- numbered n + 1, and a node reading "after n" misses nothing (a sequence would hand
-- numbers out of commit order). Configuration writes are rare; this serializes only them.
CREATE TABLE change_counter (
    id             INT    NOT NULL PRIMARY KEY CHECK (id = 1),
    seq            BIGINT NOT NULL,
    -- The newest change purged: a node that asks for what came after an older one missed
    -- something and must reload everything.
    purged_through BIGINT NOT NULL
);
INSERT INTO change_counter (id, seq, purged_through) VALUES (1, 0, 0);

CREATE TABLE changes (
    seq   BIGINT NOT NULL PRIMARY KEY,
    kind  TEXT   NOT NULL,
    name  TEXT   NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX changes_by_time ON changes (at_ms);

-- Records a change of the row a trigger fired for: the kind is the trigger's first
-- argument, the name the column its second names. Triggers, not the application, write the
-- feed, so no write path can forget to.
CREATE FUNCTION nimbus_record_change() RETURNS trigger AS $$
DECLARE
    row_json JSONB;
    next     BIGINT;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_json := to_jsonb(OLD);
    ELSE
        row_json := to_jsonb(NEW);
    END IF;
    UPDATE change_counter SET seq = seq + 1 WHERE id = 1 RETURNING seq INTO next;
    INSERT INTO changes (seq, kind, name, at_ms)
        VALUES (next, TG_ARGV[0], row_json ->> TG_ARGV[1],
                (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT);
    -- Delivered at commit, and only if the transaction commits.
    PERFORM pg_notify('nimbus_changes', next::TEXT);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER functions_changed AFTER INSERT OR UPDATE OR DELETE ON functions
    FOR EACH ROW EXECUTE FUNCTION nimbus_record_change('function', 'name');
CREATE TRIGGER versions_changed AFTER INSERT OR UPDATE OR DELETE ON versions
    FOR EACH ROW EXECUTE FUNCTION nimbus_record_change('version', 'function');
CREATE TRIGGER aliases_changed AFTER INSERT OR UPDATE OR DELETE ON aliases
    FOR EACH ROW EXECUTE FUNCTION nimbus_record_change('alias', 'function');
CREATE TRIGGER invoke_keys_changed AFTER INSERT OR UPDATE OR DELETE ON invoke_keys
    FOR EACH ROW EXECUTE FUNCTION nimbus_record_change('key', 'id');
CREATE TRIGGER aws_keys_changed AFTER INSERT OR UPDATE OR DELETE ON aws_keys
    FOR EACH ROW EXECUTE FUNCTION nimbus_record_change('aws_key', 'access_key_id');
-- A timer's progress is written at every fire; only pauses are news to other nodes.
CREATE TRIGGER pauses_changed AFTER UPDATE OF paused ON timer_state
    FOR EACH ROW WHEN (OLD.paused IS DISTINCT FROM NEW.paused)
    EXECUTE FUNCTION nimbus_record_change('pause', 'function');
CREATE TRIGGER pauses_inserted AFTER INSERT ON timer_state
    FOR EACH ROW WHEN (NEW.paused)
    EXECUTE FUNCTION nimbus_record_change('pause', 'function');
-- A flow's triggers are in every node's catalog.
CREATE TRIGGER flows_changed AFTER INSERT OR UPDATE OR DELETE ON flows
    FOR EACH ROW EXECUTE FUNCTION nimbus_record_change('flow', 'name');
