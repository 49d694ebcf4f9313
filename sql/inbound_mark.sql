-- Mark claimed inbound messages R (processed, replies queued) or E (with the
-- error), with their transmission, and record each failure in the attempt
-- history. $1: message ids, $2: error per message (NULL = success).
--
-- Locks: the same `messages` rows the claim already holds, plus their one
-- `transmissions` row each (inbound transmissions are never claimed by the
-- outbound path, which only reads rows with due_at set).
WITH result AS (
    SELECT * FROM unnest($1::bigint[], $2::text[]) AS r(id, error)
), marked AS (
    UPDATE dbrouter.messages m
       SET status = CASE WHEN r.error IS NULL THEN 'R' ELSE 'E' END,
           error = r.error,
           updated_at = now()
      FROM result r
     WHERE m.id = r.id AND m.status = 'Q'
    RETURNING m.id, m.status, r.error
), transmitted AS (
    UPDATE dbrouter.transmissions t
       SET status = marked.status,
           attempts = t.attempts + 1,
           last_error = marked.error,
           updated_at = now()
      FROM marked
     WHERE t.message_id = marked.id
    RETURNING t.id, t.attempts, marked.error
)
INSERT INTO dbrouter.attempts (transmission_id, attempt, error, final)
SELECT id, attempts, error, true FROM transmitted WHERE error IS NOT NULL
