-- The backend rows a worker sends through. Read-only, no locks; workers run
-- it at start, when a backend changes (the backends_changed trigger notifies
-- them) and at every poll interval.
SELECT id, name, engine, config, batch_size, enabled, updated_at,
       pause_reason, rate_limit IS NOT NULL AS rate_limited, throttled_until
  FROM dbrouter.backends
 ORDER BY name
