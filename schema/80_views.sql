-- schema/80_views.sql: applied by `dbrouter migrate` whenever this text changes
-- (src/schema.rs). CREATE OR REPLACE only; a function dropped or whose
-- arguments change needs a numbered migration.
--
-- The operators' views (README, "Administering from psql").

-- Operator views.
CREATE OR REPLACE VIEW dbrouter.stats AS
SELECT m.direction,
       t.status,
       b.name AS backend,
       count(*) AS transmissions,
       count(DISTINCT t.message_id) AS messages,
       now() - min(t.created_at) AS oldest_age
  FROM dbrouter.transmissions t
  JOIN dbrouter.messages m ON m.id = t.message_id
  JOIN dbrouter.backends b ON b.id = t.backend_id
 GROUP BY m.direction, t.status, b.name;

CREATE OR REPLACE VIEW dbrouter.recent_errors AS
SELECT a.failed_at,
       b.name AS backend,
       c.identity,
       m.direction,
       t.message_id,
       a.transmission_id,
       a.attempt,
       a.final,
       a.error,
       a.requeued
  FROM (SELECT * FROM dbrouter.attempts ORDER BY id DESC LIMIT 100) a
  JOIN dbrouter.transmissions t ON t.id = a.transmission_id
  JOIN dbrouter.messages m ON m.id = t.message_id
  JOIN dbrouter.connections c ON c.id = t.connection_id
  JOIN dbrouter.backends b ON b.id = t.backend_id
 ORDER BY a.id DESC;

CREATE OR REPLACE VIEW dbrouter.opted_out AS
SELECT b.name AS backend, c.identity, o.keyword, o.message_id, o.created_at
  FROM dbrouter.opt_outs o
  JOIN dbrouter.connections c ON c.id = o.connection_id
  JOIN dbrouter.backends b ON b.id = c.backend_id;

-- The parts still waiting, for operators (also in `dbrouter status`).
CREATE OR REPLACE VIEW dbrouter.fanouts_waiting AS
SELECT f.message_id,
       b.name AS backend,
       count(*) AS parts,
       sum(cardinality(f.identities)) AS identities,
       now() - min(f.created_at) AS oldest_age,
       count(f.error) AS failing_parts,
       min(f.error) AS error
  FROM dbrouter.fanouts f
  JOIN dbrouter.backends b ON b.id = f.backend_id
 GROUP BY f.message_id, b.name;

-- Every SMPP bind of every worker (also in `dbrouter status`). A worker
-- reports its binds every 30 s: one silent for 90 s has died or lost the
-- database, and its binds show as down and stale (the live workers' reports delete them
-- after an hour).
CREATE OR REPLACE VIEW dbrouter.bind_states AS
SELECT be.name AS backend,
       b.worker,
       b.bind,
       b.up AND NOT s.stale AS up,
       CASE WHEN s.stale
            THEN format('stale: its worker has not reported since %s (it died or lost the database); it said: %s',
                        to_char(b.seen_at, 'YYYY-MM-DD HH24:MI:SS'), b.state)
            ELSE b.state END AS state,
       b.since,
       b.seen_at
  FROM dbrouter.binds b
  JOIN dbrouter.backends be ON be.id = b.backend_id
 CROSS JOIN LATERAL (SELECT b.seen_at < now() - interval '90 seconds' AS stale) s;
