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
-- sql/outbound_due.sql's (the start of this statement, as of
-- outbound_claim.sql's). Locks: the claimed transmissions (FOR UPDATE SKIP
-- LOCKED, so concurrent workers take disjoint batches without waiting) and
-- then their messages in id order (as the claim and the finish do, so none
-- of them can deadlock with another), until the transaction commits.
--
-- The messages are locked last, after the records are written (the final
-- SELECT reads `recorded`, so it runs before `rolled`): every batch of a
-- broadcast updates the same message row, and the next batch waits for
-- that lock until this one commits, so the less happens while it is held
-- the better.
--
-- It runs in a transaction begun with db::BEGIN_KEYED, on a generic plan
-- (made without knowing $2): every table is reached by key, through
-- `= ANY (ARRAY(...))`, scalar subqueries and a LIMIT 1 subquery that
-- PostgreSQL cannot turn into a hash or merge join over a whole table.
-- (Joined to the CTEs, the generic plan read all transmissions and all
-- connections per batch; tests/plans.rs checks this one.)
-- (continues sql/outbound_due.sql: WITH due AS (...))
, sent AS (
    UPDATE dbrouter.transmissions t
       SET status = 'S',
           lease_token = NULL,
           due_at = NULL,
           attempts = t.attempts + 1,
           sent_at = now(),
           updated_at = now()
     WHERE t.id = ANY (ARRAY(SELECT id FROM due WHERE NOT opted_out))
    RETURNING t.id, t.message_id, t.connection_id, t.attempts
), refused AS (
    -- The identity sent STOP after this was queued: E, not sent.
    UPDATE dbrouter.transmissions t
       SET status = 'E', lease_token = NULL, due_at = NULL, last_error = 'opted out',
           updated_at = now()
     WHERE t.id = ANY (ARRAY(SELECT id FROM due WHERE opted_out))
    RETURNING t.id, t.message_id
), calls AS (
    -- One call id per message, as with a gateway: the k-th message of the
    -- batch (dense_rank below) gets the k-th id drawn here.
    SELECT array_agg(nextval('dbrouter.database_backend_calls')) AS ids
      FROM (SELECT DISTINCT message_id FROM sent) s
), recorded AS (
    INSERT INTO dbrouter.database_backend_sends
           (call_id, batch, backend, message_id, text, in_response_to, reply_to_external_id,
            transmission_id, identity, attempt)
    SELECT calls.ids[s.k], $3, $4, s.message_id, m.text, m.in_response_to,
           (SELECT orig.external_id FROM dbrouter.messages orig WHERE orig.id = m.in_response_to),
           s.id, (SELECT c.identity FROM dbrouter.connections c WHERE c.id = s.connection_id),
           s.attempts
      FROM (SELECT sent.*, dense_rank() OVER (ORDER BY sent.message_id) AS k FROM sent) s
     CROSS JOIN calls
     CROSS JOIN LATERAL (SELECT m.text, m.in_response_to FROM dbrouter.messages m
                          WHERE m.id = s.message_id LIMIT 1) m
    RETURNING 1
), deltas AS (
    -- sent: now S; retried: E rows sent now; refused: rows that were not
    -- errors and now are (opted out)
    SELECT x.message_id, count(*) FILTER (WHERE x.sent)::integer AS sent,
           count(*) FILTER (WHERE x.sent AND due.was = 'E')::integer AS retried,
           count(*) FILTER (WHERE NOT x.sent AND due.was <> 'E')::integer AS refused
      FROM (SELECT id, message_id, true AS sent FROM sent
            UNION ALL SELECT id, message_id, false FROM refused) x
      JOIN due ON due.id = x.id
     GROUP BY x.message_id
), locked AS (
    SELECT m.id
      FROM dbrouter.messages m
     WHERE m.id = ANY (ARRAY(SELECT message_id FROM deltas))
     ORDER BY m.id
       FOR UPDATE
), rolled AS (
    UPDATE dbrouter.messages m
       SET n_done = m.n_done + d.sent,
           n_error = m.n_error - d.retried + d.refused,
           status = dbrouter.rollup(m.n_total, m.n_error - d.retried + d.refused, m.n_done + d.sent,
                                    m.n_delivered),
           sent_at = CASE WHEN m.n_done + d.sent = m.n_total THEN coalesce(m.sent_at, now()) ELSE m.sent_at END,
           updated_at = now()
      FROM deltas d
     WHERE m.id = ANY (ARRAY(SELECT id FROM locked)) AND d.message_id = m.id
)
SELECT count(*) AS sent FROM recorded
