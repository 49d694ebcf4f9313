-- A group of inbound messages received by `dbrouter serve`, in one
-- statement through dbrouter.inbox (its trigger validates, de-duplicates
-- gateway ids and notifies the workers once). $1 backends, $2 identities,
-- $3 texts, $4 gateway ids, $5 fields.
--
-- Locks: only new rows (and the connections' unique-index entries, taken
-- in sorted order by the trigger).
INSERT INTO dbrouter.inbox (backend, identity, text, external_id, fields)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
