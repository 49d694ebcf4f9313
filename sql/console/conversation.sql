-- The console's test page (src/console/tester.rs): the messages to and from
-- the phone the page pretends to be, since its first message ($1, an
-- inbound message id): messages from $1 up on the primary key, each kept
-- when it has a transmission on that message's connection (the unique
-- (message_id, connection_id) index). Bounded by the messages written since
-- the test began, however large the history. Takes no locks.
WITH phone AS (
    SELECT connection_id FROM dbrouter.transmissions WHERE message_id = $1 ORDER BY id LIMIT 1
)
SELECT m.id,
       m.direction::text AS direction,
       t.status::text AS status,
       m.text,
       m.created_at,
       t.last_error
  FROM phone
  JOIN dbrouter.messages m ON m.id >= $1
  JOIN dbrouter.transmissions t ON t.message_id = m.id AND t.connection_id = phone.connection_id
 ORDER BY m.id
 LIMIT 200
