-- The gauges of each backend for /metrics (src/metrics.rs), every 5 s in a
-- worker started with --metrics-addr. Due transmissions are counted on the
-- transmissions_in_flight partial index (due_at IS NOT NULL: only what is
-- queued or leased, never the history), one backend's rows at a time; the
-- binds are every worker's (dbrouter.bind_states). Takes no locks.
SELECT b.name,
       d.due,
       coalesce(d.oldest, 0) AS oldest,
       b.paused_at IS NOT NULL AS paused,
       coalesce(b.throttled_until > now(), false) AS throttled,
       (SELECT r.tokens FROM dbrouter.backend_rates r WHERE r.backend_id = b.id) AS tokens,
       (SELECT count(*) FROM dbrouter.bind_states s WHERE s.backend = b.name AND s.up) AS binds_up
  FROM dbrouter.backends b
 CROSS JOIN LATERAL (
       SELECT count(*) AS due, extract(epoch FROM now() - min(t.due_at))::float8 AS oldest
         FROM dbrouter.transmissions t
        WHERE t.backend_id = b.id AND t.due_at IS NOT NULL AND t.due_at <= now()) d
 ORDER BY b.name
