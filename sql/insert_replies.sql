-- Replies of an inbound batch, written straight into messages and
-- transmissions in one statement. Runs inside the inbound claim's
-- transaction, so the replies commit together with the R marks.
--
-- A reply whose backend can send now is inserted already P under this
-- worker's lease ($5 token, $6 seconds from now): the worker sends it itself
-- right after the commit, without claiming it again, and no other worker
-- takes it unless the lease expires (the worker died). Other replies are
-- inserted Q, and only then are the workers woken (once per transaction).
--
-- Not through dbrouter.outbox: the worker already knows each reply's
-- connection and backend (those of the message it answers) and its data
-- needs no validation beyond the tables' own constraints. Not COPY: sqlx
-- sends COPY's data and its CopyDone as separate writes on a socket without
-- TCP_NODELAY, so every COPY waited for the server's delayed ACK (~40 ms per
-- batch; insert → reply sent p50 was 54 ms with COPY). unnest keeps the
-- arrays' order, so message ids follow the replies' order.
--
-- Replies get priority 1 (ahead of bulk sends on the same backend) and the
-- backend's expire_replies_after as their deadline, if it has one.
--
-- Locks: only the new rows (and KEY SHARE on the messages answered, which
-- this transaction already holds FOR UPDATE).
-- $1 connection ids, $2 backend ids, $3 texts, $4 in_response_to,
-- $5 lease token per reply (NULL: queue it), $6 lease seconds.
-- Returns each reply's transmission id, message id and position (1-based).
WITH r AS MATERIALIZED (
    SELECT nextval('dbrouter.messages_id_seq') AS mid, r.*,
           now() + (SELECT b.expire_replies_after FROM dbrouter.backends b
                     WHERE b.id = r.backend_id) AS expires_at
      FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::bigint[], $5::bigint[])
           WITH ORDINALITY AS r(connection_id, backend_id, text, in_response_to, lease_token, ord)
), m AS (
    INSERT INTO dbrouter.messages (id, direction, status, text, in_response_to, n_total,
                                   priority, expires_at)
    SELECT mid, 'O', CASE WHEN lease_token IS NULL THEN 'Q' ELSE 'P' END, text, in_response_to, 1,
           1, expires_at
      FROM r
), t AS (
    INSERT INTO dbrouter.transmissions
           (message_id, connection_id, backend_id, status, attempts, lease_token, due_at,
            priority, expires_at)
    SELECT mid, connection_id, backend_id,
           CASE WHEN lease_token IS NULL THEN 'Q' ELSE 'P' END,
           CASE WHEN lease_token IS NULL THEN 0 ELSE 1 END,
           lease_token,
           CASE WHEN lease_token IS NULL THEN now()
                ELSE clock_timestamp() + make_interval(secs => $6) END,
           1, expires_at
      FROM r
    RETURNING id, message_id
), woke AS (
    SELECT count(pg_notify('dbrouter', '')) AS n FROM r WHERE lease_token IS NULL
)
SELECT t.id, t.message_id, r.ord
  FROM t JOIN r ON r.mid = t.message_id
 CROSS JOIN woke
