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
        SELECT r.id, r.outcome, r.detail, r.received_at,
               -- an outbound transmission of the reporting backend, or none
               CASE WHEN r.transmission_id IS NOT NULL
                    THEN (SELECT t.id FROM dbrouter.transmissions t
                            JOIN dbrouter.messages m ON m.id = t.message_id AND m.direction = 'O'
                           WHERE t.id = r.transmission_id AND t.backend_id = r.backend_id)
                    ELSE (SELECT t.id FROM dbrouter.transmissions t
                           WHERE t.backend_id = r.backend_id AND t.external_id = r.gateway_id
                           ORDER BY t.id LIMIT 1)
               END AS tid
          FROM dbrouter.receipts r
         WHERE r.not_before IS NULL OR r.not_before <= now()
         ORDER BY r.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
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
               -- ended unsent never will be
               (p.tid IS NULL AND r.transmission_id IS NOT NULL)
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
