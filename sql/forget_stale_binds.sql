-- The SMPP bind states of workers that died (no report for an hour; a live
-- worker reports every 30 s): dbrouter.binds is a handful of rows, and
-- nothing on a message's path reads or locks it.
DELETE FROM dbrouter.binds WHERE seen_at < now() - interval '1 hour'
