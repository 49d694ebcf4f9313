-- A message's transmissions for its console page (src/console/messages.rs):
-- the first 100 by id, on the (message_id, connection_id) unique index; a
-- broadcast's total is on the message (n_total). Takes no locks.
SELECT t.id,
       b.name AS backend,
       c.identity,
       t.status::text AS status,
       t.attempts,
       t.due_at,
       t.sent_at,
       t.delivered_at,
       t.external_id,
       t.last_error,
       t.expires_at
  FROM dbrouter.transmissions t
  JOIN dbrouter.connections c ON c.id = t.connection_id
  JOIN dbrouter.backends b ON b.id = t.backend_id
 WHERE t.message_id = $1
 ORDER BY t.id
 LIMIT 100
