-- schema/40_traffic.sql: applied by `dbrouter migrate` whenever this text changes
-- (src/schema.rs). CREATE OR REPLACE only; a function dropped or whose
-- arguments change needs a numbered migration.
--
-- Traffic control and the message lifecycle: rate-limit tokens,
-- throttling, pause and resume, cancel, expiry, requeue, opt-outs.

-- Take up to p_wanted tokens of a backend's bucket. `granted` is how many
-- transmissions the caller may claim now; when it is 0, `wait_seconds` says
-- when the next one is due. Backends without a limit grant everything.
-- Locks the bucket row until the caller's transaction ends, so the claim
-- that follows runs under it and unused tokens can be handed back.
CREATE OR REPLACE FUNCTION dbrouter.take_tokens(p_backend_id integer, p_wanted integer, OUT granted integer, OUT wait_seconds double precision)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_rate double precision;
    v_burst double precision;
    v_tokens double precision;
    v_at timestamptz;
BEGIN
    SELECT rate_limit, coalesce(rate_burst, greatest(1, floor(rate_limit)))
      INTO v_rate, v_burst
      FROM dbrouter.backends WHERE id = p_backend_id;
    IF v_rate IS NULL THEN
        granted := p_wanted;
        wait_seconds := 0;
        RETURN;
    END IF;
    INSERT INTO dbrouter.backend_rates (backend_id, tokens, refilled_at)
    VALUES (p_backend_id, v_burst, clock_timestamp())
    ON CONFLICT (backend_id) DO NOTHING;
    SELECT tokens, refilled_at INTO v_tokens, v_at
      FROM dbrouter.backend_rates WHERE backend_id = p_backend_id FOR UPDATE;
    SELECT b.granted, b.wait_seconds, b.tokens, b.at INTO granted, wait_seconds, v_tokens, v_at
      FROM dbrouter.bucket(v_rate, v_burst, v_tokens, v_at, p_wanted) b;
    UPDATE dbrouter.backend_rates SET tokens = v_tokens, refilled_at = v_at
     WHERE backend_id = p_backend_id;
END
$function$;

-- The same for a tenant's bucket (migration 0017), taken by the claims of
-- the backends granted to a limited tenant (sql/hold_over_tenant_limits.sql).
-- `wait_seconds`: when the next token is due if fewer than wanted were
-- granted, else 0. Locks the tenant's bucket row until the caller's
-- transaction ends.
CREATE OR REPLACE FUNCTION dbrouter.take_tenant_tokens(p_tenant text, p_wanted integer, OUT granted integer, OUT wait_seconds double precision)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_rate double precision;
    v_burst double precision;
    v_tokens double precision;
    v_at timestamptz;
BEGIN
    SELECT rate_limit, coalesce(rate_burst, greatest(1, floor(rate_limit)))
      INTO v_rate, v_burst
      FROM dbrouter.tenants WHERE name = p_tenant;
    IF v_rate IS NULL THEN
        granted := p_wanted;
        wait_seconds := 0;
        RETURN;
    END IF;
    INSERT INTO dbrouter.tenant_rates (tenant, tokens, refilled_at)
    VALUES (p_tenant, v_burst, clock_timestamp())
    ON CONFLICT (tenant) DO NOTHING;
    SELECT tokens, refilled_at INTO v_tokens, v_at
      FROM dbrouter.tenant_rates WHERE tenant = p_tenant FOR UPDATE;
    SELECT b.granted, b.wait_seconds, b.tokens, b.at INTO granted, wait_seconds, v_tokens, v_at
      FROM dbrouter.bucket(v_rate, v_burst, v_tokens, v_at, p_wanted) b;
    IF granted < p_wanted THEN
        wait_seconds := (1 - v_tokens) / v_rate;
    END IF;
    UPDATE dbrouter.tenant_rates SET tokens = v_tokens, refilled_at = v_at
     WHERE tenant = p_tenant;
END
$function$;

-- A token bucket's arithmetic: refill (p_rate a second, at most p_burst)
-- from p_at to now, grant up to p_wanted whole tokens. Returns what is
-- granted, the wait for the next token when none is, and the bucket's new
-- state. The clock is read here, after the caller locked the bucket row,
-- so refills never run backwards.
CREATE OR REPLACE FUNCTION dbrouter.bucket(p_rate double precision, p_burst double precision, p_tokens double precision, p_at timestamptz, p_wanted integer, OUT granted integer, OUT wait_seconds double precision, OUT tokens double precision, OUT at timestamptz)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
BEGIN
    at := clock_timestamp();
    tokens := least(p_burst, p_tokens + p_rate * greatest(0, extract(epoch FROM at - p_at)));
    granted := least(p_wanted, floor(tokens))::integer;
    wait_seconds := CASE WHEN granted > 0 THEN 0 ELSE (1 - tokens) / p_rate END;
    tokens := tokens - granted;
END
$function$;

-- Hand back tokens a claim did not use (fewer rows were due than granted).
CREATE OR REPLACE FUNCTION dbrouter.return_tokens(p_backend_id integer, p_unused integer)
 RETURNS void
 LANGUAGE sql
