-- Mark claimed inbound messages R (processed, replies queued) or E (with the
-- error), with their transmission, record each failure in the attempt
-- history, and apply opt-out changes the `optout` app asked for.
-- $1: message ids, $2: error per message (NULL = success),
-- $3: 'stop' / 'start' / NULL per message, $4: the keyword that did it.
--
-- Locks: the same `messages` rows the claim already holds, plus their one
-- `transmissions` row each (inbound transmissions are never claimed by the
-- outbound path, which only reads rows with due_at set), and the senders'
-- `opt_outs` rows. When one sender says STOP and START in one batch, the
-- later message wins.
--
-- The messages are found by primary key alone, each taking its result by
-- its position in the arrays (as in outbound_finish.sql). Joined to an
-- unnest() of the results, the planner, whose statistics from just after a
-- broadcast said no inbound message was Q, chose a (cached, generic) plan
-- that scanned every queued message and re-read the arrays for each: marks
-- of 200 took 1 to 15 s while a backlog of 100,000 waited.
WITH result AS (
    SELECT x.id, ($2::text[])[x.i] AS error, ($3::text[])[x.i] AS opt_action,
           ($4::text[])[x.i] AS opt_keyword
      FROM (SELECT m.id, array_position($1::bigint[], m.id) AS i
              FROM dbrouter.messages m
             WHERE m.id = ANY ($1::bigint[]) AND m.status = 'Q') x
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
)
INSERT INTO dbrouter.attempts (transmission_id, attempt, error, final)
SELECT id, attempts, error, true FROM transmitted WHERE error IS NOT NULL
