-- Claim up to $1 queued inbound messages for this worker.
--
-- Locks: the claimed `messages` rows, FOR UPDATE, until the worker's
-- transaction ends (it runs the apps, writes the replies and marks the
-- messages R/E in that same transaction). SKIP LOCKED makes concurrent
-- workers take disjoint batches without waiting; a worker that dies releases
-- its rows when its connection closes, so the claim itself is the crash
-- protection. Served by the partial index messages_inbound_queued.
SELECT m.id,
       m.text,
       m.external_id,
       m.fields,
       t.id AS transmission_id,
       c.identity,
       b.name AS backend
  FROM dbrouter.messages m
  JOIN dbrouter.transmissions t ON t.message_id = m.id
  JOIN dbrouter.connections c ON c.id = t.connection_id
  JOIN dbrouter.backends b ON b.id = c.backend_id
 WHERE m.direction = 'I' AND m.status = 'Q'
 ORDER BY m.id
 LIMIT $1
   FOR UPDATE OF m SKIP LOCKED
