-- Claim up to $2 due transmissions of backend $1 across messages (which
-- ones, in what order: sql/outbound_due.sql, the start of this statement),
-- mark them P with lease token $3 for $4 seconds, and return what the
-- sender needs.
--
-- Locks: the claimed `transmissions` rows (FOR UPDATE SKIP LOCKED), only
-- until this short transaction commits; from then on the lease protects
-- them. Messages still Q (or whose errored transmissions are being
-- retried) are locked in id order, so claims and finishes touching the
-- same messages cannot deadlock, and get their counters and status updated
-- by deltas. (outbound_write_sent.sql rolls messages up as
-- outbound_finish.sql does: change them together.)
-- (continues sql/outbound_due.sql: WITH due AS (...))
, claimed AS (
    -- An opted-out row ends E here (not sent, no attempt used); the rest
    -- are leased.
    UPDATE dbrouter.transmissions t
       SET status = CASE WHEN due.opted_out THEN 'E' ELSE 'P' END,
           lease_token = CASE WHEN due.opted_out THEN NULL ELSE $3 END,
           due_at = CASE WHEN due.opted_out THEN NULL ELSE now() + make_interval(secs => $4) END,
           attempts = t.attempts + (NOT due.opted_out)::integer,
           last_error = CASE WHEN due.opted_out THEN 'opted out' ELSE t.last_error END,
           updated_at = now()
      FROM due
     WHERE t.id = due.id
    RETURNING t.id, t.message_id, t.connection_id, t.attempts, due.was, due.opted_out
), deltas AS (
    -- retried: E rows taken again (no longer errors); refused: rows that
    -- were not errors and now are (opted out)
    SELECT message_id,
           count(*) FILTER (WHERE was = 'E' AND NOT opted_out)::integer AS retried,
           count(*) FILTER (WHERE was <> 'E' AND opted_out)::integer AS refused
      FROM claimed GROUP BY message_id
), locked AS (
    SELECT m.id, d.retried, d.refused
      FROM dbrouter.messages m JOIN deltas d ON d.message_id = m.id
     WHERE m.status = 'Q' OR d.retried > 0 OR d.refused > 0
     ORDER BY m.id
       FOR UPDATE OF m
), rolled AS (
    UPDATE dbrouter.messages m
       SET n_error = m.n_error - l.retried + l.refused,
           status = dbrouter.rollup(m.n_total, m.n_error - l.retried + l.refused, m.n_done, m.n_delivered),
           updated_at = now()
      FROM locked l
     WHERE m.id = l.id
)
SELECT c.id AS transmission_id,
       c.message_id,
       c.attempts,
       cn.identity,
       m.text,
       m.in_response_to,
       orig.external_id AS reply_to_external_id
  FROM claimed c
  JOIN dbrouter.messages m ON m.id = c.message_id
  JOIN dbrouter.connections cn ON cn.id = c.connection_id
  LEFT JOIN dbrouter.messages orig ON orig.id = m.in_response_to
 WHERE NOT c.opted_out
 ORDER BY c.message_id, c.id
