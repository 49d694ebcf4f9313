-- schema/10_rules.sql: applied by `dbrouter migrate` whenever this text changes
-- (src/schema.rs). CREATE OR REPLACE only; a function dropped or whose
-- arguments change needs a numbered migration.
--
-- The rules the rest of the schema calls: deadlines, enqueue validation
-- and identity normalisation. (The status rollup: 15_rollup.sql.)

CREATE OR REPLACE FUNCTION dbrouter.raise_enqueue_problem(source text, problem text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
BEGIN
    RAISE EXCEPTION '%: %', source, problem
        USING ERRCODE = 'check_violation',
              HINT = 'nothing from this statement was enqueued';
END
$function$;

CREATE OR REPLACE FUNCTION dbrouter.schedule_problem(priority integer, send_at timestamp with time zone, expires_at timestamp with time zone)
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
    SELECT CASE
        WHEN priority NOT BETWEEN -1000 AND 1000
            THEN format('priority %s is out of range; use -1000 to 1000 (higher goes first, default 0, replies 1)', priority)
        WHEN expires_at <= now()
            THEN format('expires_at %s has already passed', expires_at)
        WHEN expires_at <= send_at
            THEN format('expires_at %s is not after send_at %s', expires_at, send_at)
    END
$function$;

-- The deadline of an outbound message: the explicit one, else the backend's
-- default counted from when it may first be sent.
CREATE OR REPLACE FUNCTION dbrouter.deadline(explicit timestamp with time zone, send_at timestamp with time zone, is_reply boolean, b dbrouter.backends)
 RETURNS timestamp with time zone
 LANGUAGE sql
 STABLE
AS $function$
    SELECT coalesce(explicit,
                    greatest(now(), send_at)
                    + CASE WHEN is_reply THEN b.expire_replies_after ELSE b.expire_after END)
$function$;

CREATE OR REPLACE FUNCTION dbrouter.enqueue_core_problem(backend text, backend_known boolean, identity text, body text)
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
    SELECT CASE
        WHEN backend IS NULL THEN 'backend is NULL; name one of dbrouter.backends'
        WHEN NOT backend_known THEN format('unknown backend %L; add it first (dbrouter backend add %s --engine ...)', backend, backend)
        WHEN identity IS NULL THEN format('identity is NULL (backend %L)', backend)
        WHEN btrim(identity) = '' THEN format('identity is empty (backend %L)', backend)
        WHEN length(identity) > 100 THEN format('identity %L is longer than 100 characters', left(identity, 20) || '...')
        WHEN body IS NULL THEN format('text is NULL (backend %L, identity %L); send '''' for an empty message', backend, identity)
        WHEN length(body) > 10000 THEN format('text is %s characters long; the limit is 10000 (backend %L, identity %L)', length(body), backend, identity)
    END
$function$;

CREATE OR REPLACE FUNCTION dbrouter.enqueue_problem(backend text, backend_known boolean, identity text, body text, number_format text, country_code text)
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
    SELECT coalesce(
        dbrouter.enqueue_core_problem(backend, backend_known, identity, body),
        CASE WHEN number_format = 'e164'
                  AND dbrouter.normalize_identity(identity, number_format, country_code) IS NULL
             THEN format('identity %L is not a valid phone number for backend %L (number_format e164%s); write it as +<country code><number>',
                         identity, backend,
                         CASE WHEN country_code IS NULL THEN ', no country_code for national numbers'
                              ELSE ', country_code ' || country_code END)
        END)
$function$;

-- A tenant's role may enqueue only on the backends granted to its tenant
-- (dbrouter.tenant_backends); an unknown backend and one not granted get
-- the same answer, so a tenant learns nothing of others' backends. NULL
-- for a role in no tenant (the CASE stops there: no lookup).
CREATE OR REPLACE FUNCTION dbrouter.tenant_problem(p_tenant text, p_backend text, p_backend_id integer)
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
    SELECT CASE WHEN p_tenant IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM dbrouter.tenant_backends tb
                                  WHERE tb.tenant = p_tenant AND tb.backend_id = p_backend_id)
                THEN format('backend %L is unknown or not granted to tenant %L; an admin grants it: INSERT INTO dbrouter.tenant_backends (tenant, backend_id) SELECT %L, id FROM dbrouter.backends WHERE name = %L',
                            p_backend, p_tenant, p_tenant, p_backend) END
$function$;

-- The E.164 rules of normalize_identity (below), on their own.
CREATE OR REPLACE FUNCTION dbrouter.e164_identity(identity text, country_code text)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT CASE WHEN e ~ '^\+[1-9][0-9]{6,14}$' THEN e END
      FROM (SELECT CASE
                WHEN d LIKE '+%' THEN d
                WHEN d LIKE '00%' THEN '+' || substr(d, 3)
                WHEN d LIKE '0%' AND country_code IS NOT NULL THEN '+' || country_code || substr(d, 2)
                WHEN d LIKE '0%' THEN NULL
                ELSE '+' || d
            END AS e
              FROM (SELECT regexp_replace(identity, '[[:space:]().-]', '', 'g') AS d) x) y
$function$;

-- A plain CASE, so PostgreSQL inlines it: 'as-is' backends pay nothing per
-- row (a function call per identity made a 100,000-identity broadcast
-- 0.4 s slower).
CREATE OR REPLACE FUNCTION dbrouter.normalize_identity(identity text, number_format text, country_code text)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT CASE WHEN number_format IS DISTINCT FROM 'e164' THEN identity
                ELSE dbrouter.e164_identity(identity, country_code) END
$function$;

-- Pause, resume, rate limits, throttling.
CREATE OR REPLACE FUNCTION dbrouter.backend_id(p_backend text)
 RETURNS integer
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    v_id integer;
BEGIN
    SELECT id INTO v_id FROM dbrouter.backends WHERE name = p_backend;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'unknown backend %', quote_literal(p_backend)
            USING HINT = 'SELECT name FROM dbrouter.backends lists them';
    END IF;
    RETURN v_id;
END
$function$;
