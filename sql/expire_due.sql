-- The expiry sweep: end up to $1 transmissions whose deadline has passed (or
-- whose message was cancelled) E with the reason; see dbrouter.expire_due
-- and dbrouter.end_unsent in schema/40_traffic.sql.
--
-- Locks: those transmissions (FOR UPDATE SKIP LOCKED: rows a claim or
-- another sweep holds are left for the next sweep), then (the rollup
-- trigger) their messages in id order, as for every change of
-- transmissions. Served by the partial index transmissions_expiring, which
-- only holds in-flight rows with a deadline, so the sweep costs one index
-- probe when nothing has expired: the probe here, before the function
-- (which otherwise planned and ran its whole statement on an empty list, ~2
-- ms per call on an idle system). The probe reads the soonest deadline off
-- that index's first entry; written as EXISTS (... expires_at <= now()),
-- PostgreSQL chose to look for a first match with a sequential scan of the
-- whole table when none existed (23 ms per sweep during the bench's round
-- trips).
SELECT CASE WHEN (SELECT t.expires_at FROM dbrouter.transmissions t
                   WHERE t.due_at IS NOT NULL AND t.expires_at IS NOT NULL
                   ORDER BY t.expires_at
                   LIMIT 1) <= now()
            THEN dbrouter.expire_due($1)
            ELSE 0 END
