-- ===========================================================================
-- Enqueue plans that do not depend on statistics.
--
-- The drains looked up each row's connection with a join, and the planner
-- chose how from the tables' statistics. Right after a large enqueue, before
-- autovacuum analyzes, those describe a much smaller table, and the join
-- became a hash of the whole connections table for every INSERT statement:
-- 80 ms per 1,000 inbound rows at 42,000 connections during a round-trip
-- run, growing with the table (auto_explain). Each lookup is now a LATERAL
-- subquery with LIMIT 1, which PostgreSQL does not flatten into a join: one
-- probe of the (backend_id, identity) index per row, whatever the statistics
-- say, so the cost of an INSERT follows its own rows, not the history. The
-- outbox's in_response_to check probes messages the same way.
--
-- Bodies otherwise as in 0003 (inbox) and 0002 (outbox).
-- ===========================================================================

CREATE OR REPLACE FUNCTION dbrouter.inbox_drain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    problem text;
BEGIN
    SELECT p INTO problem
      FROM (SELECT coalesce(
                       dbrouter.enqueue_problem(n.backend, b.id IS NOT NULL, n.identity, n.text,
                                                b.number_format, b.country_code),
                       CASE WHEN n.fields IS NOT NULL AND jsonb_typeof(n.fields) <> 'object'
                            THEN format('fields must be a JSON object, got %s', jsonb_typeof(n.fields)) END) AS p
              FROM new_rows n LEFT JOIN dbrouter.backends b ON b.name = n.backend) x
     WHERE p IS NOT NULL
     LIMIT 1;
    IF problem IS NOT NULL THEN
        PERFORM dbrouter.raise_enqueue_problem('dbrouter.inbox', problem);
    END IF;

    -- Sorted, so two transactions adding the same new connections take their
    -- unique-index locks in the same order and cannot deadlock.
    INSERT INTO dbrouter.connections (backend_id, identity)
    SELECT DISTINCT b.id, dbrouter.normalize_identity(n.identity, b.number_format, b.country_code)
      FROM new_rows n JOIN dbrouter.backends b ON b.name = n.backend
     ORDER BY 1, 2
    ON CONFLICT DO NOTHING;

    -- Message ids follow the order of the inserted rows, so messages of one
    -- sender are processed in the order they were enqueued. A row whose
    -- gateway id was seen before (or earlier in this statement) is skipped;
    -- a concurrent insert of the same id waits for the first to commit.
    WITH src AS MATERIALIZED (
        SELECT nextval('dbrouter.messages_id_seq') AS mid, s.*
          FROM (SELECT c.id AS cid, c.backend_id, n.text, n.external_id,
                       coalesce(n.fields, '{}') AS fields
                  FROM (SELECT *, row_number() OVER () AS rn FROM new_rows) n
                  JOIN dbrouter.backends b ON b.name = n.backend
                 CROSS JOIN LATERAL (
                       SELECT c.id, c.backend_id FROM dbrouter.connections c
                        WHERE c.backend_id = b.id
                          AND c.identity = dbrouter.normalize_identity(n.identity, b.number_format, b.country_code)
                        LIMIT 1) c  -- (backend_id, identity) is unique; LIMIT keeps this a probe per row
                 ORDER BY n.rn) s
    ), fresh AS (
        -- (its foreign key to messages is checked at the end of the
        -- statement, when the message row below exists)
        INSERT INTO dbrouter.received_ids (backend_id, external_id, message_id)
        SELECT backend_id, external_id, mid FROM src WHERE external_id IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING message_id
    ), kept AS (
        SELECT * FROM src WHERE external_id IS NULL OR mid IN (SELECT message_id FROM fresh)
    ), msg AS (
        INSERT INTO dbrouter.messages (id, direction, status, text, external_id, fields, n_total)
        SELECT mid, 'I', 'Q', text, external_id, fields, 1 FROM kept
    )
    INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id, status)
    SELECT mid, cid, backend_id, 'Q' FROM kept;

    DELETE FROM dbrouter.inbox;
    PERFORM pg_notify('dbrouter', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dbrouter.outbox_drain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    problem text;
BEGIN
    SELECT p INTO problem
      FROM (SELECT coalesce(
                       dbrouter.enqueue_problem(n.backend, b.id IS NOT NULL, n.identity, n.text,
                                                b.number_format, b.country_code),
                       CASE WHEN n.in_response_to IS NOT NULL AND m.id IS NULL
                            THEN format('in_response_to %s is not a message id', n.in_response_to) END,
                       dbrouter.schedule_problem(n.priority, n.send_at, n.expires_at),
                       CASE WHEN n.client_key IS NOT NULL AND length(n.client_key) NOT BETWEEN 1 AND 200
                            THEN 'client_key must be 1 to 200 characters' END) AS p
              FROM new_rows n
              LEFT JOIN dbrouter.backends b ON b.name = n.backend
              LEFT JOIN LATERAL (SELECT m.id FROM dbrouter.messages m
                                  WHERE m.id = n.in_response_to LIMIT 1) m ON true) x
     WHERE p IS NOT NULL
     LIMIT 1;
    IF problem IS NOT NULL THEN
        PERFORM dbrouter.raise_enqueue_problem('dbrouter.outbox', problem);
    END IF;

    INSERT INTO dbrouter.connections (backend_id, identity)
    SELECT DISTINCT b.id, dbrouter.normalize_identity(n.identity, b.number_format, b.country_code)
      FROM new_rows n JOIN dbrouter.backends b ON b.name = n.backend
     ORDER BY 1, 2
    ON CONFLICT DO NOTHING;

    WITH src AS MATERIALIZED (
        SELECT nextval('dbrouter.messages_id_seq') AS mid, s.*
          FROM (SELECT c.id AS cid, c.backend_id, n.text, n.in_response_to, n.client_key, n.send_at,
                       coalesce(n.priority, CASE WHEN n.in_response_to IS NOT NULL THEN 1 ELSE 0 END) AS priority,
                       dbrouter.deadline(n.expires_at, n.send_at, n.in_response_to IS NOT NULL, b) AS expires_at,
                       EXISTS (SELECT 1 FROM dbrouter.opt_outs o WHERE o.connection_id = c.id) AS opted_out,
                       n.client_key IS NULL
                           OR row_number() OVER (PARTITION BY n.client_key ORDER BY n.rn) = 1 AS first_of_key
                  FROM (SELECT *, row_number() OVER () AS rn FROM new_rows) n
                  JOIN dbrouter.backends b ON b.name = n.backend
                 CROSS JOIN LATERAL (
                       SELECT c.id, c.backend_id FROM dbrouter.connections c
                        WHERE c.backend_id = b.id
                          AND c.identity = dbrouter.normalize_identity(n.identity, b.number_format, b.country_code)
                        LIMIT 1) c  -- (backend_id, identity) is unique; LIMIT keeps this a probe per row
                 ORDER BY n.rn) s
         WHERE s.first_of_key
    ), msg AS (
        -- A key committed by another transaction makes this row wait for it,
        -- then skip: exactly one message per key.
        INSERT INTO dbrouter.messages (id, direction, status, text, in_response_to, n_total, n_error,
                                       priority, send_at, expires_at, client_key)
        SELECT mid, 'O', CASE WHEN opted_out THEN 'E' ELSE 'Q' END, text, in_response_to, 1,
               CASE WHEN opted_out THEN 1 ELSE 0 END, priority, send_at, expires_at, client_key
          FROM src
        ON CONFLICT (client_key) WHERE client_key IS NOT NULL DO NOTHING
        RETURNING id
    )
    INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id, status, due_at,
                                        priority, expires_at, last_error)
    SELECT s.mid, s.cid, s.backend_id,
           CASE WHEN s.opted_out THEN 'E' ELSE 'Q' END,
           CASE WHEN s.opted_out THEN NULL ELSE greatest(now(), s.send_at) END,
           s.priority, s.expires_at,
           CASE WHEN s.opted_out THEN 'opted out' END
      FROM src s JOIN msg ON msg.id = s.mid;

    DELETE FROM dbrouter.outbox;
    PERFORM pg_notify('dbrouter', '');
    RETURN NULL;
