-- One part of a long message from a phone, from an SMPP bind
-- (dbrouter.receive_part, schema/30_enqueue.sql): held, or with it the
-- message completed into dbrouter.inbox. $1 backend, $2 sender, $3
-- reference, $4 total parts, $5 this part's number, $6 its text.
--
-- Locks: the message's advisory lock, until this transaction ends; its
-- parts; the new inbox rows.
SELECT dbrouter.receive_part($1, $2, $3, $4, $5, $6)
