-- schema/50_receipts.sql: applied by `dbrouter migrate` whenever this text changes
-- (src/schema.rs). CREATE OR REPLACE only; a function dropped or whose
-- arguments change needs a numbered migration.
--
-- Delivery reports: mark_delivered() by hand, apply_receipts() for the
-- reports `dbrouter serve` records (run by the workers).

-- Delivery: S -> D for the given transmissions, rolled up to their
-- messages by the trigger (15_rollup.sql). Returns how many changed.
CREATE OR REPLACE FUNCTION dbrouter.mark_delivered(p_transmissions bigint[])
 RETURNS integer
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    WITH done AS (
        UPDATE dbrouter.transmissions t
           SET status = 'D', delivered_at = now(), updated_at = now()
         WHERE t.id = ANY (p_transmissions) AND t.status = 'S'
        RETURNING 1
    )
    SELECT count(*)::integer FROM done
$function$;

CREATE OR REPLACE FUNCTION dbrouter.apply_receipts(p_limit integer DEFAULT 1000)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
DECLARE
    n integer;
BEGIN
    WITH picked AS (
        SELECT x.*,
               -- an outbound transmission of the reporting backend, or none
               -- (a part's receipt counts for its part, below, not here)
               CASE WHEN x.part_of IS NOT NULL THEN NULL
                    WHEN x.transmission_id IS NOT NULL
                    THEN (SELECT t.id FROM dbrouter.transmissions t
                            JOIN dbrouter.messages m ON m.id = t.message_id AND m.direction = 'O'
                           WHERE t.id = x.transmission_id AND t.backend_id = x.backend_id)
                    ELSE (SELECT t.id FROM dbrouter.transmissions t
                           WHERE t.backend_id = x.backend_id AND t.external_id = x.gateway_id
                           ORDER BY t.id LIMIT 1)
               END AS tid
          FROM (SELECT r.id, r.outcome, r.detail, r.received_at, r.transmission_id, r.backend_id,
                       r.gateway_id, pt.transmission_id AS part_of, pt.part
                  FROM dbrouter.receipts r
                  -- a part of a text sent in several, named by its own id
                  LEFT JOIN LATERAL (
                        SELECT p.transmission_id, p.part FROM dbrouter.transmission_parts p
                         WHERE r.transmission_id IS NULL AND p.backend_id = r.backend_id
                           AND p.gateway_id = r.gateway_id
                         ORDER BY p.transmission_id DESC LIMIT 1) pt ON true
                 WHERE r.not_before IS NULL OR r.not_before <= now()
                 ORDER BY r.id
                 LIMIT p_limit
                   FOR UPDATE OF r SKIP LOCKED) x
    ), part_changed AS (
        -- D or E on the parts named; the trigger on transmission_parts
        -- (roll_up_parts, below) makes their transmission D or E
        UPDATE dbrouter.transmission_parts p
           SET status = s.outcome, detail = s.detail, updated_at = now()
          FROM (SELECT DISTINCT ON (part_of, part) part_of, part, outcome, detail
                  FROM picked WHERE part_of IS NOT NULL AND outcome IN ('D', 'E')
                 ORDER BY part_of, part, CASE outcome WHEN 'D' THEN 0 ELSE 1 END, id DESC) s
         WHERE p.transmission_id = s.part_of AND p.part = s.part
           AND ((s.outcome = 'D' AND p.status IN ('S', 'E'))
             OR (s.outcome = 'E' AND p.status = 'S'))
    ), strongest AS (
        SELECT DISTINCT ON (tid) tid, outcome, detail
          FROM picked WHERE tid IS NOT NULL
         ORDER BY tid, CASE outcome WHEN 'D' THEN 0 WHEN 'E' THEN 1 ELSE 2 END, id DESC
    ), target AS (
        -- Only a transmission that was sent: S, D, or E after a failure
        -- report (an E that never left has no sent_at).
        SELECT t.id, t.message_id, t.status AS was, s.outcome, s.detail
          FROM strongest s JOIN dbrouter.transmissions t ON t.id = s.tid
         WHERE t.status IN ('S', 'D') OR (t.status = 'E' AND t.sent_at IS NOT NULL)
         ORDER BY t.id
           FOR UPDATE OF t
    ), changed AS (
        UPDATE dbrouter.transmissions t
           SET status = x.outcome,
               due_at = NULL,
               delivered_at = CASE WHEN x.outcome = 'D' THEN now() ELSE t.delivered_at END,
               last_error = CASE WHEN x.outcome = 'E'
                                 THEN 'delivery failed: ' || coalesce(x.detail, 'the gateway reported a failure')
                                 ELSE t.last_error END,
               updated_at = now()
          FROM target x
         WHERE t.id = x.id
           AND ((x.outcome = 'D' AND x.was IN ('S', 'E'))
             OR (x.outcome = 'E' AND x.was = 'S'))
        RETURNING t.id
    ), verdict AS (
        SELECT p.id,
               -- a transmission id that is not an outbound transmission of
               -- this backend never will be; a gateway id may not be
               -- recorded yet; a send still in flight will be soon; one
               -- ended unsent never will be; a part's has been counted
               p.part_of IS NOT NULL
               OR (p.tid IS NULL AND r.transmission_id IS NOT NULL)
               OR p.received_at < now() - interval '1 day'
               OR EXISTS (SELECT 1 FROM dbrouter.transmissions t
                           WHERE t.id = p.tid AND t.status IN ('S', 'E', 'D')) AS done
          FROM picked p JOIN dbrouter.receipts r ON r.id = p.id
    ), consumed AS (
        DELETE FROM dbrouter.receipts r USING verdict v
         WHERE r.id = v.id AND v.done
        RETURNING r.id
    ), waiting AS (
        UPDATE dbrouter.receipts r SET not_before = now() + interval '2 seconds'
          FROM verdict v
         WHERE r.id = v.id AND NOT v.done
    )
    SELECT count(*) INTO n FROM consumed;
    RETURN n;
END
$function$;

-- The parts of a text sent in several (migrations/0013_transmission_parts.sql)
-- rolled up to their transmission once a statement changes them: E as soon
-- as any part failed (last_error: that part's report), D once every part is
-- delivered; otherwise it stays as it is. Only a transmission that was sent
-- (S, or E after a failure report) moves, as for a one-part receipt; the
-- transmissions' own trigger then rolls their messages up.
-- Locks: those transmissions, in id order.
CREATE OR REPLACE FUNCTION dbrouter.roll_up_parts()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    WITH verdict AS (
        SELECT p.transmission_id AS id,
               bool_and(p.status = 'D') AS delivered,
               min(p.part) FILTER (WHERE p.status = 'E') AS failed_part,
               (array_agg(p.detail ORDER BY p.part) FILTER (WHERE p.status = 'E'))[1] AS detail
          FROM dbrouter.transmission_parts p
         WHERE p.transmission_id IN (SELECT DISTINCT transmission_id FROM new_parts)
         GROUP BY p.transmission_id
    ), locked AS (
        SELECT t.id, v.delivered, v.failed_part, v.detail
          FROM verdict v JOIN dbrouter.transmissions t ON t.id = v.id
         WHERE (v.failed_part IS NOT NULL AND t.status = 'S')
            OR (v.failed_part IS NULL AND v.delivered
                AND (t.status = 'S' OR (t.status = 'E' AND t.sent_at IS NOT NULL)))
         ORDER BY t.id
           FOR UPDATE OF t
    )
    UPDATE dbrouter.transmissions t
       SET status = CASE WHEN l.failed_part IS NOT NULL THEN 'E' ELSE 'D' END,
           due_at = NULL,
           delivered_at = CASE WHEN l.failed_part IS NULL THEN now() ELSE t.delivered_at END,
           last_error = CASE WHEN l.failed_part IS NOT NULL
                             THEN format('delivery failed: part %s: %s', l.failed_part,
                                         coalesce(l.detail, 'the gateway reported a failure'))
                             ELSE t.last_error END,
           updated_at = now()
      FROM locked l
     WHERE t.id = l.id;
    RETURN NULL;
END
$function$;

CREATE OR REPLACE TRIGGER transmission_parts_roll_up AFTER UPDATE ON dbrouter.transmission_parts REFERENCING NEW TABLE AS new_parts FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.roll_up_parts();
