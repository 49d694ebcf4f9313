-- ===========================================================================
-- The transmissions' reference check, only where a reference can be wrong.
--
-- transmissions_check_refs (0004) checks every INSERT's new transmissions:
-- that each one's message exists and that its connection is on its backend.
-- That is for hand-written SQL. dbrouter's own writers build each
-- transmission from rows they have just created or hold locked, in the same
-- statement: the inbox and outbox drains and broadcast() from the message
-- they insert and the connection they upsert; a worker's replies from the
-- message they answer (locked by the claim) and that message's sender
-- connection. For them the check re-reads what they just wrote: per reply
-- it was ~0.2 ms of a single-message inbound write (on the latency path)
-- and ~1 ms of a 200-reply write; 5 ms of a 1,000-row inbox INSERT
-- (auto_explain, with its timing overhead).
--
-- Those writers now say so with the setting dbrouter.refs_checked = on:
-- the three functions for their own duration (a function's SET clause,
-- restored when it returns), a worker for its inbound and written-sent
-- transactions (SET LOCAL, see BEGIN_KEYED in src/db.rs). The trigger's
-- WHEN skips the check then. Anyone else gets the check as before; a
-- session that sets the setting itself takes the check's job on itself.
-- ===========================================================================

DROP TRIGGER transmissions_check_refs ON dbrouter.transmissions;
CREATE TRIGGER transmissions_check_refs AFTER INSERT ON dbrouter.transmissions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    WHEN (current_setting('dbrouter.refs_checked', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION dbrouter.transmissions_check_refs();

ALTER FUNCTION dbrouter.inbox_drain() SET dbrouter.refs_checked = on;
ALTER FUNCTION dbrouter.outbox_drain() SET dbrouter.refs_checked = on;
ALTER FUNCTION dbrouter.broadcast(text, text[], text, timestamptz, timestamptz, integer, text)
    SET dbrouter.refs_checked = on;
