-- The console's message log (src/console/messages.rs): newest first, 50 a
-- page (51 are read to know whether there is another), the next page being
-- the messages below the last id shown. Every filter is optional ($n IS
-- NULL). Messages are walked backwards on their primary key and each is
-- checked against the filters, so a search for something recent returns at
-- once; a search for something rare walks far (the console's statement
-- timeout stops it, and a date range narrows it). The identity and backend
-- filters look the message's transmissions up by (message_id, ...) on the
-- unique index; there is no index by identity on purpose: it would cost
-- every transmission the workers write. Takes no locks.
SELECT m.id,
       m.direction::text AS direction,
       m.status::text AS status,
       m.text,
       m.created_at,
       m.n_total,
       first.identity,
       first.backend
  FROM dbrouter.messages m
  -- LEFT: a large broadcast has no transmissions until its parts are expanded.
  LEFT JOIN LATERAL (
       SELECT c.identity, b.name AS backend
         FROM dbrouter.transmissions t
         JOIN dbrouter.connections c ON c.id = t.connection_id
         JOIN dbrouter.backends b ON b.id = t.backend_id
        WHERE t.message_id = m.id
        ORDER BY t.id LIMIT 1) first ON true
 WHERE ($1::bigint IS NULL OR m.id < $1)
   AND ($2::text IS NULL OR m.text ILIKE '%' || $2 || '%' ESCAPE '\')
   AND ($3::text IS NULL OR m.status = $3::char)
   AND ($4::text IS NULL OR m.direction = $4::char)
   AND ($5::timestamptz IS NULL OR m.created_at >= $5)
   AND ($6::timestamptz IS NULL OR m.created_at < $6)
   AND ($7::text IS NULL OR EXISTS (
           SELECT 1 FROM dbrouter.transmissions t
             JOIN dbrouter.connections c ON c.id = t.connection_id
            WHERE t.message_id = m.id AND c.identity = $7))
   AND ($8::text IS NULL OR EXISTS (
           SELECT 1 FROM dbrouter.transmissions t
             JOIN dbrouter.backends b ON b.id = t.backend_id
            WHERE t.message_id = m.id AND b.name = $8))
 ORDER BY m.id DESC
 LIMIT 51
