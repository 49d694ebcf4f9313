-- ===========================================================================
-- Per-tenant rate limits, beside the per-backend ones: a tenant's
-- transmissions are sent at most rate_limit a second (bursts of rate_burst)
-- across every worker and backend. A token bucket row per limited tenant,
-- as dbrouter.backend_rates is per backend (dbrouter.take_tenant_tokens,
-- schema/40_traffic.sql); claims of the backends granted to a limited
-- tenant put back what its bucket cannot cover (sql/hold_over_tenant_limits.sql).
-- A tenant without a limit, and every message without a tenant, cost the
-- claim nothing.
-- ===========================================================================

ALTER TABLE dbrouter.tenants
    ADD COLUMN rate_limit double precision
        CONSTRAINT tenant_rate_limit_positive CHECK (rate_limit > 0 AND rate_limit <= 1000000),
    ADD COLUMN rate_burst integer
        CONSTRAINT tenant_rate_burst_range CHECK (rate_burst BETWEEN 1 AND 1000000);

CREATE TABLE dbrouter.tenant_rates (
    tenant       text PRIMARY KEY REFERENCES dbrouter.tenants ON DELETE CASCADE,
    tokens       double precision NOT NULL,
    refilled_at  timestamptz NOT NULL
);
