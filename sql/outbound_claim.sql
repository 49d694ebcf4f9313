-- Claim up to $2 due transmissions of backend $1 across messages, mark
-- them P with lease token $3 for $4 seconds, and return what the sender
-- needs.
--
-- Due: a queued row, a retry
-- whose backoff has elapsed, or a P row whose lease expired because its
-- worker died. Highest priority first (replies are 1, bulk 0), then the
-- longest due. None while the backend is disabled, paused or throttled
-- (checked here too, so a pause holds at once even for a worker that has
-- not reloaded the backends yet), and none past its deadline: the expiry
-- sweep ends those E.
--
-- `opted_out`: the identity sent STOP after this transmission was queued
-- (dbrouter.opt_outs, probed by its key; then the message, by its key, only
-- for an opted-out identity). Each claim ends such a row E 'opted out'
-- instead of sending it, so a STOP holds for anything not yet sent; the
-- row is taken like the others so it leaves the queue. Replies are exempt,
-- as when they are written: they answer the person's own message (the STOP
-- confirmation among them).
--
-- Locks: the selected `transmissions` rows, FOR UPDATE SKIP LOCKED, so
-- concurrent workers take disjoint batches without waiting, only until
-- this short transaction commits; from then on the lease protects them.
-- The backend row and the opt-outs are read in subqueries, which FOR
-- UPDATE does not reach. The messages' counters and status follow from
-- the statuses changed here (the rollup trigger, schema/15_rollup.sql):
-- a message still Q becomes P, one whose errored transmissions are
-- retried or that loses one to an opt-out is rolled up again.
WITH due AS (
    SELECT t.id,
           CASE WHEN EXISTS (SELECT 1 FROM dbrouter.opt_outs o WHERE o.connection_id = t.connection_id)
                THEN (SELECT m.in_response_to IS NULL FROM dbrouter.messages m WHERE m.id = t.message_id)
                ELSE false END AS opted_out
      FROM dbrouter.transmissions t
     WHERE t.backend_id = $1 AND t.due_at <= now()
       AND (t.expires_at IS NULL OR t.expires_at > now())
       AND EXISTS (SELECT 1 FROM dbrouter.backends b
                    WHERE b.id = $1 AND b.enabled AND b.paused_at IS NULL
                      AND (b.throttled_until IS NULL OR b.throttled_until <= now()))
     ORDER BY t.priority DESC, t.due_at, t.id
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), claimed AS (
    -- An opted-out row ends E here (not sent, no attempt used); the rest
    -- are leased.
    UPDATE dbrouter.transmissions t
       SET status = CASE WHEN due.opted_out THEN 'E' ELSE 'P' END,
           lease_token = CASE WHEN due.opted_out THEN NULL ELSE $3 END,
           due_at = CASE WHEN due.opted_out THEN NULL ELSE now() + make_interval(secs => $4) END,
           attempts = t.attempts + (NOT due.opted_out)::integer,
           last_error = CASE WHEN due.opted_out THEN 'opted out' ELSE t.last_error END,
           updated_at = now()
      FROM due
     WHERE t.id = due.id
    RETURNING t.id, t.message_id, t.connection_id, t.attempts, due.opted_out
)
SELECT c.id AS transmission_id,
       c.message_id,
       c.attempts,
       cn.identity,
       m.text,
       m.in_response_to,
       orig.external_id AS reply_to_external_id
  FROM claimed c
  JOIN dbrouter.messages m ON m.id = c.message_id
  JOIN dbrouter.connections cn ON cn.id = c.connection_id
  LEFT JOIN dbrouter.messages orig ON orig.id = m.in_response_to
 WHERE NOT c.opted_out
 ORDER BY c.message_id, c.id
