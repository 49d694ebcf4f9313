-- One SMPP engine's bind states (src/gateways/smpp.rs, report): on every
-- change and every 30 s. Locks only this worker's rows of dbrouter.binds,
-- which nothing on a message's path reads.
--
-- $1 backend name, $2 worker (host:pid), $3 engine instance, $4 the state
-- of each bind in order (bind 0 first), $5 the state that means "up".
-- `since` moves only when the state changes.
--
-- The same statement forgets the binds of workers that died (no report for
-- an hour; a live worker reports every 30 s). Locks those rows too; the
-- table is a handful of rows and nothing on a message's path reads it.
WITH forgotten AS (
    DELETE FROM dbrouter.binds WHERE seen_at < now() - interval '1 hour'
)
INSERT INTO dbrouter.binds AS b (backend_id, worker, bind, instance, up, state)
SELECT be.id, $2, s.n - 1, $3, s.state = $5, s.state
  FROM dbrouter.backends be,
       unnest($4::text[]) WITH ORDINALITY AS s (state, n)
 WHERE be.name = $1
    ON CONFLICT (backend_id, worker, bind) DO UPDATE
   SET instance = excluded.instance,
       up = excluded.up,
       state = excluded.state,
       since = CASE WHEN b.state = excluded.state THEN b.since ELSE now() END,
       seen_at = now()
