-- The start of both outbound claims: sql/outbound_claim.sql and
-- sql/outbound_write_sent.sql are each this text followed by their own
-- (src/outbound.rs joins them at compile time), so both take the same rows
-- in the same order.
--
-- Up to $2 transmissions of backend $1 that are due: a queued row, a retry
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
-- concurrent workers take disjoint batches without waiting. Only those: the
-- backend row and the opt-outs are read in subqueries, which FOR UPDATE
-- does not reach.
WITH due AS (
    SELECT t.id, t.status AS was,
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
)
