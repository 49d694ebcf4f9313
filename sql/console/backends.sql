-- The console's backends page (src/console/backends.rs), refreshed every few
-- seconds while it is open. Per backend: its state; what is due now, leased
-- and scheduled later, and the age of the oldest due transmission (on the
-- transmissions_in_flight partial index, as /metrics: only what is queued or
-- leased, never the history); the sends and failures of the last 15 minutes,
-- counted among the newest 100,000 transmissions and 10,000 failed attempts
-- (walked backwards on their primary keys, so a page load never scans the
-- history: a send of a transmission older than that is not counted); and
-- its SMPP binds. Takes no locks.
WITH recent AS (
    SELECT t.backend_id,
           count(*) FILTER (WHERE t.sent_at > now() - interval '15 minutes') AS sent,
           count(*) FILTER (WHERE t.delivered_at > now() - interval '15 minutes') AS delivered
      FROM (SELECT backend_id, sent_at, delivered_at
              FROM dbrouter.transmissions ORDER BY id DESC LIMIT 100000) t
     GROUP BY t.backend_id
), failed AS (
    SELECT t.backend_id, count(*) AS failed
      FROM (SELECT transmission_id, failed_at
              FROM dbrouter.attempts ORDER BY id DESC LIMIT 10000) a
      JOIN dbrouter.transmissions t ON t.id = a.transmission_id
     WHERE a.failed_at > now() - interval '15 minutes'
     GROUP BY t.backend_id
)
SELECT b.name,
       b.engine,
       b.pause_reason,
       CASE WHEN b.throttled_until > now() THEN b.throttled_until END AS throttled_until,
       b.rate_limit,
       d.due,
       d.oldest_due_seconds,
       d.leased,
       d.later,
       coalesce(r.sent, 0) AS sent,
       coalesce(r.delivered, 0) AS delivered,
       coalesce(f.failed, 0) AS failed,
       (SELECT count(*) FROM dbrouter.bind_states s WHERE s.backend = b.name AND s.up) AS binds_up,
       (SELECT count(*) FROM dbrouter.bind_states s WHERE s.backend = b.name) AS binds
  FROM dbrouter.backends b
 CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE t.status = 'Q' AND t.due_at <= now()) AS due,
              extract(epoch FROM now() - min(t.due_at) FILTER (WHERE t.status = 'Q' AND t.due_at <= now()))::float8
                  AS oldest_due_seconds,
              count(*) FILTER (WHERE t.status = 'P') AS leased,
              count(*) FILTER (WHERE t.due_at > now()) AS later
         FROM dbrouter.transmissions t
        WHERE t.backend_id = b.id AND t.due_at IS NOT NULL) d
  LEFT JOIN recent r ON r.backend_id = b.id
  LEFT JOIN failed f ON f.backend_id = b.id
 ORDER BY b.name
