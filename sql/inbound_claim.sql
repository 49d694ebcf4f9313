-- Claim up to $1 queued inbound messages for this worker.
--
-- Locks: the claimed `messages` rows, FOR UPDATE, until the worker's
-- transaction ends (it runs the apps, writes the replies and marks the
-- messages R/E in that same transaction). SKIP LOCKED makes concurrent
-- workers take disjoint batches without waiting; a worker that dies releases
-- its rows when its connection closes, so the claim itself is the crash
-- protection. Served by the partial index messages_inbound_queued.
--
-- The sender is looked up with a LEFT JOIN LATERAL ... LIMIT 1: a message
-- written by hand without its transmission (or with several) comes back
-- once, with a NULL sender, and the worker ends it E instead of skipping it
-- forever or answering it twice. The lateral takes one transmission by the
-- (message_id, connection_id) index and only then joins that one row to its
-- connection and backend (primary-key probes): with the joins under the
-- LIMIT 1 (and ORDER BY t.id, the pkey), statistics from
-- before a large enqueue (300 transmissions per message, say) made the
-- planner merge-join against the whole connections table once per message
-- (31 s for a claim of 1,000 at 42,000 connections; auto_explain).
--
-- The rows are locked first and only then looked up: rows that other
-- workers hold are skipped before any lookup is spent on them (with the
-- lookups under the lock, a claim behind a busy queue looked up 2,157
-- senders to take 200).
WITH claimed AS MATERIALIZED (
    SELECT m.id, m.text, m.external_id, m.fields
      FROM dbrouter.messages m
     WHERE m.direction = 'I' AND m.status = 'Q'
     ORDER BY m.id
     LIMIT $1
       FOR UPDATE OF m SKIP LOCKED
)
SELECT m.id,
       m.text,
       m.external_id,
       m.fields,
       s.identity,
       s.backend,
       s.connection_id,
       s.backend_id
  FROM claimed m
  LEFT JOIN LATERAL (
        SELECT c.identity, b.name AS backend, c.id AS connection_id, c.backend_id
          FROM (SELECT t.connection_id
                  FROM dbrouter.transmissions t
                 WHERE t.message_id = m.id
                 ORDER BY t.connection_id  -- the (message_id, connection_id) index's order
                 LIMIT 1) t
          JOIN dbrouter.connections c ON c.id = t.connection_id
          JOIN dbrouter.backends b ON b.id = c.backend_id) s ON true
 ORDER BY m.id
