-- ===========================================================================
-- A STOP, a cancel and a deadline hold against requeues and late reports.
--
-- requeue_transmissions() (behind requeue_message() and requeue_backend())
-- put every E transmission back to Q. After an outage that revived
-- transmissions a person had opted out of, broadcasts an operator had
-- cancelled and messages whose deadline had passed: all were sent. Now an
-- outbound transmission is requeued only when it ended E because sending it
-- failed, which dbrouter tells from three facts it keeps anyway:
--   - its connection is not opted out now (dbrouter.opt_outs), unless it
--     is a reply (replies answer the person's own message and are never
--     checked against opt-outs: the STOP confirmation must go out),
--   - its message is not cancelled (messages.cancelled_at) and its own
--     deadline has not passed (transmissions.expires_at),
--   - it was not ended for one of those reasons earlier: the errors
--     dbrouter itself writes then are exactly 'opted out', 'cancelled' and
--     'expired' (a gateway's error always names the gateway, so it never
--     equals one of them). This keeps a transmission ended by a STOP ended
--     even after the person opts back in: opting in is for new messages.
-- Inbound messages are requeued as before (they are processed again).
--
-- A STOP recorded after a message was queued is applied by the outbound
-- claims (sql/outbound_due.sql): they end such a transmission (not a
-- reply) E 'opted out' instead of sending it. A delivery report now moves only a transmission
-- that was sent (S, or E after a failure report: it has a sent_at); a
-- "delivered" report for one ended unsent no longer turned it, and its
-- message, D.
-- ===========================================================================

CREATE OR REPLACE FUNCTION dbrouter.requeue_transmissions(p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    WITH t AS (
        UPDATE dbrouter.transmissions t
           SET status = 'Q', attempts = 0, updated_at = now(),
               due_at = CASE WHEN m.direction = 'O' THEN now() END
          FROM dbrouter.messages m
         WHERE t.id = ANY (p_ids) AND t.status = 'E' AND m.id = t.message_id
           AND (m.direction = 'I'
                OR (m.cancelled_at IS NULL
                    AND (t.expires_at IS NULL OR t.expires_at > now())
                    AND coalesce(t.last_error, '') NOT IN ('opted out', 'cancelled', 'expired')
                    AND (m.in_response_to IS NOT NULL
                         OR NOT EXISTS (SELECT 1 FROM dbrouter.opt_outs o
                                         WHERE o.connection_id = t.connection_id))))
        RETURNING t.message_id, m.direction
    ), deltas AS (
        SELECT message_id, direction, count(*)::integer AS requeued FROM t GROUP BY 1, 2
    ), locked AS (
        SELECT m.id, d.direction, d.requeued FROM dbrouter.messages m JOIN deltas d ON d.message_id = m.id
         ORDER BY m.id FOR UPDATE OF m
    ), rolled AS (
        UPDATE dbrouter.messages m
           SET n_error = CASE WHEN l.direction = 'O' THEN m.n_error - l.requeued ELSE m.n_error END,
               status = CASE WHEN l.direction = 'I' THEN 'Q'
                             ELSE dbrouter.rollup(m.n_total, m.n_error - l.requeued, m.n_done, m.n_delivered) END,
               error = CASE WHEN l.direction = 'I' THEN NULL ELSE m.error END,
               updated_at = now()
          FROM locked l WHERE m.id = l.id
    )
    SELECT count(*) INTO n FROM t;
    PERFORM pg_notify('dbrouter', '');
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION dbrouter.apply_receipts(p_limit integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql AS $$
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
        RETURNING t.message_id, x.was, x.outcome
    ), deltas AS (
        SELECT message_id,
               -- done: S/D count; error: E count; delivered: D count
               sum(CASE WHEN was = 'E' THEN 1 WHEN outcome = 'E' THEN -1 ELSE 0 END)::integer AS done,
               sum(CASE WHEN was = 'E' THEN -1 WHEN outcome = 'E' THEN 1 ELSE 0 END)::integer AS error,
               count(*) FILTER (WHERE outcome = 'D')::integer AS delivered
          FROM changed GROUP BY message_id
    ), locked AS (
        SELECT m.id, d.done, d.error, d.delivered
          FROM dbrouter.messages m JOIN deltas d ON d.message_id = m.id
         ORDER BY m.id FOR UPDATE OF m
    ), rolled AS (
        UPDATE dbrouter.messages m
           SET n_done = m.n_done + l.done,
               n_error = m.n_error + l.error,
               n_delivered = m.n_delivered + l.delivered,
               status = dbrouter.rollup(m.n_total, m.n_error + l.error, m.n_done + l.done,
                                        m.n_delivered + l.delivered),
               delivered_at = CASE WHEN m.n_delivered + l.delivered = m.n_total THEN now()
                                   ELSE m.delivered_at END,
               updated_at = now()
          FROM locked l WHERE m.id = l.id
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
$$;
