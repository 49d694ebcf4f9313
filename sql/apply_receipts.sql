-- Apply up to $1 delivery reports (dbrouter.apply_receipts in
-- schema/50_receipts.sql): D/E on the transmissions they name, rolled up to
-- their messages (the rollup trigger), reports consumed.
--
-- Locks: the reports (FOR UPDATE SKIP LOCKED, so workers share the
-- backlog), the transmissions they change, then those transmissions'
-- messages in id order (the rollup trigger, as for every change of
-- transmissions). When no report is waiting it costs a look at the (then
-- empty or nearly empty) receipts table, here, before the function, which
-- otherwise planned and ran its whole statement (~3 ms per call on an idle
-- system until PostgreSQL settled on a generic plan, once per pooled
-- connection).
SELECT CASE WHEN EXISTS (SELECT 1 FROM dbrouter.receipts r
                          WHERE r.not_before IS NULL OR r.not_before <= now())
            THEN dbrouter.apply_receipts($1)
            ELSE 0 END
