-- Last resort for one transmission whose outcome the database refused to
-- record (outbound_finish.sql failed for it alone, e.g. a hand-written
-- message whose counters break their CHECK): dbrouter.quarantine
-- (schema/15_rollup.sql) recounts its message's counters from its rows,
-- then ends the transmission E for good with the reason. Fenced by the
-- lease token like the finish; returns 1 if it was still this batch's, else
-- 0. Locks that transmission and its message. $1 lease token, $2
-- transmission id, $3 error.
SELECT dbrouter.quarantine($1, $2, $3)
