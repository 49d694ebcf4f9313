-- Last resort for one transmission whose outcome the database refused to
-- record (outbound_finish.sql failed for it alone, e.g. a hand-written row
-- whose message counters break their CHECK): end it E for good with the
-- reason, and mark its message E, without touching the counters that broke.
-- Fenced by the lease token like the finish. Locks that transmission and its
-- message. $1 lease token, $2 transmission id, $3 error.
WITH t AS (
    UPDATE dbrouter.transmissions t
       SET status = 'E', lease_token = NULL, due_at = NULL, last_error = $3, updated_at = now()
     WHERE t.id = $2 AND t.lease_token = $1 AND t.status = 'P'
    RETURNING t.id, t.message_id, t.attempts
), history AS (
    INSERT INTO dbrouter.attempts (transmission_id, attempt, error, final)
    SELECT id, attempts, $3, true FROM t
)
UPDATE dbrouter.messages m
   SET status = 'E', updated_at = now()
  FROM t
 WHERE m.id = t.message_id
