-- Apply up to $1 delivery reports (dbrouter.apply_receipts in
-- migrations/0003_gateways.sql): D/E on the transmissions they name, rolled
-- up to their messages, reports consumed.
--
-- Locks: the reports (FOR UPDATE SKIP LOCKED, so workers share the backlog),
-- the transmissions they change, then those transmissions' messages in id
-- order, as claims and finishes do. Costs one index probe when no report
-- is waiting.
SELECT dbrouter.apply_receipts($1)
