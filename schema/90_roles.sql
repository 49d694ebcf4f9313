-- schema/90_roles.sql: applied by `dbrouter migrate` whenever this text changes
-- (src/schema.rs). CREATE OR REPLACE only; a function dropped or whose
-- arguments change needs a numbered migration.
--
-- Least privilege: who enqueued a message, what an enqueueing role may see
-- and cancel of its own, and dbrouter.grant_roles, which `dbrouter migrate`
-- runs every time to create the four roles and grant each exactly its list
-- (README, "Roles"). Nothing in dbrouter's schema is granted to PUBLIC.

-- The role on whose behalf a statement runs, also inside a SECURITY DEFINER
-- function (where current_user is the owner): the role the session SET ROLE
-- to, else the one it logged in as.
CREATE OR REPLACE FUNCTION dbrouter.caller()
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
    SELECT CASE WHEN current_setting('role') = 'none' THEN session_user::text
                ELSE current_setting('role') END
$function$;

-- The calling role's tenant (dbrouter.tenant_roles), NULL when it is in
-- none. Runs as the owner: an enqueueing role cannot read tenant_roles.
CREATE OR REPLACE FUNCTION dbrouter.caller_tenant()
 RETURNS text
 LANGUAGE sql
 STABLE
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT tenant FROM dbrouter.tenant_roles WHERE role = dbrouter.caller()
$function$;

-- Whether a message is the caller's: its tenant's, or (tenant NULL) one it
-- enqueued itself. The row-level security policy of the enqueue role, the
-- view below and the *_my_message functions all ask this. The caller and
-- its tenant are passed in (scalar subqueries, evaluated once per
-- statement) rather than looked up per row.
CREATE OR REPLACE FUNCTION dbrouter.is_mine(p_tenant text, p_enqueued_by text, p_caller text, p_caller_tenant text)
 RETURNS boolean
 LANGUAGE sql
 IMMUTABLE
AS $function$
    SELECT CASE WHEN p_tenant IS NOT NULL THEN p_tenant = p_caller_tenant
                ELSE p_enqueued_by = p_caller END
$function$;

-- The messages of the calling role (its tenant's, or its own), with their
-- progress; an application's window onto its own work. Lookups by id or
-- client_key use their indexes; nothing indexes tenant or enqueued_by (see
-- migrations 0015, 0016). The same rows as SELECT on dbrouter.messages,
-- whose row-level security asks the same question.
CREATE OR REPLACE VIEW dbrouter.my_messages WITH (security_barrier) AS
SELECT id, direction, status, text, client_key, priority, send_at, expires_at, cancelled_at,
       n_total, n_done, n_delivered, n_error, encoding, segments, error,
       created_at, sent_at, delivered_at, tenant
  FROM dbrouter.messages
 WHERE dbrouter.is_mine(tenant, enqueued_by, (SELECT dbrouter.caller()), (SELECT dbrouter.caller_tenant()));

-- Per tenant and status, for operators (a scan of messages, like stats).
CREATE OR REPLACE VIEW dbrouter.tenant_stats AS
SELECT tenant, direction, status, count(*) AS messages, sum(n_total) AS transmissions,
       sum(segments * n_total) AS segments, max(created_at) AS latest
  FROM dbrouter.messages
 WHERE tenant IS NOT NULL
 GROUP BY tenant, direction, status;

-- Cancel one of the calling role's own outbound messages (as
-- dbrouter.cancel_message, which only admins may call on any message).
-- Another role's message is answered exactly as a missing one.
CREATE OR REPLACE FUNCTION dbrouter.cancel_my_message(p_message_id bigint)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM dbrouter.check_mine(p_message_id);
    RETURN dbrouter.cancel_message(p_message_id);
END
$function$;

-- Requeue one of the caller's messages (as dbrouter.requeue_message).
CREATE OR REPLACE FUNCTION dbrouter.requeue_my_message(p_message_id bigint)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM dbrouter.check_mine(p_message_id);
    RETURN dbrouter.requeue_message(p_message_id);
END
$function$;

-- Raise, the same way whether it exists or not, unless message
-- p_message_id is the caller's.
CREATE OR REPLACE FUNCTION dbrouter.check_mine(p_message_id bigint)
 RETURNS void
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM dbrouter.messages m
                    WHERE m.id = p_message_id
                      AND dbrouter.is_mine(m.tenant, m.enqueued_by, dbrouter.caller(), dbrouter.caller_tenant())) THEN
        RAISE EXCEPTION 'no message % of %', p_message_id, coalesce('tenant ' || dbrouter.caller_tenant(), dbrouter.caller())
            USING ERRCODE = 'no_data_found',
                  HINT = 'SELECT id, status FROM dbrouter.my_messages ORDER BY id DESC LIMIT 20 lists yours';
    END IF;
END
$function$;

-- Create (when missing) and grant the four roles, named prefix || enqueue,
-- worker, admin, readonly. NOLOGIN: a deployment grants them to its login
-- roles (README, "Roles"). Run by `dbrouter migrate` as the schema's owner
-- after every upgrade, so objects added since are covered; creating the
-- roles needs CREATEROLE once.
CREATE OR REPLACE FUNCTION dbrouter.grant_roles(p_prefix text DEFAULT 'dbrouter_')
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET client_min_messages TO 'warning'
AS $function$
DECLARE
    enqueue  text := p_prefix || 'enqueue';
    worker   text := p_prefix || 'worker';
    admin    text := p_prefix || 'admin';
    readonly text := p_prefix || 'readonly';
    r text;