END
$$;

-- ---------------------------------------------------------------------------
-- How many transmissions a message has, as the planner sees it.
--
-- ANALYZE samples transmissions; after a broadcast nearly every sampled row
-- has the broadcast's message_id, so n_distinct comes out tiny and a join on
-- message_id (marking an inbound batch, a claim's sender lookup, purge) is
-- expected to match the whole table per message: the inbound mark then
-- scanned every transmission once per message (3.8 s for a batch of 200
-- after a 100,000-identity broadcast, instead of 7 ms). Most messages have
-- exactly one transmission (every inbound message and every reply), so the
-- estimate is pinned at two per message on average; ANALYZE keeps the
-- override. The statistics of a given broadcast's own id (its most common
-- value) still say how many rows it has.
-- ---------------------------------------------------------------------------
ALTER TABLE dbrouter.transmissions ALTER COLUMN message_id SET (n_distinct = -0.5);
-- (Only a table with rows: ANALYZE of an empty one records "empty", and a
-- plan made then reads the table once per row while it fills; see below.)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM dbrouter.transmissions) THEN
        ANALYZE dbrouter.transmissions;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
-- No sequential scans inside the enqueue functions.
--
-- A plan is made from the table's size when it is made. Planned while
-- connections was empty (after a VACUUM or ANALYZE had recorded it so),
-- broadcast()'s check for known identities became a nested loop that read
-- the whole table once per identity, while the same statement kept adding
-- rows to it: 76.6 s for a first broadcast to 100,000 identities instead of
-- 2.3 s. PL/pgSQL also keeps a trigger's plans for the session, so a
-- lookup planned on a small table stays a scan as the table grows. Every
-- lookup these functions make has an index, so they run with sequential
-- scans off (only the staging tables, which have no index, are still read
-- that way).
--
-- And without JIT: a disabled scan's cost (10^10 added) is far above
-- jit_above_cost, so the staging table's DELETE was JIT-compiled with
-- inlining and optimization on every call: 13.5 ms of an 11 ms-longer
-- single-row INSERT (auto_explain). None of these statements runs long
-- enough for compiled expressions to pay back.
-- ---------------------------------------------------------------------------
ALTER FUNCTION dbrouter.inbox_drain() SET enable_seqscan = off SET jit = off;
ALTER FUNCTION dbrouter.outbox_drain() SET enable_seqscan = off SET jit = off;
ALTER FUNCTION dbrouter.broadcast(text, text[], text, timestamptz, timestamptz, integer, text)
    SET enable_seqscan = off SET jit = off;
