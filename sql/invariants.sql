-- What must hold of dbrouter's tables whenever no transaction is in flight,
-- whatever happened before: crashes, restarts, cut connections, failing
-- gateways. The fault drill (tools/chaos) checks these after its faults,
-- and every test's assert_invariants() after its own work. Read-only; no
-- locks beyond a plain read.
--
-- Each check is a query returning the ids of the rows that break it (none,
-- when it holds), under a line `-- check: <what breaks it> (<what the ids
-- are>)`. src/invariants.rs reads this file.

-- check: messages whose counters disagree with their transmissions (messages)
-- (identities of a large broadcast not yet expanded count in n_total)
SELECT m.id
  FROM dbrouter.messages m
  JOIN LATERAL (SELECT count(*) + (SELECT coalesce(sum(cardinality(f.identities)), 0)
                                     FROM dbrouter.fanouts f WHERE f.message_id = m.id) AS total,
                       count(*) FILTER (WHERE status = 'E') AS err,
                       count(*) FILTER (WHERE status IN ('S', 'D')) AS done,
                       count(*) FILTER (WHERE status = 'D') AS delivered
                  FROM dbrouter.transmissions t WHERE t.message_id = m.id) c ON true
 WHERE m.direction = 'O'
   AND (m.n_total, m.n_error, m.n_done, m.n_delivered) IS DISTINCT FROM
       (c.total::int, c.err::int, c.done::int, c.delivered::int)

-- check: messages whose status breaks the rollup rule (messages)
-- (Q: none of its transmissions claimed yet, where the rule would say P)
SELECT id FROM dbrouter.messages
 WHERE direction = 'O' AND status <> dbrouter.rollup(n_total, n_error, n_done, n_delivered)
   AND NOT (status = 'Q' AND n_error = 0 AND n_done = 0)

-- check: delivered transmissions never sent (transmissions)
SELECT id FROM dbrouter.transmissions WHERE status = 'D' AND sent_at IS NULL

-- check: parts of a transmission sent in several without it (transmissions)
SELECT p.transmission_id FROM dbrouter.transmission_parts p
 WHERE NOT EXISTS (SELECT 1 FROM dbrouter.transmissions t WHERE t.id = p.transmission_id)
