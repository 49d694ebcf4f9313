-- schema/20_references.sql: applied by `dbrouter migrate` whenever this text changes
-- (src/schema.rs). CREATE OR REPLACE only; a function dropped or whose
-- arguments change needs a numbered migration.
--
-- References between the tables, checked once per statement over its new
-- rows for every writer (not by per-row foreign keys: migrations/
-- 0009_refs_always_checked.sql has the measurements), and deletes or key
-- changes of rows still referred to, refused.

CREATE OR REPLACE FUNCTION dbrouter.transmissions_check_refs()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    bad record;
BEGIN
    -- Distinct messages first: a broadcast's 100,000 rows share one. Each
    -- check is a scalar subquery, i.e. one index probe per row whatever the
    -- planner believes about the tables: a NOT EXISTS let it hash the whole
    -- messages table for 200 rows when its statistics said "small" (a
    -- growing queue's statistics lag), which cost 40 us per message.
    SELECT n.message_id INTO bad
      FROM (SELECT DISTINCT message_id FROM new_rows) n
     WHERE (SELECT m.id FROM dbrouter.messages m WHERE m.id = n.message_id) IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a transmission refers to message %, which does not exist', bad.message_id
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'enqueue through dbrouter.inbox, dbrouter.outbox or dbrouter.broadcast()';
    END IF;
    SELECT n.connection_id, n.backend_id INTO bad
      FROM new_rows n
     WHERE (SELECT c.backend_id FROM dbrouter.connections c WHERE c.id = n.connection_id)
           IS DISTINCT FROM n.backend_id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a transmission refers to connection % on backend %, which does not exist',
                        bad.connection_id, bad.backend_id
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'enqueue through dbrouter.inbox, dbrouter.outbox or dbrouter.broadcast()';
    END IF;
    RETURN NULL;
END
$function$;

CREATE OR REPLACE TRIGGER transmissions_check_refs AFTER INSERT ON dbrouter.transmissions REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.transmissions_check_refs();

CREATE OR REPLACE FUNCTION dbrouter.connections_check_refs()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    missing integer;
BEGIN
    -- Lock the few backends involved, as the foreign key did, so a backend
    -- cannot be removed while connections to it are being added.
    PERFORM 1 FROM dbrouter.backends
      WHERE id IN (SELECT DISTINCT backend_id FROM new_rows)
      FOR KEY SHARE;
    SELECT n.backend_id INTO missing
      FROM (SELECT DISTINCT backend_id FROM new_rows) n
     WHERE NOT EXISTS (SELECT 1 FROM dbrouter.backends b WHERE b.id = n.backend_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a connection refers to backend %, which does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$function$;

CREATE OR REPLACE TRIGGER connections_check_refs AFTER INSERT ON dbrouter.connections REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.connections_check_refs();

-- The columns that refer to other rows never change (nothing in dbrouter
-- updates them; these triggers fire only when an UPDATE names them).
CREATE OR REPLACE FUNCTION dbrouter.refuse_reference_change()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    RAISE EXCEPTION 'the references of a % row cannot be changed', TG_TABLE_NAME
        USING ERRCODE = 'foreign_key_violation',
              HINT = 'enqueue a new message instead';
END
$function$;

CREATE OR REPLACE TRIGGER connections_refuse_reference_change BEFORE UPDATE OF id, backend_id ON dbrouter.connections FOR EACH ROW EXECUTE FUNCTION dbrouter.refuse_reference_change();

CREATE OR REPLACE TRIGGER transmissions_refuse_reference_change BEFORE UPDATE OF message_id, connection_id, backend_id ON dbrouter.transmissions FOR EACH ROW EXECUTE FUNCTION dbrouter.refuse_reference_change();

-- Deleting a message with transmissions or with parts still waiting (its
-- row is what the parts will refer to), or a connection with
-- transmissions, is refused: one statement-level check over the deleted
-- rows.
CREATE OR REPLACE FUNCTION dbrouter.refuse_referenced_delete()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    still bigint;
BEGIN
    IF TG_TABLE_NAME = 'messages' THEN
        -- (a probe of the (message_id, connection_id) index per row, never a
        -- hash of all transmissions: purge deletes 1,000 messages at a time)
        SELECT o.id INTO still FROM old_rows o
         WHERE (SELECT 1 FROM dbrouter.transmissions t WHERE t.message_id = o.id LIMIT 1) IS NOT NULL
            OR (SELECT 1 FROM dbrouter.fanouts f WHERE f.message_id = o.id LIMIT 1) IS NOT NULL
         LIMIT 1;
    ELSE
        -- (no index on connection_id: dbrouter never deletes connections)
        SELECT o.id INTO still FROM old_rows o
         WHERE EXISTS (SELECT 1 FROM dbrouter.transmissions t WHERE t.connection_id = o.id)
         LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot delete % row %: transmissions still refer to it', TG_TABLE_NAME, still
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'old messages go with dbrouter.purge(), which deletes their transmissions first';
    END IF;
    RETURN NULL;
END
$function$;

CREATE OR REPLACE TRIGGER connections_refuse_referenced_delete AFTER DELETE ON dbrouter.connections REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.refuse_referenced_delete();

CREATE OR REPLACE TRIGGER messages_refuse_referenced_delete AFTER DELETE ON dbrouter.messages REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.refuse_referenced_delete();