AS $function$
    UPDATE dbrouter.backend_rates r
       SET tokens = least(coalesce(b.rate_burst, greatest(1, floor(b.rate_limit))), r.tokens + p_unused)
      FROM dbrouter.backends b
     WHERE r.backend_id = p_backend_id AND b.id = r.backend_id AND b.rate_limit IS NOT NULL
$function$;

-- A gateway asked us to wait: no claims for this backend until then (a later
-- deadline wins over an earlier one).
CREATE OR REPLACE FUNCTION dbrouter.throttle_backend(p_backend_id integer, p_seconds double precision)
 RETURNS void
 LANGUAGE sql
AS $function$
    UPDATE dbrouter.backends
       SET throttled_until = greatest(throttled_until, now() + make_interval(secs => p_seconds))
     WHERE id = p_backend_id
       AND (throttled_until IS NULL OR throttled_until < now() + make_interval(secs => p_seconds))
$function$;

CREATE OR REPLACE FUNCTION dbrouter.pause_backend(p_backend text, p_reason text DEFAULT 'paused by an operator'::text)
 RETURNS void
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    UPDATE dbrouter.backends
       SET paused_at = coalesce(paused_at, now()),
           pause_reason = coalesce(nullif(btrim(p_reason), ''), 'paused by an operator')
     WHERE id = dbrouter.backend_id(p_backend)
$function$;

CREATE OR REPLACE FUNCTION dbrouter.resume_backend(p_backend text)
 RETURNS void
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    UPDATE dbrouter.backends SET paused_at = NULL, pause_reason = NULL
     WHERE id = dbrouter.backend_id(p_backend)
$function$;

-- cancel_message(): the message's unsent transmissions end E "cancelled"
-- at once (ones being sent finish as the gateway answers), and so do its
-- parts still waiting. The parts are locked first (waiting for any a worker is
-- expanding now, whose transmissions are then ended with the others), so
-- no worker expands one after the unsent were ended; they are expanded
-- last, once the message is marked cancelled, straight into E. Returns how
-- many ended, both kinds.
CREATE OR REPLACE FUNCTION dbrouter.cancel_message(p_message_id bigint)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_direction char(1);
    v_parts integer[];
    n integer;
    k integer;
BEGIN
    SELECT direction INTO v_direction FROM dbrouter.messages WHERE id = p_message_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no message with id %', p_message_id
            USING HINT = 'SELECT id, text, status FROM dbrouter.messages ORDER BY id DESC LIMIT 20 lists recent ones';
    END IF;
    IF v_direction <> 'O' THEN
        RAISE EXCEPTION 'message % is inbound; only outbound messages can be cancelled', p_message_id;
    END IF;
    v_parts := ARRAY(SELECT f.part FROM dbrouter.fanouts f WHERE f.message_id = p_message_id
                      ORDER BY f.part FOR UPDATE);
    -- Transmissions before the message row: the lock order claims use.
    UPDATE dbrouter.transmissions
       SET expires_at = now()
     WHERE message_id = p_message_id AND due_at IS NOT NULL AND status = 'P';
    n := dbrouter.end_unsent(
        ARRAY(SELECT id FROM dbrouter.transmissions WHERE message_id = p_message_id AND due_at IS NOT NULL),
        'cancelled');
    UPDATE dbrouter.messages SET cancelled_at = coalesce(cancelled_at, now()), updated_at = now()
     WHERE id = p_message_id;
    FOREACH k IN ARRAY v_parts LOOP
        n := n + dbrouter.expand_fanout_part(p_message_id, k);
    END LOOP;
    RETURN n;
END
$function$;

-- Ending unsent transmissions (cancel, expiry): E with the reason, no next
-- attempt; the rollup trigger (15_rollup.sql) counts them on their
-- messages. Rows leased to a worker (P with a live lease) are left to that
-- worker. Returns how many ended. Locks: the transmissions, in id order,
-- then (the trigger) their messages in id order.
CREATE OR REPLACE FUNCTION dbrouter.end_unsent(p_ids bigint[], p_reason text)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
DECLARE
    n integer;
BEGIN
    WITH old AS (
        SELECT t.id
          FROM dbrouter.transmissions t
         WHERE t.id = ANY (p_ids) AND t.due_at IS NOT NULL
           AND (t.status <> 'P' OR t.due_at <= now())
         ORDER BY t.id
           FOR UPDATE
    )
    UPDATE dbrouter.transmissions t
       SET status = 'E', due_at = NULL, lease_token = NULL, updated_at = now(),
           last_error = coalesce(p_reason,
               (SELECT CASE WHEN m.cancelled_at IS NOT NULL THEN 'cancelled' ELSE 'expired' END
                  FROM dbrouter.messages m WHERE m.id = t.message_id))
      FROM old
     WHERE t.id = old.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$function$;

-- The expiry sweep: ends up to p_limit transmissions whose deadline passed.
-- Workers run it about once a second; SKIP LOCKED keeps sweeps and claims
-- out of each other's way.
CREATE OR REPLACE FUNCTION dbrouter.expire_due(p_limit integer DEFAULT 1000)
 RETURNS integer
 LANGUAGE sql
