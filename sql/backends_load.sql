-- The backend rows a worker sends through. Read-only, no locks; workers run
-- it at start, when a backend changes (the backends_changed trigger notifies
-- them) and at every poll interval.
SELECT id, name, engine, config, batch_size, enabled, updated_at
  FROM dbrouter.backends
 ORDER BY name
