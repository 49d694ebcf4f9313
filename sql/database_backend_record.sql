-- The `database` backend's "gateway": record the send calls of one batch, a
-- row per accepted identity, each call (one message) with its own call id.
-- Used only with "own_commit": true (by default the finish statement writes
-- these rows with the S, see outbound_finish.sql). Runs on its own
-- connection and commits on its own, like a real gateway would, so a crash
-- between this and the S commit shows up as a duplicate send. Locks nothing
-- but the inserted rows.
-- $1 backend, $2 batch (lease token), then one array element per row:
-- $3 call index in the batch, $4 message id, $5 text, $6 in_response_to,
-- $7 reply-to external id, $8 transmission id, $9 identity, $10 attempt.
WITH r AS (
    SELECT *
      FROM unnest($3::integer[], $4::bigint[], $5::text[], $6::bigint[], $7::text[],
                  $8::bigint[], $9::text[], $10::integer[])
           AS r(call, message_id, text, in_response_to, reply_to_external_id,
                transmission_id, identity, attempt)
), calls AS (
    SELECT call, nextval('dbrouter.database_backend_calls') AS call_id
      FROM (SELECT DISTINCT call FROM r) c
)
INSERT INTO dbrouter.database_backend_sends
       (call_id, batch, backend, message_id, text, in_response_to, reply_to_external_id,
        transmission_id, identity, attempt)
SELECT calls.call_id, $2, $1, r.message_id, r.text, r.in_response_to, r.reply_to_external_id,
       r.transmission_id, r.identity, r.attempt
  FROM r JOIN calls USING (call)
