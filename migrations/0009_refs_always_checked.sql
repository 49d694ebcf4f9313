-- ===========================================================================
-- The transmissions' reference check runs for every INSERT, whoever writes.
--
-- 0006 let a session skip transmissions_check_refs by setting
-- dbrouter.refs_checked = on: dbrouter's own writers did, and so could any
-- session, which made the check optional. Integrity the database can
-- enforce is not optional here: the setting is gone and the trigger has no
-- WHEN.
--
-- Why this check and not foreign keys again (0001 had them; 0004 replaced
-- them with these statement-level checks): measured on one cluster, three
-- rounds each, a fresh database per round, medians:
--
--                                     skipped   this check   foreign keys
--   broadcast of 100,000, fanned out  2.93 s    3.01 s       4.11 s
--     (parts of 1,000 rows per INSERT)
--   3,000 single-row inbox INSERTs    1.93 s    2.29 s       2.18 s
--
-- The check costs ~3 % of a fan-out and ~0.12 ms per single-row INSERT;
-- foreign keys cost 40 % of a fan-out (a trigger call, an index probe and
-- a key-share row lock per row) for about the same on single rows. The
-- check is the cheaper of the two that cannot be switched off by a
-- session. (Like any trigger or foreign key, a superuser can still disable
-- it with ALTER TABLE or session_replication_role.)
-- ===========================================================================

DROP TRIGGER transmissions_check_refs ON dbrouter.transmissions;
CREATE TRIGGER transmissions_check_refs AFTER INSERT ON dbrouter.transmissions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.transmissions_check_refs();

ALTER FUNCTION dbrouter.inbox_drain() RESET dbrouter.refs_checked;
ALTER FUNCTION dbrouter.outbox_drain() RESET dbrouter.refs_checked;
ALTER FUNCTION dbrouter.expand_fanout_part(bigint, integer) RESET dbrouter.refs_checked;
ALTER FUNCTION dbrouter.broadcast(text, text[], text, timestamptz, timestamptz, integer, text)
    RESET dbrouter.refs_checked;
