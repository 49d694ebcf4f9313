-- The database-wide gauges for /metrics (src/metrics.rs): delivery reports
-- not yet applied (dbrouter.receipts holds only those) and messages from
-- phones waiting for the apps (the messages_inbound_queued partial index).
-- Takes no locks.
SELECT (SELECT count(*) FROM dbrouter.receipts) AS receipts,
       (SELECT count(*) FROM dbrouter.messages WHERE direction = 'I' AND status = 'Q') AS inbound
