-- schema/70_backends.sql: applied by `dbrouter migrate` whenever this text changes
-- (src/schema.rs). CREATE OR REPLACE only; a function dropped or whose
-- arguments change needs a numbered migration.
--
-- The backends table's guards: no delete of a backend with history, and
-- every change wakes the workers to reload their backends.

-- Backends with history cannot be deleted (their messages refer to them);
-- disable them instead. Changes wake the workers so they reload config.
CREATE OR REPLACE FUNCTION dbrouter.backends_guard_delete()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF EXISTS (SELECT 1 FROM dbrouter.connections WHERE backend_id = OLD.id) THEN
        RAISE EXCEPTION 'backend % has message history and cannot be removed', quote_literal(OLD.name)
            USING ERRCODE = 'restrict_violation',
                  HINT = format('disable it instead: UPDATE dbrouter.backends SET enabled = false WHERE name = %L', OLD.name);
    END IF;
    RETURN OLD;
END
$function$;

CREATE OR REPLACE TRIGGER backends_guard_delete BEFORE DELETE ON dbrouter.backends FOR EACH ROW EXECUTE FUNCTION dbrouter.backends_guard_delete();

CREATE OR REPLACE FUNCTION dbrouter.backends_changed()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM pg_notify('dbrouter', 'config');
    RETURN NULL;
END
$function$;

CREATE OR REPLACE TRIGGER backends_changed AFTER INSERT OR DELETE OR UPDATE ON dbrouter.backends FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.backends_changed();

CREATE OR REPLACE FUNCTION dbrouter.backends_touch()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$function$;

CREATE OR REPLACE TRIGGER backends_touch BEFORE UPDATE ON dbrouter.backends FOR EACH ROW EXECUTE FUNCTION dbrouter.backends_touch();

-- Tenants' limits and grants decide which backends' claims take tenant
-- tokens (sql/backends_load.sql): their changes wake the workers too.
CREATE OR REPLACE TRIGGER tenants_changed AFTER INSERT OR DELETE OR UPDATE ON dbrouter.tenants FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.backends_changed();

CREATE OR REPLACE TRIGGER tenant_backends_changed AFTER INSERT OR DELETE OR UPDATE ON dbrouter.tenant_backends FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.backends_changed();