AS $function$
    SELECT dbrouter.end_unsent(ARRAY(
        SELECT t.id FROM dbrouter.transmissions t
         WHERE t.expires_at <= now() AND t.due_at IS NOT NULL
           AND (t.status <> 'P' OR t.due_at <= now())
         ORDER BY t.expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED), NULL)
$function$;

-- Requeue: E transmissions back to Q with their attempts reset (outbound
-- ones only if they may still be sent: not cancelled, expired or opted out).
-- An inbound message goes back to Q itself (the worker claims messages);
-- an outbound one is rolled up by the trigger (15_rollup.sql). Locks: the
-- transmissions, then their messages in id order.
CREATE OR REPLACE FUNCTION dbrouter.requeue_transmissions(p_ids bigint[])
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
DECLARE
    n integer;
BEGIN
    WITH t AS (
        UPDATE dbrouter.transmissions t
           SET status = 'Q', attempts = 0, updated_at = now(),
               due_at = CASE WHEN m.direction = 'O' THEN now() END
          FROM dbrouter.messages m
         WHERE t.id = ANY (p_ids) AND t.status = 'E' AND m.id = t.message_id
           AND (m.direction = 'I'
                OR (m.cancelled_at IS NULL
                    AND (t.expires_at IS NULL OR t.expires_at > now())
                    AND coalesce(t.last_error, '') NOT IN ('opted out', 'cancelled', 'expired')
                    AND (m.in_response_to IS NOT NULL
                         OR NOT EXISTS (SELECT 1 FROM dbrouter.opt_outs o
                                         WHERE o.connection_id = t.connection_id))))
        RETURNING t.message_id, m.direction
    ), inbound AS (
        SELECT m.id FROM dbrouter.messages m
         WHERE m.id IN (SELECT message_id FROM t WHERE direction = 'I')
         ORDER BY m.id FOR UPDATE
    ), requeued AS (
        UPDATE dbrouter.messages m SET status = 'Q', error = NULL, updated_at = now()
          FROM inbound WHERE m.id = inbound.id
    )
    SELECT count(*) INTO n FROM t;
    PERFORM pg_notify('dbrouter', '');
    RETURN n;
END
$function$;

CREATE OR REPLACE FUNCTION dbrouter.requeue_message(p_message_id bigint)
 RETURNS integer
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT dbrouter.requeue_transmissions(
        ARRAY(SELECT id FROM dbrouter.transmissions WHERE message_id = p_message_id AND status = 'E'))
$function$;

CREATE OR REPLACE FUNCTION dbrouter.requeue_backend(p_backend text)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_backend_id integer;
BEGIN
    SELECT id INTO v_backend_id FROM dbrouter.backends WHERE name = p_backend;
    IF v_backend_id IS NULL THEN
        RAISE EXCEPTION 'unknown backend %', quote_literal(p_backend)
            USING HINT = 'SELECT name FROM dbrouter.backends lists them';
    END IF;
    RETURN dbrouter.requeue_transmissions(
        ARRAY(SELECT t.id FROM dbrouter.transmissions t JOIN dbrouter.messages m ON m.id = t.message_id
               WHERE t.backend_id = v_backend_id AND t.status = 'E' AND m.direction = 'O'));
END
$function$;

-- Opt-outs by hand.
CREATE OR REPLACE FUNCTION dbrouter.opt_out(p_backend text, p_identity text, p_keyword text DEFAULT 'operator'::text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    b dbrouter.backends%ROWTYPE;
    v_identity text;
BEGIN
    SELECT * INTO b FROM dbrouter.backends WHERE id = dbrouter.backend_id(p_backend);
    v_identity := dbrouter.normalize_identity(p_identity, b.number_format, b.country_code);
    IF v_identity IS NULL OR btrim(v_identity) = '' THEN
        RAISE EXCEPTION '%', coalesce(dbrouter.enqueue_problem(p_backend, true, p_identity, '',
                                                               b.number_format, b.country_code),
                                      'identity is empty');
    END IF;
    INSERT INTO dbrouter.connections (backend_id, identity) VALUES (b.id, v_identity)
    ON CONFLICT DO NOTHING;
    INSERT INTO dbrouter.opt_outs (connection_id, keyword)
    SELECT id, p_keyword FROM dbrouter.connections WHERE backend_id = b.id AND identity = v_identity
    ON CONFLICT DO NOTHING;
END
$function$;

CREATE OR REPLACE FUNCTION dbrouter.opt_in(p_backend text, p_identity text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    b dbrouter.backends%ROWTYPE;
BEGIN
    SELECT * INTO b FROM dbrouter.backends WHERE id = dbrouter.backend_id(p_backend);
    DELETE FROM dbrouter.opt_outs o USING dbrouter.connections c
     WHERE o.connection_id = c.id AND c.backend_id = b.id
       AND c.identity = dbrouter.normalize_identity(p_identity, b.number_format, b.country_code);
    RETURN FOUND;
END
$function$;
