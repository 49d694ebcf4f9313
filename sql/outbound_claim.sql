-- Claim up to $2 due transmissions of backend $1 across messages, mark them
-- P with lease token $3 for $4 seconds, and return what the sender needs.
-- Highest priority first (replies are 1, bulk 0), then the longest due.
-- Nothing is claimed while the backend is disabled, paused or throttled
-- (checked here too, so a pause holds at once even for a worker that has
-- not reloaded the backends yet), and no row past its deadline is taken:
-- the expiry sweep ends those E.
--
-- Locks: the claimed `transmissions` rows (FOR UPDATE SKIP LOCKED, so
-- concurrent workers take disjoint batches without waiting), only until this
-- short transaction commits; from then on the lease protects them. A row is
-- due when its `due_at` has passed: a queued row, a retry whose backoff has
-- elapsed, or a P row whose lease expired because its worker died.
-- (outbound_write_sent.sql selects its rows with this same `due` query, and
-- rolls messages up as outbound_finish.sql does: change them together.)
-- Messages still Q (or whose errored transmissions are being retried) are
-- locked in id order, so claims and finishes touching the same messages
-- cannot deadlock, and get their counters and status updated by deltas.
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
), claimed AS (
    UPDATE dbrouter.transmissions t
       SET status = 'P',
           lease_token = $3,
           due_at = now() + make_interval(secs => $4),
           attempts = t.attempts + 1,
           updated_at = now()
      FROM due
     WHERE t.id = due.id
    RETURNING t.id, t.message_id, t.connection_id, t.attempts, due.was
), deltas AS (
    SELECT message_id, count(*) FILTER (WHERE was = 'E')::integer AS retried
      FROM claimed GROUP BY message_id
), locked AS (
    SELECT m.id, d.retried
      FROM dbrouter.messages m JOIN deltas d ON d.message_id = m.id
     WHERE m.status = 'Q' OR d.retried > 0
     ORDER BY m.id
       FOR UPDATE OF m
), rolled AS (
    UPDATE dbrouter.messages m
       SET n_error = m.n_error - l.retried,
           status = dbrouter.rollup(m.n_total, m.n_error - l.retried, m.n_done, m.n_delivered),
           updated_at = now()
      FROM locked l
     WHERE m.id = l.id
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
 ORDER BY c.message_id, c.id
