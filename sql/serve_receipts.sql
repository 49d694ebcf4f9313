-- A group of delivery reports received by `dbrouter serve`, appended in one
-- statement; workers apply them later in batches (sql/apply_receipts.sql),
-- so thousands of reports for one broadcast never wait on its message row.
-- $1 backend ids, $2 transmission ids, $3 gateway ids, $4 outcomes (D/E/B),
-- $5 details.
--
-- Locks: only the new rows.
INSERT INTO dbrouter.receipts (backend_id, transmission_id, gateway_id, outcome, detail)
SELECT * FROM unnest($1::integer[], $2::bigint[], $3::text[], $4::text[], $5::text[])
