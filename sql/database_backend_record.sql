-- The `database` backend's "gateway": record one send call, a row per
-- accepted identity. Runs on its own connection and commits on its own, like
-- a real gateway would, so a crash between this and the S commit shows up as
-- a duplicate send. Locks nothing but the inserted rows.
-- $1 backend, $2 batch (lease token), $3 message id, $4 text,
-- $5 in_response_to, $6 reply-to external id, $7 transmission ids,
-- $8 identities, $9 attempts.
INSERT INTO dbrouter.database_backend_sends
       (call_id, batch, backend, message_id, text, in_response_to, reply_to_external_id,
        transmission_id, identity, attempt)
SELECT c.call_id, $2, $1, $3, $4, $5, $6, r.transmission_id, r.identity, r.attempt
  FROM (SELECT nextval('dbrouter.database_backend_calls') AS call_id) c,
       unnest($7::bigint[], $8::text[], $9::integer[]) AS r(transmission_id, identity, attempt)
