-- ===========================================================================
-- The state of every SMPP bind, one row per (backend, worker process, bind),
-- written by the worker holding the bind when its state changes and every
-- 30 s while it holds it (seen_at), deleted when the worker lets it go (a
-- reloaded backend, a clean stop; src/gateways/smpp.rs, report). A row whose seen_at is old belongs to a
-- worker that died: `dbrouter status` shows it as stale and housekeeping
-- deletes it after an hour. Read by `dbrouter status` and dbrouter.bind_states
-- (schema/80_views.sql); nothing on a message's path reads it.
-- ===========================================================================

CREATE TABLE dbrouter.binds (
    backend_id  integer NOT NULL REFERENCES dbrouter.backends (id) ON DELETE CASCADE,
    -- host:pid of the worker process holding the bind
    worker      text NOT NULL,
    bind        integer NOT NULL,
    -- the engine instance that wrote it (a reloaded backend is a new one)
    instance    bigint NOT NULL,
    up          boolean NOT NULL,
    -- "bound", or why not ("down: cannot connect to ...")
    state       text NOT NULL,
    -- when the state last changed
    since       timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backend_id, worker, bind)
);
