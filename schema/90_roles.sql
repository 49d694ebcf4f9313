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

-- The messages the calling role enqueued (inbox, outbox, broadcast()), with
-- their progress; an application's window onto its own work. Lookups by id
-- or client_key use their indexes; nothing indexes enqueued_by (see
-- migration 0015).
CREATE OR REPLACE VIEW dbrouter.my_messages WITH (security_barrier) AS
SELECT id, direction, status, text, client_key, priority, send_at, expires_at, cancelled_at,
       n_total, n_done, n_delivered, n_error, encoding, segments, error,
       created_at, sent_at, delivered_at
  FROM dbrouter.messages
 WHERE enqueued_by = dbrouter.caller();

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
    IF NOT EXISTS (SELECT 1 FROM dbrouter.messages
                    WHERE id = p_message_id AND enqueued_by = dbrouter.caller()) THEN
        RAISE EXCEPTION 'no message % enqueued by %', p_message_id, dbrouter.caller()
            USING ERRCODE = 'no_data_found',
                  HINT = 'SELECT id, status FROM dbrouter.my_messages ORDER BY id DESC LIMIT 20 lists yours';
    END IF;
    RETURN dbrouter.cancel_message(p_message_id);
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
    EXECUTE format('GRANT SELECT ON dbrouter.my_messages TO %I', enqueue);
    EXECUTE format('GRANT EXECUTE ON FUNCTION dbrouter.broadcast(text, text[], text, timestamptz, timestamptz, integer, text),
                                    dbrouter.cancel_my_message(bigint), dbrouter.caller(),
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
                          dbrouter.opt_out_keywords, dbrouter.keywords TO %I', admin);
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA dbrouter TO %I', admin);
    EXECUTE format('GRANT EXECUTE ON FUNCTION dbrouter.pause_backend(text, text), dbrouter.resume_backend(text),
                                    dbrouter.cancel_message(bigint), dbrouter.requeue_message(bigint),
                                    dbrouter.requeue_backend(text), dbrouter.opt_out(text, text, text),
                                    dbrouter.opt_in(text, text), dbrouter.mark_delivered(bigint[]),
                                    dbrouter.recount(bigint), dbrouter.rollup(integer, integer, integer, integer),
                                    dbrouter.purge_batch(interval, bigint, integer),
                                    dbrouter.segments(text), dbrouter.encoding(text),
                                    dbrouter.long_text_segments(text), dbrouter.caller()
                    TO %I', admin);
    EXECUTE format('GRANT EXECUTE ON PROCEDURE dbrouter.purge(interval, integer) TO %I', admin);

    -- readonly: the views without message text or identities.
    EXECUTE format('GRANT SELECT ON dbrouter.stats, dbrouter.fanouts_waiting, dbrouter.bind_states TO %I', readonly);
END
$function$;
