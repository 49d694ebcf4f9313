-- Deliver the long messages from phones whose parts have waited longer than
-- $1 seconds for the rest, as they are and flagged (dbrouter.flush_parts,
-- schema/30_enqueue.sql). A look at the (usually empty) table first, so an
-- idle system pays one probe.
--
-- Locks: each such message's advisory lock (as dbrouter.receive_part takes
-- it), then its parts, deleted.
SELECT CASE WHEN EXISTS (SELECT 1 FROM dbrouter.inbound_parts p
                          WHERE p.received_at < now() - make_interval(secs => $1))
            THEN dbrouter.flush_parts(make_interval(secs => $1))
            ELSE 0 END
