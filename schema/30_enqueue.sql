-- schema/30_enqueue.sql: applied by `dbrouter migrate` whenever this text changes
-- (src/schema.rs). CREATE OR REPLACE only; a function dropped or whose
-- arguments change needs a numbered migration.
--
-- Enqueueing: the inbox and outbox drains (statement-level triggers that
-- turn staged rows into connections, messages and transmissions),
-- broadcast(), and the expansion of a large broadcast's parts.

-- The drains and broadcast() run as the schema's owner (SECURITY DEFINER,
-- search_path pinned), so a role granted only INSERT on the inbox/outbox or
-- EXECUTE on broadcast() enqueues without rights on any other table
-- (schema/90_roles.sql). Each records its caller in messages.enqueued_by
-- and the caller's tenant in messages.tenant; a tenant's role may enqueue
-- only on the backends granted to its tenant (dbrouter.tenant_problem).
CREATE OR REPLACE FUNCTION dbrouter.inbox_drain()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET enable_seqscan TO 'off'
 SET jit TO 'off'
AS $function$
DECLARE
    problem text;
    v_caller text := dbrouter.caller();
    v_tenant text := dbrouter.caller_tenant();
BEGIN
    SELECT p INTO problem
      FROM (SELECT coalesce(
                       dbrouter.tenant_problem(v_tenant, n.backend, b.id),
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
        INSERT INTO dbrouter.messages (id, direction, status, text, external_id, fields, n_total,
                                       enqueued_by, tenant)
        SELECT mid, 'I', 'Q', text, external_id, fields, 1, v_caller, v_tenant FROM kept
    )
    INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id, status)
    SELECT mid, cid, backend_id, 'Q' FROM kept;

    DELETE FROM dbrouter.inbox;
    PERFORM pg_notify('dbrouter', '');
    RETURN NULL;
END
$function$;

CREATE OR REPLACE TRIGGER inbox_drain AFTER INSERT ON dbrouter.inbox REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.inbox_drain();

CREATE OR REPLACE FUNCTION dbrouter.outbox_drain()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET enable_seqscan TO 'off'
 SET jit TO 'off'
AS $function$
DECLARE
    problem text;
    v_caller text := dbrouter.caller();
    v_tenant text := dbrouter.caller_tenant();
