-- Record the outcome of every transmission of a sent batch, in one
-- statement: S with the gateway's id, or E with the error and either the
-- next attempt time (exponential backoff with jitter) or, when the failure is
-- permanent or attempts are used up, no next attempt (final E). Every failure
-- is appended to the attempt history. The messages' counters, status and
-- sent_at follow (the rollup trigger, schema/15_rollup.sql).
--
-- A failure past the transmission's deadline is final. A requeued one (the
-- gateway said "retry after N s", HTTP 429, or refused our credentials)
-- goes back to Q for then, without using up an attempt: the gateway never
-- looked at it. It is still written to the attempt history.
--
-- $1 lease token, $2 transmission ids, $3 sent?, $4 gateway ids, $5 errors,
-- $6 permanent?, $7 max attempts, $8 backoff base (s), $9 backoff cap (s),
-- $10 retry-after seconds (NULL unless throttled), $11 the backend's name
-- when its engine is `database` recording with the outcome (else NULL);
-- the parts of texts sent in several (SMPP): $12 transmission ids, $13 part
-- numbers, $14 the gateway's id of each part (empty arrays otherwise).
--
-- Fenced: only rows still P under this batch's lease token are touched, so a
-- worker whose lease expired (and whose rows another worker re-claimed)
-- changes nothing. Locks: those transmissions, then (the trigger) their
-- messages in id order, as every statement that changes transmissions.
WITH outcome AS (
    -- The batch's rows, found by primary key alone; each takes its outcome by
    -- its position in the arrays. (Joining an unnest() of the outcomes
    -- straight to transmissions let the planner, which believes few rows
    -- carry any one lease token, scan the whole table for every batch: a
    -- 50,000-identity broadcast read it 250 times. Built from the table
    -- side, the join below is a probe per row.)
    SELECT x.id,
           ($3::boolean[])[x.i] AS sent, ($4::text[])[x.i] AS gateway_id,
           ($5::text[])[x.i] AS error, ($6::boolean[])[x.i] AS permanent,
           ($10::float8[])[x.i] AS retry_after
      FROM (SELECT t.id, array_position($2::bigint[], t.id) AS i
              FROM dbrouter.transmissions t
             WHERE t.id = ANY ($2::bigint[]) AND t.lease_token = $1 AND t.status = 'P') x
), done AS (
    UPDATE dbrouter.transmissions t
       SET status = CASE WHEN o.sent THEN 'S'
                         WHEN o.retry_after IS NOT NULL
                              AND (t.expires_at IS NULL OR t.expires_at > now()) THEN 'Q'
                         ELSE 'E' END,
           lease_token = NULL,
           attempts = CASE WHEN o.retry_after IS NOT NULL THEN t.attempts - 1 ELSE t.attempts END,
           due_at = CASE
               WHEN o.sent OR o.permanent OR t.expires_at <= now() THEN NULL
               WHEN o.retry_after IS NOT NULL THEN now() + make_interval(secs => o.retry_after)
               WHEN t.attempts >= $7 THEN NULL
               ELSE now() + make_interval(secs => least($9, $8 * power(2, least(t.attempts - 1, 30)))
                                                  * (0.5 + random()))
           END,
           sent_at = CASE WHEN o.sent THEN now() ELSE t.sent_at END,
           external_id = CASE WHEN o.sent THEN o.gateway_id ELSE t.external_id END,
           last_error = CASE WHEN o.sent THEN t.last_error ELSE o.error END,
           updated_at = now()
      FROM outcome o
     WHERE t.id = o.id AND t.lease_token = $1 AND t.status = 'P'
    RETURNING t.id, t.message_id, t.connection_id, t.backend_id,
              t.attempts + (o.retry_after IS NOT NULL)::integer AS attempt,
              t.status, t.due_at, o.error
), parts AS (
    -- Every part of a text sent in several, so a receipt for any of them
    -- finds it (migrations/0013_transmission_parts.sql). A part row left by
    -- an earlier send of the same transmission is replaced.
    INSERT INTO dbrouter.transmission_parts (transmission_id, part, backend_id, gateway_id)
    SELECT d.id, p.part, d.backend_id, p.gateway_id
      FROM unnest($12::bigint[], $13::integer[], $14::text[]) AS p(transmission_id, part, gateway_id)
      JOIN done d ON d.id = p.transmission_id AND d.status = 'S'
    ON CONFLICT (transmission_id, part)
       DO UPDATE SET gateway_id = EXCLUDED.gateway_id, status = 'S', detail = NULL, updated_at = now()
), history AS (
    INSERT INTO dbrouter.attempts (transmission_id, attempt, error, final, requeued)
    SELECT id, attempt, coalesce(error, 'unknown error'), due_at IS NULL, status = 'Q'
      FROM done WHERE status IN ('E', 'Q')  -- Q here: requeued after a refusal
), calls AS (
    -- The `database` engine's send (gateways/database.rs), written here so
    -- it commits with the S it records: exactly once, never for a row this
    -- batch no longer owns. One call id per message, as with a gateway: the
    -- k-th message of the batch (dense_rank below) gets the k-th id drawn
    -- here. (Array indexing, not a join: joined to `done`, both CTEs were
    -- estimated at one row and nested-looped, 200 x 200 per batch of replies.)
    SELECT array_agg(nextval('dbrouter.database_backend_calls')) AS ids
      FROM (SELECT DISTINCT message_id FROM done WHERE $11::text IS NOT NULL AND status = 'S') s
), recorded AS (
    INSERT INTO dbrouter.database_backend_sends
           (call_id, batch, backend, message_id, text, in_response_to, reply_to_external_id,
            transmission_id, identity, attempt)
    SELECT calls.ids[d.k], $1, $11, d.message_id, m.text, m.in_response_to, orig.external_id,
           d.id, c.identity, d.attempt
      FROM (SELECT done.*, dense_rank() OVER (ORDER BY done.message_id) AS k
              FROM done WHERE $11::text IS NOT NULL AND done.status = 'S') d
     CROSS JOIN calls
      JOIN dbrouter.messages m ON m.id = d.message_id
      JOIN dbrouter.connections c ON c.id = d.connection_id
      LEFT JOIN dbrouter.messages orig ON orig.id = m.in_response_to
)
SELECT count(*) AS recorded FROM done
