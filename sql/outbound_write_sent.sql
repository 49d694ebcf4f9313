-- Claim up to $2 due transmissions of backend $1 and write them sent, with
-- the backend's records, in one statement. Only for a backend whose sends
-- are nothing but those records and cannot fail (the `database` engine
-- without simulated failures, delays or its own commit) when no app has an
-- outgoing phase and no rate limit applies: then the claim's lease, the
-- send and the finish (outbound_claim.sql, then outbound_finish.sql) have
-- nothing to do between them, and one statement does the work of both with
-- one update of each transmission instead of two. $3 is the batch (a fresh
-- token, recorded like a lease token), $4 the backend's name.
--
-- Which rows are due, and the order and checks of the claim, are
-- outbound_claim.sql's. Locks: the claimed transmissions (FOR UPDATE SKIP
-- LOCKED, so concurrent workers take disjoint batches without waiting) and
-- then their messages in id order (as the claim and the finish do, so none
-- of them can deadlock with another), until this statement commits.
WITH due AS (
    SELECT t.id, t.status AS was
      FROM dbrouter.transmissions t
     WHERE t.backend_id = $1 AND t.due_at <= now()
       AND (t.expires_at IS NULL OR t.expires_at > now())
       AND EXISTS (SELECT 1 FROM dbrouter.backends b
                    WHERE b.id = $1 AND b.enabled AND b.paused_at IS NULL
                      AND (b.throttled_until IS NULL OR b.throttled_until <= now()))
     ORDER BY t.priority DESC, t.due_at, t.id
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), sent AS (
    UPDATE dbrouter.transmissions t
       SET status = 'S',
           lease_token = NULL,
           due_at = NULL,
           attempts = t.attempts + 1,
           sent_at = now(),
           updated_at = now()
      FROM due
     WHERE t.id = due.id
    RETURNING t.id, t.message_id, t.connection_id, t.attempts, due.was
), calls AS (
    -- One call id per message, as with a gateway: the k-th message of the
    -- batch (dense_rank below) gets the k-th id drawn here.
    SELECT array_agg(nextval('dbrouter.database_backend_calls')) AS ids
      FROM (SELECT DISTINCT message_id FROM sent) s
), recorded AS (
    INSERT INTO dbrouter.database_backend_sends
           (call_id, batch, backend, message_id, text, in_response_to, reply_to_external_id,
            transmission_id, identity, attempt)
    SELECT calls.ids[s.k], $3, $4, s.message_id, m.text, m.in_response_to, orig.external_id,
           s.id, c.identity, s.attempts
      FROM (SELECT sent.*, dense_rank() OVER (ORDER BY sent.message_id) AS k FROM sent) s
     CROSS JOIN calls
      JOIN dbrouter.messages m ON m.id = s.message_id
      JOIN dbrouter.connections c ON c.id = s.connection_id
      LEFT JOIN dbrouter.messages orig ON orig.id = m.in_response_to
), deltas AS (
    SELECT message_id, count(*)::integer AS sent,
           count(*) FILTER (WHERE was = 'E')::integer AS retried
      FROM sent GROUP BY message_id
), locked AS (
    SELECT m.id, d.sent, d.retried
      FROM dbrouter.messages m JOIN deltas d ON d.message_id = m.id
     ORDER BY m.id
       FOR UPDATE OF m
), rolled AS (
    UPDATE dbrouter.messages m
       SET n_done = m.n_done + l.sent,
           n_error = m.n_error - l.retried,
           status = dbrouter.rollup(m.n_total, m.n_error - l.retried, m.n_done + l.sent, m.n_delivered),
           sent_at = CASE WHEN m.n_done + l.sent = m.n_total THEN coalesce(m.sent_at, now()) ELSE m.sent_at END,
           updated_at = now()
      FROM locked l
     WHERE m.id = l.id
)
SELECT count(*) AS sent FROM sent
