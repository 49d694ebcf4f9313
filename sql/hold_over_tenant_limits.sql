-- After a claim of a backend granted to a rate-limited tenant, in the
-- claim's transaction: take each limited tenant's tokens for its claimed
-- transmissions ($1, the claimed ids) and put back the ones its bucket
-- cannot cover: Q again, the attempt the claim counted undone, due when the
-- tenant's next token is (dbrouter.take_tenant_tokens). Returns the ids put
-- back, each with that wait; the caller sends the rest. Transmissions without a tenant, or of a
-- tenant without a limit, are not looked at twice.
--
-- Locks: the tenants' bucket rows (dbrouter.tenant_rates), in tenant
-- order, until the claim commits, so concurrent claims of one tenant take
-- turns; the transmissions put back, which the claim already holds.
WITH claimed AS (
    SELECT t.id, m.tenant,
           row_number() OVER (PARTITION BY m.tenant ORDER BY t.priority DESC, t.id) AS n
      FROM dbrouter.transmissions t
      JOIN dbrouter.messages m ON m.id = t.message_id
     WHERE t.id = ANY ($1)
       AND m.tenant IN (SELECT name FROM dbrouter.tenants WHERE rate_limit IS NOT NULL)
), budget AS (
    SELECT w.tenant, k.granted, k.wait_seconds
      FROM (SELECT tenant, count(*)::integer AS wanted FROM claimed
             GROUP BY tenant ORDER BY tenant) w
     CROSS JOIN LATERAL dbrouter.take_tenant_tokens(w.tenant, w.wanted) k
)
UPDATE dbrouter.transmissions t
   SET status = 'Q',
       lease_token = NULL,
       attempts = t.attempts - 1,
       due_at = now() + make_interval(secs => b.wait_seconds),
       updated_at = now()
  FROM claimed c
  JOIN budget b ON b.tenant = c.tenant
 WHERE t.id = c.id AND c.n > b.granted
RETURNING t.id, b.wait_seconds
