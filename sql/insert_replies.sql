-- Replies of an inbound batch, written straight into messages and
-- transmissions in one statement, then one wake-up for the workers. Runs
-- inside the inbound claim's transaction, so the replies commit together
-- with the R marks.
--
-- Not through dbrouter.outbox: the worker already knows each reply's
-- connection and backend (those of the message it answers) and its data
-- needs no validation beyond the tables' own constraints, so the staging
-- insert and delete, the checks and the connection upsert are skipped.
-- Not COPY: sqlx sends COPY's data and its CopyDone as separate writes on a
-- socket without TCP_NODELAY, so every COPY waited for the server's delayed
-- ACK (~40 ms per batch; insert → reply sent p50 was 54 ms with COPY).
-- unnest keeps the order of the arrays, so message ids follow the replies'
-- order. Locks: only the new rows (and KEY SHARE on the messages answered,
-- which this transaction already holds FOR UPDATE).
-- $1 connection ids, $2 backend ids, $3 texts, $4 in_response_to.
WITH r AS MATERIALIZED (
    SELECT nextval('dbrouter.messages_id_seq') AS mid, r.*
      FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::bigint[])
           AS r(connection_id, backend_id, text, in_response_to)
), m AS (
    INSERT INTO dbrouter.messages (id, direction, status, text, in_response_to, n_total)
    SELECT mid, 'O', 'Q', text, in_response_to, 1 FROM r
), t AS (
    INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id, status, due_at)
    SELECT mid, connection_id, backend_id, 'Q', now() FROM r
    RETURNING 1
)
SELECT pg_notify('dbrouter', '') WHERE EXISTS (SELECT 1 FROM t)
