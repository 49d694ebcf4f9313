-- The backend rows a worker sends through. Read-only, no locks; workers run
-- it at start, when a backend changes (the backends_changed trigger notifies
-- them) and at every poll interval.
--
-- `tenant_limited`: the backend is granted to a tenant with a rate limit,
-- so its claims take that tenant's tokens too (outbound.rs claim_limited).
SELECT id, name, engine, config, batch_size, enabled,
       pause_reason, rate_limit IS NOT NULL AS rate_limited, throttled_until,
       EXISTS (SELECT 1 FROM dbrouter.tenant_backends tb
                 JOIN dbrouter.tenants tn ON tn.name = tb.tenant
                WHERE tb.backend_id = b.id AND tn.rate_limit IS NOT NULL) AS tenant_limited
  FROM dbrouter.backends b
 ORDER BY name
