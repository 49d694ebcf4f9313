-- ===========================================================================
-- Who enqueued each message: the role that inserted it into the inbox or
-- outbox or called broadcast() (dbrouter.caller(), schema/90_roles.sql),
-- written by the drains. NULL for replies (the worker writes them) and for
-- messages older than this migration. An enqueueing role sees and cancels
-- only its own messages through dbrouter.my_messages and
-- dbrouter.cancel_my_message.
--
-- Nullable without a default: adding it rewrites nothing. No index: an
-- application looks its messages up by id (or client_key), and an index here
-- would cost every enqueue of every message.
-- ===========================================================================

ALTER TABLE dbrouter.messages ADD COLUMN enqueued_by text;

COMMENT ON COLUMN dbrouter.messages.enqueued_by IS 'the role that enqueued it (dbrouter.caller()); NULL for replies';