BEGIN
    SELECT p INTO problem
      FROM (SELECT coalesce(
                       dbrouter.tenant_problem(v_tenant, n.backend, b.id),
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
        -- (Q with no errors counted: the rollup trigger counts an opted-out
        -- identity's E transmission, below, and makes the message E)
        INSERT INTO dbrouter.messages (id, direction, status, text, in_response_to, n_total,
                                       priority, send_at, expires_at, client_key, enqueued_by, tenant)
        SELECT mid, 'O', 'Q', text, in_response_to, 1, priority, send_at, expires_at, client_key,
               v_caller, v_tenant
          FROM src
        ON CONFLICT ((coalesce(tenant, enqueued_by, '')), client_key) WHERE client_key IS NOT NULL DO NOTHING
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
$function$;

CREATE OR REPLACE TRIGGER outbox_drain AFTER INSERT ON dbrouter.outbox REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.outbox_drain();

-- broadcast(): checks and normalises every identity (bad input fails the
-- call and writes nothing), writes the message, and stores the distinct
-- identities in dbrouter.fanouts in sorted parts of 1,000. A broadcast of
-- one part expands it at once; a larger one leaves its parts to the
-- workers (fan_out, below), and returns. Returns the message id (the first
-- message's for a repeated client_key).
CREATE OR REPLACE FUNCTION dbrouter.broadcast(backend text, identities text[], text text, send_at timestamp with time zone DEFAULT NULL::timestamp with time zone, expires_at timestamp with time zone DEFAULT NULL::timestamp with time zone, priority integer DEFAULT 0, client_key text DEFAULT NULL::text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET enable_seqscan TO 'off'
 SET jit TO 'off'
AS $function$
#variable_conflict use_column
DECLARE
    b dbrouter.backends%ROWTYPE;
    v_ids text[];
    v_message_id bigint;
    v_expires timestamptz;
    problem text;
    part_size constant integer := 1000;
    v_caller text := dbrouter.caller();
    v_tenant text := dbrouter.caller_tenant();
    v_scope text := coalesce(v_tenant, v_caller, '');
BEGIN
    SELECT * INTO b FROM dbrouter.backends WHERE name = broadcast.backend;
    problem := dbrouter.tenant_problem(v_tenant, broadcast.backend, b.id);
    IF problem IS NOT NULL THEN
        PERFORM dbrouter.raise_enqueue_problem('dbrouter.broadcast', problem);
    END IF;
    IF broadcast.identities IS NULL OR cardinality(broadcast.identities) = 0 THEN
        PERFORM dbrouter.raise_enqueue_problem('dbrouter.broadcast', 'the identity list is empty');
    END IF;
    SELECT p INTO problem
      FROM (SELECT dbrouter.enqueue_problem(broadcast.backend, b.id IS NOT NULL, i, broadcast.text,
                                            b.number_format, b.country_code) AS p
              FROM unnest(broadcast.identities) AS i) x
     WHERE p IS NOT NULL
     LIMIT 1;
    problem := coalesce(problem,
        dbrouter.schedule_problem(broadcast.priority, broadcast.send_at, broadcast.expires_at),
        CASE WHEN length(broadcast.client_key) NOT BETWEEN 1 AND 200
             THEN 'client_key must be 1 to 200 characters' END);
    IF problem IS NOT NULL THEN
        PERFORM dbrouter.raise_enqueue_problem('dbrouter.broadcast', problem);
    END IF;

    IF broadcast.client_key IS NOT NULL THEN
        SELECT id INTO v_message_id FROM dbrouter.messages
         WHERE coalesce(tenant, enqueued_by, '') = v_scope AND client_key = broadcast.client_key;
        IF FOUND THEN
            RETURN v_message_id;
        END IF;
    END IF;

    -- Distinct normalised identities, sorted (the connection insert's lock
    -- order; byte order is enough for that and sorts faster than a locale).
    v_ids := ARRAY(SELECT DISTINCT dbrouter.normalize_identity(i, b.number_format, b.country_code) COLLATE "C"
                     FROM unnest(broadcast.identities) AS i ORDER BY 1);
    v_expires := dbrouter.deadline(broadcast.expires_at, broadcast.send_at, false, b);

    INSERT INTO dbrouter.messages (direction, status, text, n_total, priority, send_at, expires_at, client_key,
                                   enqueued_by, tenant)
    VALUES ('O', 'Q', broadcast.text, cardinality(v_ids), broadcast.priority, broadcast.send_at,
            v_expires, broadcast.client_key, v_caller, v_tenant)
    ON CONFLICT ((coalesce(tenant, enqueued_by, '')), client_key) WHERE client_key IS NOT NULL DO NOTHING
    RETURNING id INTO v_message_id;
    IF v_message_id IS NULL THEN
        -- A concurrent call with the same key committed first.
        SELECT id INTO v_message_id FROM dbrouter.messages
         WHERE coalesce(tenant, enqueued_by, '') = v_scope AND client_key = broadcast.client_key;
        IF v_message_id IS NULL THEN
            RAISE EXCEPTION 'client_key % is being used by a transaction this one cannot see', quote_literal(broadcast.client_key)
                USING HINT = 'retry in a new transaction (READ COMMITTED)';
        END IF;
        RETURN v_message_id;
    END IF;

    INSERT INTO dbrouter.fanouts (message_id, part, backend_id, identities)
    SELECT v_message_id, k, b.id, v_ids[(k - 1) * part_size + 1 : k * part_size]
      FROM generate_series(1, (cardinality(v_ids) + part_size - 1) / part_size) AS k;
    IF cardinality(v_ids) > part_size THEN
        PERFORM pg_notify('dbrouter', 'fanout');
        RETURN v_message_id;
    END IF;
    -- One part: expanded here, by the same code as the workers' parts.
    PERFORM dbrouter.expand_fanout_part(v_message_id, 1);
    PERFORM pg_notify('dbrouter', '');
    RETURN v_message_id;
END
$function$;

-- What dbrouter.broadcast() would do with these arguments, without doing
-- it: how many identities were given, the recipients they make (normalised
-- as the backend's number_format says, duplicates removed), how many of
-- those are opted out (their transmissions would end E "opted out"), the
-- first problems that would make broadcast() refuse the call, the text's
-- encoding and parts, and how long the backend's rate limit makes the sends
-- take. The console's broadcast preview; useful from psql too:
--   SELECT * FROM dbrouter.broadcast_preview('sms', ARRAY['+255700000001'], 'Hello');
-- Reads only; the caller's tenant sees only its backends (as broadcast()).
CREATE OR REPLACE FUNCTION dbrouter.broadcast_preview(p_backend text, p_identities text[], p_text text,
    OUT given integer, OUT recipients integer, OUT duplicates integer, OUT opted_out integer,
    OUT problems text[], OUT encoding text, OUT segments integer, OUT max_parts integer,
    OUT rate_limit double precision, OUT eta_seconds double precision)
 RETURNS record
 LANGUAGE plpgsql
 STABLE
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    b dbrouter.backends%ROWTYPE;
    problem text;
BEGIN
    SELECT * INTO b FROM dbrouter.backends WHERE name = p_backend;
    problem := coalesce(dbrouter.tenant_problem(dbrouter.caller_tenant(), p_backend, b.id),
                        dbrouter.enqueue_core_problem(p_backend, b.id IS NOT NULL, 'preview', p_text));
    given := coalesce(cardinality(p_identities), 0);
    encoding := dbrouter.encoding(coalesce(p_text, ''));
    segments := dbrouter.segments(coalesce(p_text, ''));
    IF problem IS NOT NULL THEN
        -- Nothing of the backend is told to a caller it is not granted to.
        problems := ARRAY[problem];
        recipients := 0; duplicates := 0; opted_out := 0;
        RETURN;
    END IF;
    max_parts := CASE WHEN jsonb_typeof(b.config -> 'max_parts') = 'number'
                      THEN (b.config ->> 'max_parts')::numeric::integer END;
    rate_limit := b.rate_limit;
    WITH checked AS (
        SELECT i, dbrouter.enqueue_problem(p_backend, true, i, p_text, b.number_format, b.country_code) AS why
          FROM unnest(p_identities) AS i
    ), ok AS (
        SELECT DISTINCT dbrouter.normalize_identity(i, b.number_format, b.country_code) AS identity
          FROM checked WHERE why IS NULL
    )
    SELECT (SELECT count(*) FROM ok),
           (SELECT count(*) FROM checked WHERE why IS NULL) - (SELECT count(*) FROM ok),
           (SELECT count(*) FROM ok
              JOIN dbrouter.connections c ON c.backend_id = b.id AND c.identity = ok.identity
              JOIN dbrouter.opt_outs o ON o.connection_id = c.id),
           ARRAY(SELECT why FROM checked WHERE why IS NOT NULL LIMIT 5)
      INTO recipients, duplicates, opted_out, problems;
    IF given = 0 THEN
        problems := problems || 'the identity list is empty'::text;
    END IF;
    IF segments > max_parts THEN
        problems := problems || format('the text takes %s parts (%s); backend %L allows at most %s (config.max_parts): every transmission would end E',
                                       segments, encoding, p_backend, max_parts);
    END IF;
    eta_seconds := (recipients - opted_out) / b.rate_limit;
END
$function$;

-- What a worker runs: expand up to p_parts parts that no one else is
-- expanding (SKIP LOCKED: a part being expanded is locked until that
-- transaction ends), oldest message first. Returns the transmissions
-- written, and wakes the workers if there are any.
--
-- A part the database refuses (nothing dbrouter writes should be refused:
-- broadcast() checked every identity) is isolated like a poison message:
-- its expansion is undone, the error is kept on the part, it is tried
-- again a minute later, and the parts behind it go on meanwhile
-- (dbrouter.fanouts_waiting and `dbrouter status` show it).
--
-- With its 10th part (10,000 identities in), a broadcast's expansion ends
-- with ANALYZE dbrouter.transmissions, so the claims' plans are made again
-- for the many rows now in flight. Without the right to analyze the table it is
-- only a warning.
CREATE OR REPLACE FUNCTION dbrouter.fan_out(p_parts integer DEFAULT 1)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
DECLARE
    p record;
    n integer := 0;
    v_done integer := 0;
    v_analyze boolean := false;
BEGIN
    WHILE v_done < p_parts LOOP
        SELECT f.message_id, f.part INTO p FROM dbrouter.fanouts f
         WHERE f.retry_at IS NULL OR f.retry_at <= now()
         ORDER BY f.message_id, f.part
         LIMIT 1
           FOR UPDATE SKIP LOCKED;
        EXIT WHEN NOT FOUND;
        BEGIN
            n := n + dbrouter.expand_fanout_part(p.message_id, p.part);
            v_analyze := v_analyze OR p.part = 10;
            v_done := v_done + 1;
        EXCEPTION WHEN OTHERS THEN
            -- (the retry time also keeps the next SELECT off this part)
            UPDATE dbrouter.fanouts SET error = SQLERRM, retry_at = now() + interval '1 minute'
             WHERE message_id = p.message_id AND part = p.part;
            RAISE WARNING 'broadcast % part % cannot be expanded (tried again in a minute): %',
                p.message_id, p.part, SQLERRM;
        END;
    END LOOP;
    IF v_analyze THEN
        ANALYZE dbrouter.transmissions;
    END IF;
    IF n > 0 THEN
        PERFORM pg_notify('dbrouter', '');
    END IF;
    RETURN n;
END
$function$;

-- One part: its connections (the new ones inserted, sorted, as broadcast()
-- did), its transmissions (Q; E "opted out" for the opted out; E
-- "cancelled" for all of them once the message is cancelled; the rollup
-- trigger counts those E on the message), and the part deleted. The caller holds
-- the part's row lock. Returns the transmissions written.
CREATE OR REPLACE FUNCTION dbrouter.expand_fanout_part(p_message_id bigint, p_part integer)
 RETURNS integer
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET jit TO 'off'
AS $function$
DECLARE
    f dbrouter.fanouts%ROWTYPE;
    m dbrouter.messages%ROWTYPE;
    v_written integer;
BEGIN
    SELECT * INTO f FROM dbrouter.fanouts WHERE message_id = p_message_id AND part = p_part;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    SELECT * INTO m FROM dbrouter.messages WHERE id = p_message_id;

    BEGIN
        INSERT INTO dbrouter.connections (backend_id, identity)
        SELECT f.backend_id, i FROM unnest(f.identities) AS i
         WHERE NOT EXISTS (SELECT 1 FROM dbrouter.connections c
                            WHERE c.backend_id = f.backend_id AND c.identity = i);
    EXCEPTION WHEN unique_violation THEN
        -- A concurrent enqueue committed one of these identities first.
        INSERT INTO dbrouter.connections (backend_id, identity)
        SELECT f.backend_id, i FROM unnest(f.identities) AS i
         WHERE NOT EXISTS (SELECT 1 FROM dbrouter.connections c
                            WHERE c.backend_id = f.backend_id AND c.identity = i)
        ON CONFLICT DO NOTHING;
    END;

    -- (the rollup trigger counts the E rows on the message)
    INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id, status, due_at,
                                        priority, expires_at, last_error)
    SELECT m.id, c.id, f.backend_id, x.status,
           CASE WHEN x.status = 'Q' THEN greatest(now(), m.send_at) END,
           m.priority, m.expires_at, x.error
      FROM unnest(f.identities) AS i
      CROSS JOIN LATERAL (SELECT c.id FROM dbrouter.connections c
                           WHERE c.backend_id = f.backend_id AND c.identity = i LIMIT 1) c
      LEFT JOIN dbrouter.opt_outs o ON o.connection_id = c.id
      CROSS JOIN LATERAL (
            SELECT CASE WHEN o.connection_id IS NULL AND m.cancelled_at IS NULL THEN 'Q' ELSE 'E' END AS status,
                   CASE WHEN o.connection_id IS NOT NULL THEN 'opted out'
                        WHEN m.cancelled_at IS NOT NULL THEN 'cancelled' END AS error) x;
    GET DIAGNOSTICS v_written = ROW_COUNT;
    DELETE FROM dbrouter.fanouts WHERE message_id = p_message_id AND part = p_part;
    RETURN v_written;
END
$function$;

-- One part of a long message from a phone (migrations/0012_inbound_parts.sql).
-- Kept until every part of its message is there; then the parts, in order,
-- become one message through dbrouter.inbox, in this same transaction
-- (fields: {"parts": n}). Parts of one message arriving at once (two binds,
-- two workers) take turns on an advisory lock, so the last always sees the
-- others. A part seen before (an SMSC sending it again) changes nothing.
-- Returns true when this part completed its message.
CREATE OR REPLACE FUNCTION dbrouter.receive_part(p_backend text, p_sender text, p_reference integer, p_total integer, p_part integer, p_text text)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_backend_id integer;
    v_have integer;
BEGIN
    SELECT id INTO v_backend_id FROM dbrouter.backends WHERE name = p_backend;
    IF v_backend_id IS NULL THEN
        PERFORM dbrouter.raise_enqueue_problem('dbrouter.receive_part',
            format('unknown backend %L', p_backend));
    END IF;
    IF p_total NOT BETWEEN 2 AND 255 OR p_part NOT BETWEEN 1 AND p_total THEN
        PERFORM dbrouter.raise_enqueue_problem('dbrouter.receive_part',
            format('part %s of %s is not a part of a concatenated message', p_part, p_total));
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('dbrouter.inbound_parts'),
                                  hashtext(v_backend_id || ' ' || p_sender || ' ' || p_reference));
    INSERT INTO dbrouter.inbound_parts (backend_id, sender, reference, total, part, text)
    VALUES (v_backend_id, p_sender, p_reference, p_total, p_part, p_text)
    ON CONFLICT DO NOTHING;
    SELECT count(*) INTO v_have FROM dbrouter.inbound_parts
     WHERE backend_id = v_backend_id AND sender = p_sender AND reference = p_reference
       AND total = p_total;
    IF v_have < p_total THEN
        RETURN false;
    END IF;
    PERFORM dbrouter.join_parts(v_backend_id, p_sender, p_reference, p_total);
    RETURN true;
END
$function$;

-- The held parts of one message, in order, as one message through
-- dbrouter.inbox; fields {"parts": total}, and for a message not whole
-- {"incomplete": true, "parts_received": [...]}. The caller holds the
-- message's advisory lock.
CREATE OR REPLACE FUNCTION dbrouter.join_parts(p_backend_id integer, p_sender text, p_reference integer, p_total integer)
 RETURNS void
 LANGUAGE sql
AS $function$
    WITH gone AS (
        DELETE FROM dbrouter.inbound_parts
         WHERE backend_id = p_backend_id AND sender = p_sender AND reference = p_reference
           AND total = p_total
        RETURNING part, text
    )
    INSERT INTO dbrouter.inbox (backend, identity, text, fields)
    SELECT b.name, p_sender, string_agg(g.text, '' ORDER BY g.part),
           jsonb_build_object('parts', p_total)
           || CASE WHEN count(*) < p_total
                   THEN jsonb_build_object('incomplete', true,
                                           'parts_received', jsonb_agg(g.part ORDER BY g.part))
                   ELSE '{}'::jsonb END
      FROM gone g JOIN dbrouter.backends b ON b.id = p_backend_id
     GROUP BY b.name
$function$;

-- Deliver, as they are and flagged, the messages whose parts have waited
-- longer than p_older_than for the rest (the workers' housekeeping runs it
-- with --reassembly-timeout). Returns how many messages it delivered.
CREATE OR REPLACE FUNCTION dbrouter.flush_parts(p_older_than interval)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
DECLARE
    g record;
    n integer := 0;
BEGIN
    FOR g IN SELECT backend_id, sender, reference, total
               FROM dbrouter.inbound_parts
              GROUP BY 1, 2, 3, 4
             HAVING min(received_at) < now() - p_older_than
              LIMIT 1000
    LOOP
        PERFORM pg_advisory_xact_lock(hashtext('dbrouter.inbound_parts'),
                                      hashtext(g.backend_id || ' ' || g.sender || ' ' || g.reference));
        PERFORM dbrouter.join_parts(g.backend_id, g.sender, g.reference, g.total);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$function$;
