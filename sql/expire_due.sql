-- The expiry sweep: end up to $1 transmissions whose deadline has passed (or
-- whose message was cancelled) E with the reason; see dbrouter.expire_due
-- and dbrouter.end_unsent in migrations/0002_traffic.sql.
--
-- Locks: those transmissions (FOR UPDATE SKIP LOCKED: rows a claim or
-- another sweep holds are left for the next sweep), then their messages in
-- id order, as claims and finishes do. Served by the partial index
-- transmissions_expiring, which only holds in-flight rows with a deadline,
-- so the sweep costs one index probe when nothing has expired.
SELECT dbrouter.expire_due($1)
