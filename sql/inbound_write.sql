-- An inbound chunk's writes, in one statement: the replies, written
-- straight into messages and transmissions, and the marks of the messages
-- answered. Runs inside the inbound claim's transaction, so the replies
-- commit together with the R/E marks. One statement, not two: on the
-- latency path every statement is a round trip (~0.1 ms here) and an
-- executor start. A chunk without replies (apps that only filtered, a
-- message ended E) runs it with empty reply arrays.
--
-- The replies. Each is written in one of two states
-- (registry.rs, BackendEntry::sends_replies_at_once, decides which):
-- - P under this worker's lease ($5 token, $6 seconds from now) when its
--   backend can send now: the worker sends it itself right after the
--   commit without claiming it again, and no other worker takes it unless
--   the lease expires (the worker died).
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
-- The marks: each answered message R (processed, replies written) or E
-- (with the error), with its transmission; each failure recorded in the
-- attempt history; the opt-out changes the `optout` app asked for applied.
-- When one sender says STOP and START in one chunk, the later message wins.
-- The messages are found by primary key alone, each taking its result by
-- its position in the arrays (as in outbound_finish.sql). Joined to an
-- unnest() of the results, the planner, whose statistics from just after a
-- broadcast said no inbound message was Q, chose a (cached, generic) plan
-- that scanned every queued message and re-read the arrays for each: marks
-- of 200 took 1 to 15 s while a backlog of 100,000 waited.
--
-- Locks: the new rows; the answered `messages` rows, which the claim
-- already holds FOR UPDATE; their one inbound `transmissions` row each
-- (inbound transmissions are never claimed by the outbound path, which
-- only reads rows with due_at set); the senders' `opt_outs` rows.
--
-- Replies: $1 connection ids, $2 backend ids, $3 texts, $4 in_response_to,
-- $5 lease token per reply (NULL: queue it), $6 lease seconds.
-- Marks: $7 message ids, $8 error per message (NULL = success),
-- $9 'stop' / 'start' / NULL per message, $10 the keyword that did it.
-- Returns each reply's transmission id, message id and position (1-based).
WITH r AS MATERIALIZED (
    SELECT nextval('dbrouter.messages_id_seq') AS mid,
           nextval('dbrouter.transmissions_id_seq') AS tid,
           CASE WHEN r.lease_token IS NOT NULL THEN 'P' ELSE 'Q' END AS status,
           r.*,
           now() + (SELECT b.expire_replies_after FROM dbrouter.backends b
                     WHERE b.id = r.backend_id) AS expires_at
      FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::bigint[], $5::bigint[])
           WITH ORDINALITY AS r(connection_id, backend_id, text, in_response_to, lease_token, ord)
), m AS (
    INSERT INTO dbrouter.messages (id, direction, status, text, in_response_to, n_total,
                                   priority, expires_at)
    SELECT mid, 'O', status, text, in_response_to, 1, 1, expires_at
      FROM r
), t AS (
    INSERT INTO dbrouter.transmissions
           (id, message_id, connection_id, backend_id, status, attempts, lease_token, due_at,
            priority, expires_at)
    OVERRIDING SYSTEM VALUE
    SELECT tid, mid, connection_id, backend_id, status,
           CASE WHEN status = 'Q' THEN 0 ELSE 1 END,
           lease_token,
           CASE status WHEN 'Q' THEN now()
                       ELSE clock_timestamp() + make_interval(secs => $6) END,
           1, expires_at
      FROM r
), woke AS (
    SELECT count(pg_notify('dbrouter', '')) AS n FROM r WHERE status = 'Q'
), result AS (
    SELECT x.id, ($8::text[])[x.i] AS error, ($9::text[])[x.i] AS opt_action,
           ($10::text[])[x.i] AS opt_keyword
      FROM (SELECT m.id, array_position($7::bigint[], m.id) AS i
              FROM dbrouter.messages m
             WHERE m.id = ANY ($7::bigint[]) AND m.status = 'Q') x
), marked AS (
    UPDATE dbrouter.messages m
       SET status = CASE WHEN r.error IS NULL THEN 'R' ELSE 'E' END,
           error = r.error,
           updated_at = now()
      FROM result r
     WHERE m.id = r.id AND m.status = 'Q'
    RETURNING m.id, m.status, r.error, r.opt_action, r.opt_keyword
), transmitted AS (
    UPDATE dbrouter.transmissions t
       SET status = marked.status,
           attempts = t.attempts + 1,
           last_error = marked.error,
           updated_at = now()
      FROM marked
     WHERE t.message_id = marked.id
    RETURNING t.id, t.attempts, t.connection_id, marked.id AS message_id, marked.error,
              marked.opt_action, marked.opt_keyword
), opt AS (
    SELECT DISTINCT ON (connection_id) connection_id, message_id, opt_action, opt_keyword
      FROM transmitted
     WHERE error IS NULL AND opt_action IS NOT NULL
     ORDER BY connection_id, message_id DESC
), opted_out AS (
    INSERT INTO dbrouter.opt_outs (connection_id, keyword, message_id)
    SELECT connection_id, opt_keyword, message_id FROM opt WHERE opt_action = 'stop'
    ON CONFLICT (connection_id) DO NOTHING
), opted_in AS (
    DELETE FROM dbrouter.opt_outs o
     USING opt
     WHERE opt.opt_action = 'start' AND o.connection_id = opt.connection_id
), failed AS (
    INSERT INTO dbrouter.attempts (transmission_id, attempt, error, final)
    SELECT id, attempts, error, true FROM transmitted WHERE error IS NOT NULL
)
SELECT r.tid, r.mid, r.ord
  FROM r CROSS JOIN woke
