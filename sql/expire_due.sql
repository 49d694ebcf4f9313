-- The expiry sweep: end up to $1 transmissions whose deadline has passed (or
-- whose message was cancelled) E with the reason; see dbrouter.expire_due
-- and dbrouter.end_unsent in migrations/0002_traffic.sql.
--
-- Locks: those transmissions (FOR UPDATE SKIP LOCKED: rows a claim or
-- another sweep holds are left for the next sweep), then their messages in
-- id order, as claims and finishes do. Served by the partial index
-- transmissions_expiring, which only holds in-flight rows with a deadline,
-- so the sweep costs one index probe when nothing has expired: the probe
-- here, before the function (which otherwise planned and ran its whole
-- statement on an empty list, ~2 ms per call on an idle system).
SELECT CASE WHEN EXISTS (SELECT 1 FROM dbrouter.transmissions t
                          WHERE t.expires_at <= now() AND t.due_at IS NOT NULL)
            THEN dbrouter.expire_due($1)
            ELSE 0 END
