-- Replies of an inbound batch, written straight into messages and
-- transmissions in one statement. Runs inside the inbound claim's
-- transaction, so the replies commit together with the R marks.
--
-- Each reply is written in one of three states:
-- - S, already sent, when its backend's send is nothing but a record in
--   this database that cannot fail (the `database` engine without simulated
--   failures; $7 names the backend) and no app has an outgoing phase: the
--   record is written here too, so the reply is sent exactly once, with the
--   R mark, in one statement and no later update.
-- - P under this worker's lease ($5 token, $6 seconds from now) when its
--   backend can send now: the worker sends it itself (in this transaction
--   for other database-recorded sends, else right after the commit) without
--   claiming it again, and no other worker takes it unless the lease
--   expires (the worker died).
-- - Q otherwise, and only then are the workers woken (once per transaction).
--
-- Not through dbrouter.outbox: the worker already knows each reply's
-- connection and backend (those of the message it answers) and its data
-- needs no validation beyond the tables' own constraints. Not COPY: sqlx
-- sends COPY's data and its CopyDone as separate writes on a socket without
-- TCP_NODELAY, so every COPY waited for the server's delayed ACK (~40 ms per
-- batch; insert → reply sent p50 was 54 ms with COPY). Ids are drawn from
-- the sequences up front, so the rows need no join to find each other.
--
-- Replies get priority 1 (ahead of bulk sends on the same backend) and the
-- backend's expire_replies_after as their deadline, if it has one.
--
-- Locks: only the new rows (and KEY SHARE on the messages answered, which
-- this transaction already holds FOR UPDATE).
-- $1 connection ids, $2 backend ids, $3 texts, $4 in_response_to,
-- $5 lease token per reply (NULL: queue it), $6 lease seconds,
-- $7 backend name per reply written sent (else NULL), $8 identities,
-- $9 the answered messages' gateway ids, $10 the batch (lease token) the
-- records name.
-- Returns each reply's transmission id, message id and position (1-based).
WITH r AS MATERIALIZED (
    SELECT nextval('dbrouter.messages_id_seq') AS mid,
           nextval('dbrouter.transmissions_id_seq') AS tid,
           CASE WHEN r.sent_as IS NOT NULL THEN 'S'
                WHEN r.lease_token IS NOT NULL THEN 'P'
                ELSE 'Q' END AS status,
           r.*,
           now() + (SELECT b.expire_replies_after FROM dbrouter.backends b
                     WHERE b.id = r.backend_id) AS expires_at
      FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::bigint[], $5::bigint[],
                  $7::text[], $8::text[], $9::text[])
           WITH ORDINALITY AS r(connection_id, backend_id, text, in_response_to, lease_token,
                                sent_as, identity, reply_to_external_id, ord)
), m AS (
    INSERT INTO dbrouter.messages (id, direction, status, text, in_response_to, n_total,
                                   n_done, priority, expires_at, sent_at)
    SELECT mid, 'O', status, text, in_response_to, 1,
           (status = 'S')::integer, 1, expires_at, CASE WHEN status = 'S' THEN now() END
      FROM r
), t AS (
    INSERT INTO dbrouter.transmissions
           (id, message_id, connection_id, backend_id, status, attempts, lease_token, due_at,
            priority, expires_at, sent_at)
    OVERRIDING SYSTEM VALUE
    SELECT tid, mid, connection_id, backend_id, status,
           CASE WHEN status = 'Q' THEN 0 ELSE 1 END,
           CASE WHEN status = 'P' THEN lease_token END,
           CASE status WHEN 'Q' THEN now()
                       WHEN 'P' THEN clock_timestamp() + make_interval(secs => $6) END,
           1, expires_at, CASE WHEN status = 'S' THEN now() END
      FROM r
), recorded AS (
    -- The `database` engine's send: one call (id) per reply, as in
    -- outbound_finish.sql.
    INSERT INTO dbrouter.database_backend_sends
           (call_id, batch, backend, message_id, text, in_response_to, reply_to_external_id,
            transmission_id, identity, attempt)
    SELECT nextval('dbrouter.database_backend_calls'), $10, sent_as, mid, text, in_response_to,
           reply_to_external_id, tid, identity, 1
      FROM r WHERE status = 'S'
), woke AS (
    SELECT count(pg_notify('dbrouter', '')) AS n FROM r WHERE status = 'Q'
)
SELECT r.tid, r.mid, r.ord
  FROM r CROSS JOIN woke