BEGIN
    IF p_prefix !~ '^[a-z_][a-z0-9_]{0,40}$' THEN
        RAISE EXCEPTION 'role prefix % must be lowercase letters, digits and _ (at most 41)', quote_literal(p_prefix);
    END IF;
    FOREACH r IN ARRAY ARRAY[enqueue, worker, admin, readonly] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN NULL;  -- created meanwhile by another migrate
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'cannot create role %: % ', r, SQLERRM
                        USING HINT = format('run dbrouter migrate once as a role with CREATEROLE, or create the roles first: CREATE ROLE %I NOLOGIN; (and %I, %I, %I)', enqueue, worker, admin, readonly);
            END;
        END IF;
    END LOOP;

    -- Nothing for PUBLIC.
    REVOKE ALL ON SCHEMA dbrouter FROM PUBLIC;
    REVOKE ALL ON ALL TABLES IN SCHEMA dbrouter FROM PUBLIC;
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA dbrouter FROM PUBLIC;
    REVOKE ALL ON ALL ROUTINES IN SCHEMA dbrouter FROM PUBLIC;

    EXECUTE format('GRANT USAGE ON SCHEMA dbrouter TO %I, %I, %I, %I', enqueue, worker, admin, readonly);

    -- enqueue: stage messages, broadcast, count segments, see and cancel its own.
    EXECUTE format('GRANT INSERT ON dbrouter.inbox, dbrouter.outbox TO %I', enqueue);
    EXECUTE format('GRANT SELECT ON dbrouter.my_messages, dbrouter.messages TO %I', enqueue);
    EXECUTE format('GRANT EXECUTE ON FUNCTION dbrouter.broadcast(text, text[], text, timestamptz, timestamptz, integer, text),
                                    dbrouter.broadcast_preview(text, text[], text),
                                    dbrouter.cancel_my_message(bigint), dbrouter.requeue_my_message(bigint),
                                    dbrouter.caller(), dbrouter.caller_tenant(), dbrouter.is_mine(text, text, text, text),
                                    dbrouter.segments(text), dbrouter.encoding(text),
                                    dbrouter.long_text_segments(text) TO %I', enqueue);

    -- worker (dbrouter worker and serve): every row of every table, no DDL.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA dbrouter TO %I', worker);
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON dbrouter.schema_files FROM %I', worker);
    EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA dbrouter TO %I', worker);
    EXECUTE format('GRANT EXECUTE ON ALL ROUTINES IN SCHEMA dbrouter TO %I', worker);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION dbrouter.grant_roles(text) FROM %I', worker);

    -- admin: backends, traffic, opt-outs, keywords; pause/resume, cancel,
    -- requeue, purge; reads everything (`dbrouter status`).
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA dbrouter TO %I', admin);
    EXECUTE format('GRANT INSERT, UPDATE, DELETE ON dbrouter.backends, dbrouter.opt_outs,
                          dbrouter.opt_out_keywords, dbrouter.keywords,
                          dbrouter.tenants, dbrouter.tenant_roles, dbrouter.tenant_backends,
                          dbrouter.console_users, dbrouter.console_sessions TO %I', admin);
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA dbrouter TO %I', admin);
    EXECUTE format('GRANT EXECUTE ON FUNCTION dbrouter.pause_backend(text, text), dbrouter.resume_backend(text),
                                    dbrouter.cancel_message(bigint), dbrouter.requeue_message(bigint),
                                    dbrouter.requeue_backend(text), dbrouter.opt_out(text, text, text),
                                    dbrouter.opt_in(text, text), dbrouter.mark_delivered(bigint[]),
                                    dbrouter.recount(bigint), dbrouter.rollup(integer, integer, integer, integer),
                                    dbrouter.purge_batch(interval, bigint, integer),
                                    dbrouter.segments(text), dbrouter.encoding(text),
                                    dbrouter.long_text_segments(text), dbrouter.caller(),
                                    dbrouter.caller_tenant(), dbrouter.is_mine(text, text, text, text),
                                    dbrouter.broadcast_preview(text, text[], text)
                    TO %I', admin);
    EXECUTE format('GRANT EXECUTE ON PROCEDURE dbrouter.purge(interval, integer) TO %I', admin);

    -- readonly: the views without message text or identities.
    EXECUTE format('GRANT SELECT ON dbrouter.stats, dbrouter.tenant_stats, dbrouter.fanouts_waiting,
                          dbrouter.bind_states TO %I', readonly);

    -- Row-level security on messages (migration 0016): the worker and the
    -- admin see and change every row; an enqueueing role reads its own
    -- (dbrouter.is_mine). The owner (migrate, the SECURITY DEFINER
    -- functions, the views) is not subject to it.
    EXECUTE format('DROP POLICY IF EXISTS %I ON dbrouter.messages', worker || '_all');
    EXECUTE format('CREATE POLICY %I ON dbrouter.messages TO %I, %I USING (true) WITH CHECK (true)',
                   worker || '_all', worker, admin);
    EXECUTE format('DROP POLICY IF EXISTS %I ON dbrouter.messages', enqueue || '_own');
    EXECUTE format('CREATE POLICY %I ON dbrouter.messages FOR SELECT TO %I
                      USING (dbrouter.is_mine(tenant, enqueued_by, (SELECT dbrouter.caller()), (SELECT dbrouter.caller_tenant())))',
                   enqueue || '_own', enqueue);
END
$function$;
