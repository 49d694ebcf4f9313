-- schema/60_retention.sql: applied by `dbrouter migrate` whenever this text changes
-- (src/schema.rs). CREATE OR REPLACE only; a function dropped or whose
-- arguments change needs a numbered migration.
--
-- Retention: purge final messages older than a given age, in batches.

-- purge_batch(): two index scans instead of one OR-ed condition.
CREATE OR REPLACE FUNCTION dbrouter.purge_batch(p_older_than interval, p_after bigint DEFAULT 0, p_batch integer DEFAULT 1000, OUT purged integer, OUT last_id bigint)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    cut timestamptz;
    any_old boolean;
    ids bigint[];
    kept integer;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a positive interval, e.g. ''30 days''';
    END IF;
    IF p_batch IS NULL OR p_batch NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'batch size must be between 1 and 100000, got %', p_batch;
    END IF;
    cut := now() - p_older_than;
    purged := 0;
    SELECT max(id), bool_or(created_at < cut) INTO last_id, any_old
      FROM (SELECT id, created_at FROM dbrouter.messages
             WHERE id > p_after ORDER BY id LIMIT p_batch) w;
    IF last_id IS NULL OR NOT any_old THEN
        last_id := NULL;  -- the walk is over
        RETURN;
    END IF;

    -- Final and old, in the window or answering one of those.
    -- (Two index scans: the window by primary key, its answers through
    -- messages_in_response_to. One OR-ed condition made PostgreSQL scan the
    -- whole table: 3 s per batch over 5 million rows.)
    ids := ARRAY(
        SELECT m.id
          FROM (SELECT w.id FROM dbrouter.messages w WHERE w.id > p_after AND w.id <= last_id
                UNION
                SELECT r.id FROM dbrouter.messages r
                 WHERE r.in_response_to > p_after AND r.in_response_to <= last_id) c
          JOIN dbrouter.messages m ON m.id = c.id
         WHERE m.created_at < cut AND m.updated_at < cut
           AND m.status IN ('R', 'E', 'S', 'D')
           AND NOT EXISTS (SELECT 1 FROM dbrouter.transmissions t
                            WHERE t.message_id = m.id AND t.due_at IS NOT NULL)
           FOR UPDATE OF m SKIP LOCKED);
    -- Keep whatever a message outside the set answers (repeat: keeping one
    -- can keep what it answers).
    LOOP
        kept := cardinality(ids);
        ids := ARRAY(SELECT k.mid FROM unnest(ids) AS k(mid)
                      WHERE NOT EXISTS (SELECT 1 FROM dbrouter.messages r
                                         WHERE r.in_response_to = k.mid AND r.id <> ALL (ids)));
        EXIT WHEN cardinality(ids) = kept;
    END LOOP;
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;

    DELETE FROM dbrouter.attempts a USING dbrouter.transmissions t
     WHERE t.message_id = ANY (ids) AND a.transmission_id = t.id;
    DELETE FROM dbrouter.transmission_parts p USING dbrouter.transmissions t
     WHERE t.message_id = ANY (ids) AND p.transmission_id = t.id;
    DELETE FROM dbrouter.database_backend_sends s USING dbrouter.transmissions t
     WHERE t.message_id = ANY (ids) AND s.transmission_id = t.id;
    DELETE FROM dbrouter.transmissions WHERE message_id = ANY (ids);
    DELETE FROM dbrouter.messages WHERE id = ANY (ids);
    purged := cardinality(ids);
END
$function$;

-- From psql: CALL dbrouter.purge('30 days'); one transaction per batch.
CREATE OR REPLACE PROCEDURE dbrouter.purge(IN older_than interval, IN batch_size integer DEFAULT 1000)
 LANGUAGE plpgsql
AS $procedure$
DECLARE
    v_after bigint := 0;
    v_total bigint := 0;
    r record;
BEGIN
    LOOP
        SELECT * INTO r FROM dbrouter.purge_batch(older_than, v_after, batch_size);
        v_total := v_total + r.purged;
        COMMIT;
        EXIT WHEN r.last_id IS NULL;
        v_after := r.last_id;
    END LOOP;
    RAISE NOTICE 'purged % messages', v_total;
END
$procedure$;
