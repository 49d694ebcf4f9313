--
-- PostgreSQL database dump
--



SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: dbrouter; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA dbrouter;


--
-- Name: apply_receipts(integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.apply_receipts(p_limit integer DEFAULT 1000) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    n integer;
BEGIN
    WITH picked AS (
        SELECT x.*,
               -- an outbound transmission of the reporting backend, or none
               -- (a part's receipt counts for its part, below, not here)
               CASE WHEN x.part_of IS NOT NULL THEN NULL
                    WHEN x.transmission_id IS NOT NULL
                    THEN (SELECT t.id FROM dbrouter.transmissions t
                            JOIN dbrouter.messages m ON m.id = t.message_id AND m.direction = 'O'
                           WHERE t.id = x.transmission_id AND t.backend_id = x.backend_id)
                    ELSE (SELECT t.id FROM dbrouter.transmissions t
                           WHERE t.backend_id = x.backend_id AND t.external_id = x.gateway_id
                           ORDER BY t.id LIMIT 1)
               END AS tid
          FROM (SELECT r.id, r.outcome, r.detail, r.received_at, r.transmission_id, r.backend_id,
                       r.gateway_id, pt.transmission_id AS part_of, pt.part
                  FROM dbrouter.receipts r
                  -- a part of a text sent in several, named by its own id
                  LEFT JOIN LATERAL (
                        SELECT p.transmission_id, p.part FROM dbrouter.transmission_parts p
                         WHERE r.transmission_id IS NULL AND p.backend_id = r.backend_id
                           AND p.gateway_id = r.gateway_id
                         ORDER BY p.transmission_id DESC LIMIT 1) pt ON true
                 WHERE r.not_before IS NULL OR r.not_before <= now()
                 ORDER BY r.id
                 LIMIT p_limit
                   FOR UPDATE OF r SKIP LOCKED) x
    ), part_changed AS (
        -- D or E on the parts named; the trigger on transmission_parts
        -- (roll_up_parts, below) makes their transmission D or E
        UPDATE dbrouter.transmission_parts p
           SET status = s.outcome, detail = s.detail, updated_at = now()
          FROM (SELECT DISTINCT ON (part_of, part) part_of, part, outcome, detail
                  FROM picked WHERE part_of IS NOT NULL AND outcome IN ('D', 'E')
                 ORDER BY part_of, part, CASE outcome WHEN 'D' THEN 0 ELSE 1 END, id DESC) s
         WHERE p.transmission_id = s.part_of AND p.part = s.part
           AND ((s.outcome = 'D' AND p.status IN ('S', 'E'))
             OR (s.outcome = 'E' AND p.status = 'S'))
    ), strongest AS (
        SELECT DISTINCT ON (tid) tid, outcome, detail
          FROM picked WHERE tid IS NOT NULL
         ORDER BY tid, CASE outcome WHEN 'D' THEN 0 WHEN 'E' THEN 1 ELSE 2 END, id DESC
    ), target AS (
        -- Only a transmission that was sent: S, D, or E after a failure
        -- report (an E that never left has no sent_at).
        SELECT t.id, t.message_id, t.status AS was, s.outcome, s.detail
          FROM strongest s JOIN dbrouter.transmissions t ON t.id = s.tid
         WHERE t.status IN ('S', 'D') OR (t.status = 'E' AND t.sent_at IS NOT NULL)
         ORDER BY t.id
           FOR UPDATE OF t
    ), changed AS (
        UPDATE dbrouter.transmissions t
           SET status = x.outcome,
               due_at = NULL,
               delivered_at = CASE WHEN x.outcome = 'D' THEN now() ELSE t.delivered_at END,
               last_error = CASE WHEN x.outcome = 'E'
                                 THEN 'delivery failed: ' || coalesce(x.detail, 'the gateway reported a failure')
                                 ELSE t.last_error END,
               updated_at = now()
          FROM target x
         WHERE t.id = x.id
           AND ((x.outcome = 'D' AND x.was IN ('S', 'E'))
             OR (x.outcome = 'E' AND x.was = 'S'))
        RETURNING t.id
    ), verdict AS (
        SELECT p.id,
               -- a transmission id that is not an outbound transmission of
               -- this backend never will be; a gateway id may not be
               -- recorded yet; a send still in flight will be soon; one
               -- ended unsent never will be; a part's has been counted
               p.part_of IS NOT NULL
               OR (p.tid IS NULL AND r.transmission_id IS NOT NULL)
               OR p.received_at < now() - interval '1 day'
               OR EXISTS (SELECT 1 FROM dbrouter.transmissions t
                           WHERE t.id = p.tid AND t.status IN ('S', 'E', 'D')) AS done
          FROM picked p JOIN dbrouter.receipts r ON r.id = p.id
    ), consumed AS (
        DELETE FROM dbrouter.receipts r USING verdict v
         WHERE r.id = v.id AND v.done
        RETURNING r.id
    ), waiting AS (
        UPDATE dbrouter.receipts r SET not_before = now() + interval '2 seconds'
          FROM verdict v
         WHERE r.id = v.id AND NOT v.done
    )
    SELECT count(*) INTO n FROM consumed;
    RETURN n;
END
$$;


--
-- Name: backend_id(text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.backend_id(p_backend text) RETURNS integer
    LANGUAGE plpgsql STABLE
    AS $$
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
$$;


--
-- Name: backends_changed(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.backends_changed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('dbrouter', 'config');
    RETURN NULL;
END
$$;


--
-- Name: backends_guard_delete(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.backends_guard_delete() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM dbrouter.connections WHERE backend_id = OLD.id) THEN
        RAISE EXCEPTION 'backend % has message history and cannot be removed', quote_literal(OLD.name)
            USING ERRCODE = 'restrict_violation',
                  HINT = format('disable it instead: UPDATE dbrouter.backends SET enabled = false WHERE name = %L', OLD.name);
    END IF;
    RETURN OLD;
END
$$;


--
-- Name: backends_touch(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.backends_touch() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;


--
-- Name: broadcast(text, text[], text, timestamp with time zone, timestamp with time zone, integer, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.broadcast(backend text, identities text[], text text, send_at timestamp with time zone DEFAULT NULL::timestamp with time zone, expires_at timestamp with time zone DEFAULT NULL::timestamp with time zone, priority integer DEFAULT 0, client_key text DEFAULT NULL::text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
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
$$;


--
-- Name: broadcast_preview(text, text[], text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.broadcast_preview(p_backend text, p_identities text[], p_text text, OUT given integer, OUT recipients integer, OUT duplicates integer, OUT opted_out integer, OUT problems text[], OUT encoding text, OUT segments integer, OUT max_parts integer, OUT rate_limit double precision, OUT eta_seconds double precision) RETURNS record
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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
$$;


--
-- Name: bucket(double precision, double precision, double precision, timestamp with time zone, integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.bucket(p_rate double precision, p_burst double precision, p_tokens double precision, p_at timestamp with time zone, p_wanted integer, OUT granted integer, OUT wait_seconds double precision, OUT tokens double precision, OUT at timestamp with time zone) RETURNS record
    LANGUAGE plpgsql
    AS $$
BEGIN
    at := clock_timestamp();
    tokens := least(p_burst, p_tokens + p_rate * greatest(0, extract(epoch FROM at - p_at)));
    granted := least(p_wanted, floor(tokens))::integer;
    wait_seconds := CASE WHEN granted > 0 THEN 0 ELSE (1 - tokens) / p_rate END;
    tokens := tokens - granted;
END
$$;


--
-- Name: caller(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.caller() RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT CASE WHEN current_setting('role') = 'none' THEN session_user::text
                ELSE current_setting('role') END
$$;


--
-- Name: caller_tenant(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.caller_tenant() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT tenant FROM dbrouter.tenant_roles WHERE role = dbrouter.caller()
$$;


--
-- Name: cancel_message(bigint); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.cancel_message(p_message_id bigint) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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
$$;


--
-- Name: cancel_my_message(bigint); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.cancel_my_message(p_message_id bigint) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM dbrouter.check_mine(p_message_id);
    RETURN dbrouter.cancel_message(p_message_id);
END
$$;


--
-- Name: check_mine(bigint); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.check_mine(p_message_id bigint) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM dbrouter.messages m
                    WHERE m.id = p_message_id
                      AND dbrouter.is_mine(m.tenant, m.enqueued_by, dbrouter.caller(), dbrouter.caller_tenant())) THEN
        RAISE EXCEPTION 'no message % of %', p_message_id, coalesce('tenant ' || dbrouter.caller_tenant(), dbrouter.caller())
            USING ERRCODE = 'no_data_found',
                  HINT = 'SELECT id, status FROM dbrouter.my_messages ORDER BY id DESC LIMIT 20 lists yours';
    END IF;
END
$$;


--
-- Name: connections_check_refs(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.connections_check_refs() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    missing integer;
BEGIN
    -- Lock the few backends involved, as the foreign key did, so a backend
    -- cannot be removed while connections to it are being added.
    PERFORM 1 FROM dbrouter.backends
      WHERE id IN (SELECT DISTINCT backend_id FROM new_rows)
      FOR KEY SHARE;
    SELECT n.backend_id INTO missing
      FROM (SELECT DISTINCT backend_id FROM new_rows) n
     WHERE NOT EXISTS (SELECT 1 FROM dbrouter.backends b WHERE b.id = n.backend_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a connection refers to backend %, which does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: backends; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.backends (
    id integer NOT NULL,
    name text NOT NULL,
    engine text NOT NULL,
    config jsonb DEFAULT '{}'::jsonb NOT NULL,
    batch_size integer,
    enabled boolean DEFAULT true NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    paused_at timestamp with time zone,
    pause_reason text,
    rate_limit double precision,
    rate_burst integer,
    throttled_until timestamp with time zone,
    expire_replies_after interval,
    expire_after interval,
    number_format text DEFAULT 'as-is'::text NOT NULL,
    country_code text,
    CONSTRAINT backend_batch_size_range CHECK (((batch_size >= 1) AND (batch_size <= 10000))),
    CONSTRAINT backend_config_is_object CHECK ((jsonb_typeof(config) = 'object'::text)),
    CONSTRAINT backend_country_code CHECK ((country_code ~ '^[1-9][0-9]{0,2}$'::text)),
    CONSTRAINT backend_engine_not_empty CHECK ((engine <> ''::text)),
    CONSTRAINT backend_expire_positive CHECK ((expire_after > '00:00:00'::interval)),
    CONSTRAINT backend_expire_replies_positive CHECK ((expire_replies_after > '00:00:00'::interval)),
    CONSTRAINT backend_name_format CHECK ((name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'::text)),
    CONSTRAINT backend_number_format CHECK ((number_format = ANY (ARRAY['as-is'::text, 'e164'::text]))),
    CONSTRAINT backend_pause_reason CHECK (((paused_at IS NULL) = (pause_reason IS NULL))),
    CONSTRAINT backend_rate_burst_range CHECK (((rate_burst >= 1) AND (rate_burst <= 1000000))),
    CONSTRAINT backend_rate_limit_positive CHECK (((rate_limit > (0)::double precision) AND (rate_limit <= (1000000)::double precision)))
);


--
-- Name: deadline(timestamp with time zone, timestamp with time zone, boolean, dbrouter.backends); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.deadline(explicit timestamp with time zone, send_at timestamp with time zone, is_reply boolean, b dbrouter.backends) RETURNS timestamp with time zone
    LANGUAGE sql STABLE
    AS $$
    SELECT coalesce(explicit,
                    greatest(now(), send_at)
                    + CASE WHEN is_reply THEN b.expire_replies_after ELSE b.expire_after END)
$$;


--
-- Name: e164_identity(text, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.e164_identity(identity text, country_code text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $_$
    SELECT CASE WHEN e ~ '^\+[1-9][0-9]{6,14}$' THEN e END
      FROM (SELECT CASE
                WHEN d LIKE '+%' THEN d
                WHEN d LIKE '00%' THEN '+' || substr(d, 3)
                WHEN d LIKE '0%' AND country_code IS NOT NULL THEN '+' || country_code || substr(d, 2)
                WHEN d LIKE '0%' THEN NULL
                ELSE '+' || d
            END AS e
              FROM (SELECT regexp_replace(identity, '[[:space:]().-]', '', 'g') AS d) x) y
$_$;


--
-- Name: encoding(text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.encoding(body text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $_$
    SELECT CASE
        WHEN body ~ (
            -- the default alphabet (without the escape, 0x1B): '-' first,
            -- the ASCII letters and digits as ranges
            E'^[-@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !"#¤%&''()*+,./0-9:;<=>?¡A-ZÄÖÑÜ§¿a-zäöñüà'
            -- the extension table
            || E'\f^{}\\\\\\[~\\]|€]*$')
        THEN 'gsm7'
        ELSE 'ucs2'
    END
$_$;


--
-- Name: end_unsent(bigint[], text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.end_unsent(p_ids bigint[], p_reason text) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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
$$;


--
-- Name: enqueue_core_problem(text, boolean, text, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.enqueue_core_problem(backend text, backend_known boolean, identity text, body text) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT CASE
        WHEN backend IS NULL THEN 'backend is NULL; name one of dbrouter.backends'
        WHEN NOT backend_known THEN format('unknown backend %L; add it first (dbrouter backend add %s --engine ...)', backend, backend)
        WHEN identity IS NULL THEN format('identity is NULL (backend %L)', backend)
        WHEN btrim(identity) = '' THEN format('identity is empty (backend %L)', backend)
        WHEN length(identity) > 100 THEN format('identity %L is longer than 100 characters', left(identity, 20) || '...')
        WHEN body IS NULL THEN format('text is NULL (backend %L, identity %L); send '''' for an empty message', backend, identity)
        WHEN length(body) > 10000 THEN format('text is %s characters long; the limit is 10000 (backend %L, identity %L)', length(body), backend, identity)
    END
$$;


--
-- Name: enqueue_problem(text, boolean, text, text, text, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.enqueue_problem(backend text, backend_known boolean, identity text, body text, number_format text, country_code text) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT coalesce(
        dbrouter.enqueue_core_problem(backend, backend_known, identity, body),
        CASE WHEN number_format = 'e164'
                  AND dbrouter.normalize_identity(identity, number_format, country_code) IS NULL
             THEN format('identity %L is not a valid phone number for backend %L (number_format e164%s); write it as +<country code><number>',
                         identity, backend,
                         CASE WHEN country_code IS NULL THEN ', no country_code for national numbers'
                              ELSE ', country_code ' || country_code END)
        END)
$$;


--
-- Name: expand_fanout_part(bigint, integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.expand_fanout_part(p_message_id bigint, p_part integer) RETURNS integer
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
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
$$;


--
-- Name: expire_due(integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.expire_due(p_limit integer DEFAULT 1000) RETURNS integer
    LANGUAGE sql
    AS $$
    SELECT dbrouter.end_unsent(ARRAY(
        SELECT t.id FROM dbrouter.transmissions t
         WHERE t.expires_at <= now() AND t.due_at IS NOT NULL
           AND (t.status <> 'P' OR t.due_at <= now())
         ORDER BY t.expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED), NULL)
$$;


--
-- Name: fan_out(integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.fan_out(p_parts integer DEFAULT 1) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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
$$;


--
-- Name: flush_parts(interval); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.flush_parts(p_older_than interval) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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
$$;


--
-- Name: grant_roles(text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.grant_roles(p_prefix text DEFAULT 'dbrouter_'::text) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET client_min_messages TO 'warning'
    AS $_$
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
$_$;


--
-- Name: inbox_drain(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.inbox_drain() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
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
$$;


--
-- Name: is_mine(text, text, text, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.is_mine(p_tenant text, p_enqueued_by text, p_caller text, p_caller_tenant text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT CASE WHEN p_tenant IS NOT NULL THEN p_tenant = p_caller_tenant
                ELSE p_enqueued_by = p_caller END
$$;


--
-- Name: join_parts(integer, text, integer, integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.join_parts(p_backend_id integer, p_sender text, p_reference integer, p_total integer) RETURNS void
    LANGUAGE sql
    AS $$
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
$$;


--
-- Name: long_text_segments(text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.long_text_segments(body text) RETURNS integer
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    AS $$
DECLARE
    gsm constant boolean := dbrouter.encoding(body) = 'gsm7';
    single constant integer := CASE WHEN gsm THEN 160 ELSE 70 END;
    multi constant integer := CASE WHEN gsm THEN 153 ELSE 67 END;
    -- the characters that cost two units: the extension table's (GSM-7),
    -- those beyond the Basic Multilingual Plane (UCS-2)
    wide constant text := CASE WHEN gsm THEN E'[\f^{}\\\\\\[~\\]|€]' ELSE '[\U00010000-\U0010FFFF]' END;
    parts integer := 1;
    used integer := 0;
    cost integer;
    c text;
BEGIN
    IF 2 * length(body) - length(regexp_replace(body, wide, '', 'g')) <= single THEN
        RETURN 1;
    END IF;
    FOREACH c IN ARRAY regexp_split_to_array(body, '') LOOP
        cost := 1 + (c ~ wide)::integer;
        IF used + cost > multi THEN
            parts := parts + 1;
            used := 0;
        END IF;
        used := used + cost;
    END LOOP;
    RETURN parts;
END
$$;


--
-- Name: mark_delivered(bigint[]); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.mark_delivered(p_transmissions bigint[]) RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    WITH done AS (
        UPDATE dbrouter.transmissions t
           SET status = 'D', delivered_at = now(), updated_at = now()
         WHERE t.id = ANY (p_transmissions) AND t.status = 'S'
        RETURNING 1
    )
    SELECT count(*)::integer FROM done
$$;


--
-- Name: normalize_identity(text, text, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.normalize_identity(identity text, number_format text, country_code text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN number_format IS DISTINCT FROM 'e164' THEN identity
                ELSE dbrouter.e164_identity(identity, country_code) END
$$;


--
-- Name: opt_in(text, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.opt_in(p_backend text, p_identity text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    b dbrouter.backends%ROWTYPE;
BEGIN
    SELECT * INTO b FROM dbrouter.backends WHERE id = dbrouter.backend_id(p_backend);
    DELETE FROM dbrouter.opt_outs o USING dbrouter.connections c
     WHERE o.connection_id = c.id AND c.backend_id = b.id
       AND c.identity = dbrouter.normalize_identity(p_identity, b.number_format, b.country_code);
    RETURN FOUND;
END
$$;


--
-- Name: opt_out(text, text, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.opt_out(p_backend text, p_identity text, p_keyword text DEFAULT 'operator'::text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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
$$;


--
-- Name: outbox_drain(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.outbox_drain() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
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
$$;


--
-- Name: pause_backend(text, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.pause_backend(p_backend text, p_reason text DEFAULT 'paused by an operator'::text) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    UPDATE dbrouter.backends
       SET paused_at = coalesce(paused_at, now()),
           pause_reason = coalesce(nullif(btrim(p_reason), ''), 'paused by an operator')
     WHERE id = dbrouter.backend_id(p_backend)
$$;


--
-- Name: purge(interval, integer); Type: PROCEDURE; Schema: dbrouter; Owner: -
--

CREATE PROCEDURE dbrouter.purge(IN older_than interval, IN batch_size integer DEFAULT 1000)
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_after bigint := 0;
    v_total bigint := 0;
    r record;
BEGIN
    LOOP
        SELECT * INTO r FROM dbrouter.purge_batch(older_than, v_after, batch_size);
        v_total := v_total + r.purged;
        COMMIT;
        EXIT WHEN r.last_id IS NULL;
        v_after := r.last_id;
    END LOOP;
    RAISE NOTICE 'purged % messages', v_total;
END
$$;


--
-- Name: purge_batch(interval, bigint, integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.purge_batch(p_older_than interval, p_after bigint DEFAULT 0, p_batch integer DEFAULT 1000, OUT purged integer, OUT last_id bigint) RETURNS record
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    cut timestamptz;
    any_old boolean;
    ids bigint[];
    kept integer;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a positive interval, e.g. ''30 days''';
    END IF;
    IF p_batch IS NULL OR p_batch NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'batch size must be between 1 and 100000, got %', p_batch;
    END IF;
    cut := now() - p_older_than;
    purged := 0;
    SELECT max(id), bool_or(created_at < cut) INTO last_id, any_old
      FROM (SELECT id, created_at FROM dbrouter.messages
             WHERE id > p_after ORDER BY id LIMIT p_batch) w;
    IF last_id IS NULL OR NOT any_old THEN
        last_id := NULL;  -- the walk is over
        RETURN;
    END IF;

    -- Final and old, in the window or answering one of those.
    -- (Two index scans: the window by primary key, its answers through
    -- messages_in_response_to. One OR-ed condition made PostgreSQL scan the
    -- whole table: 3 s per batch over 5 million rows.)
    ids := ARRAY(
        SELECT m.id
          FROM (SELECT w.id FROM dbrouter.messages w WHERE w.id > p_after AND w.id <= last_id
                UNION
                SELECT r.id FROM dbrouter.messages r
                 WHERE r.in_response_to > p_after AND r.in_response_to <= last_id) c
          JOIN dbrouter.messages m ON m.id = c.id
         WHERE m.created_at < cut AND m.updated_at < cut
           AND m.status IN ('R', 'E', 'S', 'D')
           AND NOT EXISTS (SELECT 1 FROM dbrouter.transmissions t
                            WHERE t.message_id = m.id AND t.due_at IS NOT NULL)
           FOR UPDATE OF m SKIP LOCKED);
    -- Keep whatever a message outside the set answers (repeat: keeping one
    -- can keep what it answers).
    LOOP
        kept := cardinality(ids);
        ids := ARRAY(SELECT k.mid FROM unnest(ids) AS k(mid)
                      WHERE NOT EXISTS (SELECT 1 FROM dbrouter.messages r
                                         WHERE r.in_response_to = k.mid AND r.id <> ALL (ids)));
        EXIT WHEN cardinality(ids) = kept;
    END LOOP;
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;

    DELETE FROM dbrouter.attempts a USING dbrouter.transmissions t
     WHERE t.message_id = ANY (ids) AND a.transmission_id = t.id;
    DELETE FROM dbrouter.transmission_parts p USING dbrouter.transmissions t
     WHERE t.message_id = ANY (ids) AND p.transmission_id = t.id;
    DELETE FROM dbrouter.database_backend_sends s USING dbrouter.transmissions t
     WHERE t.message_id = ANY (ids) AND s.transmission_id = t.id;
    DELETE FROM dbrouter.transmissions WHERE message_id = ANY (ids);
    DELETE FROM dbrouter.messages WHERE id = ANY (ids);
    purged := cardinality(ids);
END
$$;


--
-- Name: quarantine(bigint, bigint, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.quarantine(p_token bigint, p_id bigint, p_error text) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_message_id bigint;
    v_attempts integer;
BEGIN
    SELECT t.message_id, t.attempts INTO v_message_id, v_attempts
      FROM dbrouter.transmissions t
     WHERE t.id = p_id AND t.lease_token = p_token AND t.status = 'P'
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    PERFORM dbrouter.recount(v_message_id);
    UPDATE dbrouter.transmissions
       SET status = 'E', lease_token = NULL, due_at = NULL, last_error = p_error, updated_at = now()
     WHERE id = p_id;
    INSERT INTO dbrouter.attempts (transmission_id, attempt, error, final)
    VALUES (p_id, v_attempts, p_error, true);
    RETURN 1;
END
$$;


--
-- Name: raise_enqueue_problem(text, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.raise_enqueue_problem(source text, problem text) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION '%: %', source, problem
        USING ERRCODE = 'check_violation',
              HINT = 'nothing from this statement was enqueued';
END
$$;


--
-- Name: receive_part(text, text, integer, integer, integer, text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.receive_part(p_backend text, p_sender text, p_reference integer, p_total integer, p_part integer, p_text text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
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
$$;


--
-- Name: recount(bigint); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.recount(p_message_id bigint) RETURNS character
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    UPDATE dbrouter.messages m
       SET n_total = greatest(m.n_total, c.total),
           n_error = c.error, n_done = c.done, n_delivered = c.delivered,
           status = CASE WHEN m.status = 'Q' AND c.left_queue = 0 THEN 'Q'
                         ELSE dbrouter.rollup(greatest(m.n_total, c.total), c.error, c.done, c.delivered) END,
           updated_at = now()
      FROM (SELECT (count(*) + coalesce((SELECT sum(cardinality(f.identities))
                                           FROM dbrouter.fanouts f
                                          WHERE f.message_id = p_message_id), 0))::integer AS total,
                   count(*) FILTER (WHERE t.status = 'E')::integer AS error,
                   count(*) FILTER (WHERE t.status IN ('S', 'D'))::integer AS done,
                   count(*) FILTER (WHERE t.status = 'D')::integer AS delivered,
                   count(*) FILTER (WHERE t.status <> 'Q') AS left_queue
              FROM dbrouter.transmissions t WHERE t.message_id = p_message_id) c
     WHERE m.id = p_message_id AND m.direction = 'O'
    RETURNING m.status
$$;


--
-- Name: refuse_reference_change(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.refuse_reference_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'the references of a % row cannot be changed', TG_TABLE_NAME
        USING ERRCODE = 'foreign_key_violation',
              HINT = 'enqueue a new message instead';
END
$$;


--
-- Name: refuse_referenced_delete(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.refuse_referenced_delete() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    still bigint;
BEGIN
    IF TG_TABLE_NAME = 'messages' THEN
        -- (a probe of the (message_id, connection_id) index per row, never a
        -- hash of all transmissions: purge deletes 1,000 messages at a time)
        SELECT o.id INTO still FROM old_rows o
         WHERE (SELECT 1 FROM dbrouter.transmissions t WHERE t.message_id = o.id LIMIT 1) IS NOT NULL
            OR (SELECT 1 FROM dbrouter.fanouts f WHERE f.message_id = o.id LIMIT 1) IS NOT NULL
         LIMIT 1;
    ELSE
        -- (no index on connection_id: dbrouter never deletes connections)
        SELECT o.id INTO still FROM old_rows o
         WHERE EXISTS (SELECT 1 FROM dbrouter.transmissions t WHERE t.connection_id = o.id)
         LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot delete % row %: transmissions still refer to it', TG_TABLE_NAME, still
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'old messages go with dbrouter.purge(), which deletes their transmissions first';
    END IF;
    RETURN NULL;
END
$$;


--
-- Name: requeue_backend(text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.requeue_backend(p_backend text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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
$$;


--
-- Name: requeue_message(bigint); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.requeue_message(p_message_id bigint) RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT dbrouter.requeue_transmissions(
        ARRAY(SELECT id FROM dbrouter.transmissions WHERE message_id = p_message_id AND status = 'E'))
$$;


--
-- Name: requeue_my_message(bigint); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.requeue_my_message(p_message_id bigint) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM dbrouter.check_mine(p_message_id);
    RETURN dbrouter.requeue_message(p_message_id);
END
$$;


--
-- Name: requeue_transmissions(bigint[]); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.requeue_transmissions(p_ids bigint[]) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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
$$;


--
-- Name: resume_backend(text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.resume_backend(p_backend text) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    UPDATE dbrouter.backends SET paused_at = NULL, pause_reason = NULL
     WHERE id = dbrouter.backend_id(p_backend)
$$;


--
-- Name: return_tokens(integer, integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.return_tokens(p_backend_id integer, p_unused integer) RETURNS void
    LANGUAGE sql
    AS $$
    UPDATE dbrouter.backend_rates r
       SET tokens = least(coalesce(b.rate_burst, greatest(1, floor(b.rate_limit))), r.tokens + p_unused)
      FROM dbrouter.backends b
     WHERE r.backend_id = p_backend_id AND b.id = r.backend_id AND b.rate_limit IS NOT NULL
$$;


--
-- Name: roll_up_parts(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.roll_up_parts() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    WITH verdict AS (
        SELECT p.transmission_id AS id,
               bool_and(p.status = 'D') AS delivered,
               min(p.part) FILTER (WHERE p.status = 'E') AS failed_part,
               (array_agg(p.detail ORDER BY p.part) FILTER (WHERE p.status = 'E'))[1] AS detail
          FROM dbrouter.transmission_parts p
         WHERE p.transmission_id IN (SELECT DISTINCT transmission_id FROM new_parts)
         GROUP BY p.transmission_id
    ), locked AS (
        SELECT t.id, v.delivered, v.failed_part, v.detail
          FROM verdict v JOIN dbrouter.transmissions t ON t.id = v.id
         WHERE (v.failed_part IS NOT NULL AND t.status = 'S')
            OR (v.failed_part IS NULL AND v.delivered
                AND (t.status = 'S' OR (t.status = 'E' AND t.sent_at IS NOT NULL)))
         ORDER BY t.id
           FOR UPDATE OF t
    )
    UPDATE dbrouter.transmissions t
       SET status = CASE WHEN l.failed_part IS NOT NULL THEN 'E' ELSE 'D' END,
           due_at = NULL,
           delivered_at = CASE WHEN l.failed_part IS NULL THEN now() ELSE t.delivered_at END,
           last_error = CASE WHEN l.failed_part IS NOT NULL
                             THEN format('delivery failed: part %s: %s', l.failed_part,
                                         coalesce(l.detail, 'the gateway reported a failure'))
                             ELSE t.last_error END,
           updated_at = now()
      FROM locked l
     WHERE t.id = l.id;
    RETURN NULL;
END
$$;


--
-- Name: roll_up_transmissions(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.roll_up_transmissions() RETURNS trigger
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    AS $$
DECLARE
    v_ids bigint[];
    v_error integer[];
    v_done integer[];
    v_delivered integer[];
BEGIN
    -- (plpgsql plans a statement when it first runs it, so the INSERT
    -- trigger, which has no old_rows, never plans the second one)
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(message_id ORDER BY message_id), array_agg(error ORDER BY message_id),
               array_agg(done ORDER BY message_id), array_agg(delivered ORDER BY message_id)
          INTO v_ids, v_error, v_done, v_delivered
          FROM (SELECT message_id,
                       count(*) FILTER (WHERE status = 'E')::integer AS error,
                       count(*) FILTER (WHERE status IN ('S', 'D'))::integer AS done,
                       count(*) FILTER (WHERE status = 'D')::integer AS delivered
                  FROM new_rows
                 WHERE status IN ('E', 'S', 'D')
                 GROUP BY message_id) d;
    ELSE
        SELECT array_agg(message_id ORDER BY message_id), array_agg(error ORDER BY message_id),
               array_agg(done ORDER BY message_id), array_agg(delivered ORDER BY message_id)
          INTO v_ids, v_error, v_done, v_delivered
          FROM (SELECT message_id,
                       sum(w * (status = 'E')::integer)::integer AS error,
                       sum(w * (status IN ('S', 'D'))::integer)::integer AS done,
                       sum(w * (status = 'D')::integer)::integer AS delivered,
                       sum(w * (status = 'P')::integer)::integer AS leased
                  FROM (SELECT message_id, status, 1 AS w FROM new_rows
                        UNION ALL
                        SELECT message_id, status, -1 FROM old_rows) x
                 GROUP BY message_id) d
         WHERE error <> 0 OR done <> 0 OR delivered <> 0 OR leased > 0;
    END IF;
    IF v_ids IS NULL THEN
        RETURN NULL;
    END IF;

    WITH locked AS (
        SELECT m.id, d.error, d.done, d.delivered
          FROM unnest(v_ids, v_error, v_done, v_delivered) AS d(message_id, error, done, delivered)
          JOIN dbrouter.messages m ON m.id = d.message_id
         WHERE m.direction = 'O'
           AND (d.error <> 0 OR d.done <> 0 OR d.delivered <> 0 OR m.status = 'Q')
         ORDER BY m.id
           FOR UPDATE OF m
    )
    UPDATE dbrouter.messages m
       SET n_error = m.n_error + l.error,
           n_done = m.n_done + l.done,
           n_delivered = m.n_delivered + l.delivered,
           status = dbrouter.rollup(m.n_total, m.n_error + l.error, m.n_done + l.done,
                                    m.n_delivered + l.delivered),
           sent_at = CASE WHEN m.n_done + l.done >= m.n_total THEN coalesce(m.sent_at, now())
                          ELSE m.sent_at END,
           delivered_at = CASE WHEN m.n_delivered + l.delivered >= m.n_total
                               THEN coalesce(m.delivered_at, now())
                               ELSE m.delivered_at END,
           updated_at = now()
      FROM locked l
     WHERE m.id = l.id;
    RETURN NULL;
END
$$;


--
-- Name: rollup(integer, integer, integer, integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.rollup(n_total integer, n_error integer, n_done integer, n_delivered integer) RETURNS character
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN n_error > 0 THEN 'E'
        WHEN n_done < n_total THEN 'P'
        WHEN n_delivered < n_total THEN 'S'
        ELSE 'D'
    END::char(1)
$$;


--
-- Name: schedule_problem(integer, timestamp with time zone, timestamp with time zone); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.schedule_problem(priority integer, send_at timestamp with time zone, expires_at timestamp with time zone) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT CASE
        WHEN priority NOT BETWEEN -1000 AND 1000
            THEN format('priority %s is out of range; use -1000 to 1000 (higher goes first, default 0, replies 1)', priority)
        WHEN expires_at <= now()
            THEN format('expires_at %s has already passed', expires_at)
        WHEN expires_at <= send_at
            THEN format('expires_at %s is not after send_at %s', expires_at, send_at)
    END
$$;


--
-- Name: segments(text); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.segments(body text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN octet_length(body) <= 70 THEN 1 ELSE dbrouter.long_text_segments(body) END
$$;


--
-- Name: take_tenant_tokens(text, integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.take_tenant_tokens(p_tenant text, p_wanted integer, OUT granted integer, OUT wait_seconds double precision) RETURNS record
    LANGUAGE plpgsql
    AS $$
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
$$;


--
-- Name: take_tokens(integer, integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.take_tokens(p_backend_id integer, p_wanted integer, OUT granted integer, OUT wait_seconds double precision) RETURNS record
    LANGUAGE plpgsql
    AS $$
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
$$;


--
-- Name: tenant_problem(text, text, integer); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.tenant_problem(p_tenant text, p_backend text, p_backend_id integer) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT CASE WHEN p_tenant IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM dbrouter.tenant_backends tb
                                  WHERE tb.tenant = p_tenant AND tb.backend_id = p_backend_id)
                THEN format('backend %L is unknown or not granted to tenant %L; an admin grants it: INSERT INTO dbrouter.tenant_backends (tenant, backend_id) SELECT %L, id FROM dbrouter.backends WHERE name = %L',
                            p_backend, p_tenant, p_tenant, p_backend) END
$$;


--
-- Name: throttle_backend(integer, double precision); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.throttle_backend(p_backend_id integer, p_seconds double precision) RETURNS void
    LANGUAGE sql
    AS $$
    UPDATE dbrouter.backends
       SET throttled_until = greatest(throttled_until, now() + make_interval(secs => p_seconds))
     WHERE id = p_backend_id
       AND (throttled_until IS NULL OR throttled_until < now() + make_interval(secs => p_seconds))
$$;


--
-- Name: transmissions_check_refs(); Type: FUNCTION; Schema: dbrouter; Owner: -
--

CREATE FUNCTION dbrouter.transmissions_check_refs() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    bad record;
BEGIN
    -- Distinct messages first: a broadcast's 100,000 rows share one. Each
    -- check is a scalar subquery, i.e. one index probe per row whatever the
    -- planner believes about the tables: a NOT EXISTS let it hash the whole
    -- messages table for 200 rows when its statistics said "small" (a
    -- growing queue's statistics lag), which cost 40 us per message.
    SELECT n.message_id INTO bad
      FROM (SELECT DISTINCT message_id FROM new_rows) n
     WHERE (SELECT m.id FROM dbrouter.messages m WHERE m.id = n.message_id) IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a transmission refers to message %, which does not exist', bad.message_id
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'enqueue through dbrouter.inbox, dbrouter.outbox or dbrouter.broadcast()';
    END IF;
    SELECT n.connection_id, n.backend_id INTO bad
      FROM new_rows n
     WHERE (SELECT c.backend_id FROM dbrouter.connections c WHERE c.id = n.connection_id)
           IS DISTINCT FROM n.backend_id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a transmission refers to connection % on backend %, which does not exist',
                        bad.connection_id, bad.backend_id
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'enqueue through dbrouter.inbox, dbrouter.outbox or dbrouter.broadcast()';
    END IF;
    RETURN NULL;
END
$$;


--
-- Name: attempts; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.attempts (
    id bigint NOT NULL,
    transmission_id bigint NOT NULL,
    attempt integer NOT NULL,
    error text NOT NULL,
    final boolean NOT NULL,
    failed_at timestamp with time zone DEFAULT now() NOT NULL,
    requeued boolean DEFAULT false NOT NULL,
    CONSTRAINT attempts_attempt_check CHECK ((attempt >= 1))
);


--
-- Name: attempts_id_seq; Type: SEQUENCE; Schema: dbrouter; Owner: -
--

ALTER TABLE dbrouter.attempts ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME dbrouter.attempts_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: backend_rates; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.backend_rates (
    backend_id integer NOT NULL,
    tokens double precision NOT NULL,
    refilled_at timestamp with time zone NOT NULL
);


--
-- Name: backends_id_seq; Type: SEQUENCE; Schema: dbrouter; Owner: -
--

ALTER TABLE dbrouter.backends ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME dbrouter.backends_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: binds; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.binds (
    backend_id integer NOT NULL,
    worker text NOT NULL,
    bind integer NOT NULL,
    instance bigint NOT NULL,
    up boolean NOT NULL,
    state text NOT NULL,
    since timestamp with time zone DEFAULT now() NOT NULL,
    seen_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: bind_states; Type: VIEW; Schema: dbrouter; Owner: -
--

CREATE VIEW dbrouter.bind_states AS
 SELECT be.name AS backend,
    b.worker,
    b.bind,
    (b.up AND (NOT s.stale)) AS up,
        CASE
            WHEN s.stale THEN format('stale: its worker has not reported since %s (it died or lost the database); it said: %s'::text, to_char(b.seen_at, 'YYYY-MM-DD HH24:MI:SS'::text), b.state)
            ELSE b.state
        END AS state,
    b.since,
    b.seen_at
   FROM ((dbrouter.binds b
     JOIN dbrouter.backends be ON ((be.id = b.backend_id)))
     CROSS JOIN LATERAL ( SELECT (b.seen_at < (now() - '00:01:30'::interval)) AS stale) s);


--
-- Name: connections; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.connections (
    id bigint NOT NULL,
    backend_id integer NOT NULL,
    identity text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT connection_identity_format CHECK (((btrim(identity) <> ''::text) AND (length(identity) <= 100)))
);


--
-- Name: connections_id_seq; Type: SEQUENCE; Schema: dbrouter; Owner: -
--

ALTER TABLE dbrouter.connections ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME dbrouter.connections_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: console_sessions; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.console_sessions (
    token_sha256 bytea NOT NULL,
    user_name text NOT NULL,
    csrf text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL
);


--
-- Name: console_users; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.console_users (
    name text NOT NULL,
    password_hash text NOT NULL,
    read_only boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT console_password_is_argon2 CHECK ((password_hash ~~ '$argon2%'::text)),
    CONSTRAINT console_user_name CHECK ((name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'::text))
);


--
-- Name: database_backend_calls; Type: SEQUENCE; Schema: dbrouter; Owner: -
--

CREATE SEQUENCE dbrouter.database_backend_calls
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: database_backend_sends; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.database_backend_sends (
    id bigint NOT NULL,
    call_id bigint NOT NULL,
    batch bigint NOT NULL,
    backend text NOT NULL,
    message_id bigint NOT NULL,
    transmission_id bigint NOT NULL,
    identity text NOT NULL,
    text text NOT NULL,
    in_response_to bigint,
    reply_to_external_id text,
    attempt integer NOT NULL,
    sent_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: database_backend_sends_id_seq; Type: SEQUENCE; Schema: dbrouter; Owner: -
--

ALTER TABLE dbrouter.database_backend_sends ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME dbrouter.database_backend_sends_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: fanouts; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.fanouts (
    message_id bigint NOT NULL,
    part integer NOT NULL,
    backend_id integer NOT NULL,
    identities text[] NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    error text,
    retry_at timestamp with time zone,
    CONSTRAINT fanout_identities CHECK (((cardinality(identities) >= 1) AND (cardinality(identities) <= 1000)))
);


--
-- Name: TABLE fanouts; Type: COMMENT; Schema: dbrouter; Owner: -
--

COMMENT ON TABLE dbrouter.fanouts IS 'Identities of large broadcasts not yet given their transmissions; the workers expand one part at a time (dbrouter.fan_out).';


--
-- Name: fanouts_waiting; Type: VIEW; Schema: dbrouter; Owner: -
--

CREATE VIEW dbrouter.fanouts_waiting AS
 SELECT f.message_id,
    b.name AS backend,
    count(*) AS parts,
    sum(cardinality(f.identities)) AS identities,
    (now() - min(f.created_at)) AS oldest_age,
    count(f.error) AS failing_parts,
    min(f.error) AS error
   FROM (dbrouter.fanouts f
     JOIN dbrouter.backends b ON ((b.id = f.backend_id)))
  GROUP BY f.message_id, b.name;


--
-- Name: inbound_parts; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.inbound_parts (
    backend_id integer NOT NULL,
    sender text NOT NULL,
    reference integer NOT NULL,
    total integer NOT NULL,
    part integer NOT NULL,
    text text NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT inbound_part_number CHECK (((part >= 1) AND (part <= total))),
    CONSTRAINT inbound_part_total CHECK (((total >= 2) AND (total <= 255)))
);


--
-- Name: inbox; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE UNLOGGED TABLE dbrouter.inbox (
    backend text,
    identity text,
    text text,
    external_id text,
    fields jsonb
);


--
-- Name: keywords; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.keywords (
    keyword text NOT NULL,
    reply text NOT NULL,
    CONSTRAINT keyword_format CHECK (((keyword = lower(btrim(keyword))) AND (keyword <> ''::text))),
    CONSTRAINT keyword_reply_length CHECK (((length(reply) >= 1) AND (length(reply) <= 10000)))
);


--
-- Name: messages; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.messages (
    id bigint NOT NULL,
    direction character(1) NOT NULL,
    status character(1) DEFAULT 'Q'::bpchar NOT NULL,
    text text NOT NULL,
    external_id text,
    in_response_to bigint,
    fields jsonb DEFAULT '{}'::jsonb NOT NULL,
    error text,
    n_total integer DEFAULT 0 NOT NULL,
    n_error integer DEFAULT 0 NOT NULL,
    n_done integer DEFAULT 0 NOT NULL,
    n_delivered integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    sent_at timestamp with time zone,
    delivered_at timestamp with time zone,
    priority smallint DEFAULT 0 NOT NULL,
    send_at timestamp with time zone,
    expires_at timestamp with time zone,
    client_key text,
    cancelled_at timestamp with time zone,
    encoding text GENERATED ALWAYS AS (dbrouter.encoding(text)) STORED,
    segments integer GENERATED ALWAYS AS (dbrouter.segments(text)) STORED,
    enqueued_by text,
    tenant text,
    CONSTRAINT message_client_key_length CHECK (((length(client_key) >= 1) AND (length(client_key) <= 200))),
    CONSTRAINT message_counters CHECK ((((n_error + n_done) <= n_total) AND (n_delivered <= n_done))),
    CONSTRAINT message_direction CHECK ((direction = ANY (ARRAY['I'::bpchar, 'O'::bpchar]))),
    CONSTRAINT message_fields_is_object CHECK ((jsonb_typeof(fields) = 'object'::text)),
    CONSTRAINT message_priority_range CHECK (((priority >= '-1000'::integer) AND (priority <= 1000))),
    CONSTRAINT message_status CHECK ((((direction = 'I'::bpchar) AND (status = ANY (ARRAY['Q'::bpchar, 'R'::bpchar, 'E'::bpchar]))) OR ((direction = 'O'::bpchar) AND (status = ANY (ARRAY['Q'::bpchar, 'P'::bpchar, 'S'::bpchar, 'D'::bpchar, 'E'::bpchar]))))),
    CONSTRAINT message_text_length CHECK ((length(text) <= 10000)),
    CONSTRAINT messages_n_delivered_check CHECK ((n_delivered >= 0)),
    CONSTRAINT messages_n_done_check CHECK ((n_done >= 0)),
    CONSTRAINT messages_n_error_check CHECK ((n_error >= 0)),
    CONSTRAINT messages_n_total_check CHECK ((n_total >= 0))
)
WITH (fillfactor='90');


--
-- Name: COLUMN messages.encoding; Type: COMMENT; Schema: dbrouter; Owner: -
--

COMMENT ON COLUMN dbrouter.messages.encoding IS 'gsm7 or ucs2: how the text goes on the air (dbrouter.encoding)';


--
-- Name: COLUMN messages.segments; Type: COMMENT; Schema: dbrouter; Owner: -
--

COMMENT ON COLUMN dbrouter.messages.segments IS 'the SMS parts the text takes on the air, per recipient (dbrouter.segments)';


--
-- Name: COLUMN messages.enqueued_by; Type: COMMENT; Schema: dbrouter; Owner: -
--

COMMENT ON COLUMN dbrouter.messages.enqueued_by IS 'the role that enqueued it (dbrouter.caller()); NULL for replies';


--
-- Name: messages_id_seq; Type: SEQUENCE; Schema: dbrouter; Owner: -
--

ALTER TABLE dbrouter.messages ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (
    SEQUENCE NAME dbrouter.messages_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: my_messages; Type: VIEW; Schema: dbrouter; Owner: -
--

CREATE VIEW dbrouter.my_messages WITH (security_barrier='true') AS
 SELECT messages.id,
    messages.direction,
    messages.status,
    messages.text,
    messages.client_key,
    messages.priority,
    messages.send_at,
    messages.expires_at,
    messages.cancelled_at,
    messages.n_total,
    messages.n_done,
    messages.n_delivered,
    messages.n_error,
    messages.encoding,
    messages.segments,
    messages.error,
    messages.created_at,
    messages.sent_at,
    messages.delivered_at,
    messages.tenant
   FROM dbrouter.messages
  WHERE dbrouter.is_mine(messages.tenant, messages.enqueued_by, ( SELECT dbrouter.caller() AS caller), ( SELECT dbrouter.caller_tenant() AS caller_tenant));


--
-- Name: opt_out_keywords; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.opt_out_keywords (
    keyword text NOT NULL,
    action text NOT NULL,
    reply text NOT NULL,
    CONSTRAINT opt_out_keyword_action CHECK ((action = ANY (ARRAY['stop'::text, 'start'::text]))),
    CONSTRAINT opt_out_keyword_format CHECK (((keyword = lower(btrim(keyword))) AND (keyword <> ''::text))),
    CONSTRAINT opt_out_keyword_reply CHECK (((length(reply) >= 1) AND (length(reply) <= 10000)))
);


--
-- Name: opt_outs; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.opt_outs (
    connection_id bigint NOT NULL,
    keyword text NOT NULL,
    message_id bigint,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: opted_out; Type: VIEW; Schema: dbrouter; Owner: -
--

CREATE VIEW dbrouter.opted_out AS
 SELECT b.name AS backend,
    c.identity,
    o.keyword,
    o.message_id,
    o.created_at
   FROM ((dbrouter.opt_outs o
     JOIN dbrouter.connections c ON ((c.id = o.connection_id)))
     JOIN dbrouter.backends b ON ((b.id = c.backend_id)));


--
-- Name: outbox; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE UNLOGGED TABLE dbrouter.outbox (
    backend text,
    identity text,
    text text,
    in_response_to bigint,
    priority integer,
    send_at timestamp with time zone,
    expires_at timestamp with time zone,
    client_key text
);


--
-- Name: receipts; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.receipts (
    id bigint NOT NULL,
    backend_id integer NOT NULL,
    transmission_id bigint,
    gateway_id text,
    outcome character(1) NOT NULL,
    detail text,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    not_before timestamp with time zone,
    CONSTRAINT receipt_names_transmission CHECK (((transmission_id IS NOT NULL) OR (gateway_id IS NOT NULL))),
    CONSTRAINT receipt_outcome CHECK ((outcome = ANY (ARRAY['D'::bpchar, 'E'::bpchar, 'B'::bpchar])))
);


--
-- Name: receipts_id_seq; Type: SEQUENCE; Schema: dbrouter; Owner: -
--

ALTER TABLE dbrouter.receipts ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME dbrouter.receipts_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: received_ids; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.received_ids (
    backend_id integer NOT NULL,
    external_id text NOT NULL,
    message_id bigint NOT NULL
);


--
-- Name: transmissions; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.transmissions (
    id bigint NOT NULL,
    message_id bigint NOT NULL,
    connection_id bigint NOT NULL,
    backend_id integer NOT NULL,
    status character(1) DEFAULT 'Q'::bpchar NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    due_at timestamp with time zone,
    lease_token bigint,
    external_id text,
    last_error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    sent_at timestamp with time zone,
    delivered_at timestamp with time zone,
    priority smallint DEFAULT 0 NOT NULL,
    expires_at timestamp with time zone,
    CONSTRAINT transmission_attempts CHECK ((attempts >= 0)),
    CONSTRAINT transmission_final_not_due CHECK (((status <> ALL (ARRAY['S'::bpchar, 'D'::bpchar, 'R'::bpchar])) OR (due_at IS NULL))),
    CONSTRAINT transmission_lease CHECK (((status = 'P'::bpchar) = (lease_token IS NOT NULL))),
    CONSTRAINT transmission_leased_is_due CHECK (((status <> 'P'::bpchar) OR (due_at IS NOT NULL))),
    CONSTRAINT transmission_status CHECK ((status = ANY (ARRAY['Q'::bpchar, 'P'::bpchar, 'S'::bpchar, 'D'::bpchar, 'E'::bpchar, 'R'::bpchar])))
)
WITH (fillfactor='90');
ALTER TABLE ONLY dbrouter.transmissions ALTER COLUMN message_id SET (n_distinct=-0.5);


--
-- Name: recent_errors; Type: VIEW; Schema: dbrouter; Owner: -
--

CREATE VIEW dbrouter.recent_errors AS
 SELECT a.failed_at,
    b.name AS backend,
    c.identity,
    m.direction,
    t.message_id,
    a.transmission_id,
    a.attempt,
    a.final,
    a.error,
    a.requeued
   FROM ((((( SELECT attempts.id,
            attempts.transmission_id,
            attempts.attempt,
            attempts.error,
            attempts.final,
            attempts.failed_at,
            attempts.requeued
           FROM dbrouter.attempts
          ORDER BY attempts.id DESC
         LIMIT 100) a
     JOIN dbrouter.transmissions t ON ((t.id = a.transmission_id)))
     JOIN dbrouter.messages m ON ((m.id = t.message_id)))
     JOIN dbrouter.connections c ON ((c.id = t.connection_id)))
     JOIN dbrouter.backends b ON ((b.id = t.backend_id)))
  ORDER BY a.id DESC;


--
-- Name: schema_files; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.schema_files (
    name text NOT NULL,
    body text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: stats; Type: VIEW; Schema: dbrouter; Owner: -
--

CREATE VIEW dbrouter.stats AS
 SELECT m.direction,
    t.status,
    b.name AS backend,
    count(*) AS transmissions,
    count(DISTINCT t.message_id) AS messages,
    (now() - min(t.created_at)) AS oldest_age
   FROM ((dbrouter.transmissions t
     JOIN dbrouter.messages m ON ((m.id = t.message_id)))
     JOIN dbrouter.backends b ON ((b.id = t.backend_id)))
  GROUP BY m.direction, t.status, b.name;


--
-- Name: tenant_backends; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.tenant_backends (
    tenant text NOT NULL,
    backend_id integer NOT NULL
);


--
-- Name: tenant_rates; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.tenant_rates (
    tenant text NOT NULL,
    tokens double precision NOT NULL,
    refilled_at timestamp with time zone NOT NULL
);


--
-- Name: tenant_roles; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.tenant_roles (
    role text NOT NULL,
    tenant text NOT NULL
);


--
-- Name: tenant_stats; Type: VIEW; Schema: dbrouter; Owner: -
--

CREATE VIEW dbrouter.tenant_stats AS
 SELECT messages.tenant,
    messages.direction,
    messages.status,
    count(*) AS messages,
    sum(messages.n_total) AS transmissions,
    sum((messages.segments * messages.n_total)) AS segments,
    max(messages.created_at) AS latest
   FROM dbrouter.messages
  WHERE (messages.tenant IS NOT NULL)
  GROUP BY messages.tenant, messages.direction, messages.status;


--
-- Name: tenants; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.tenants (
    name text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    rate_limit double precision,
    rate_burst integer,
    CONSTRAINT tenant_name CHECK ((name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'::text)),
    CONSTRAINT tenant_rate_burst_range CHECK (((rate_burst >= 1) AND (rate_burst <= 1000000))),
    CONSTRAINT tenant_rate_limit_positive CHECK (((rate_limit > (0)::double precision) AND (rate_limit <= (1000000)::double precision)))
);


--
-- Name: transmission_parts; Type: TABLE; Schema: dbrouter; Owner: -
--

CREATE TABLE dbrouter.transmission_parts (
    transmission_id bigint NOT NULL,
    part integer NOT NULL,
    backend_id integer NOT NULL,
    gateway_id text NOT NULL,
    status character(1) DEFAULT 'S'::bpchar NOT NULL,
    detail text,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT transmission_part_number CHECK (((part >= 1) AND (part <= 255))),
    CONSTRAINT transmission_part_status CHECK ((status = ANY (ARRAY['S'::bpchar, 'D'::bpchar, 'E'::bpchar])))
);


--
-- Name: transmissions_id_seq; Type: SEQUENCE; Schema: dbrouter; Owner: -
--

ALTER TABLE dbrouter.transmissions ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME dbrouter.transmissions_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: attempts attempts_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.attempts
    ADD CONSTRAINT attempts_pkey PRIMARY KEY (id);


--
-- Name: backend_rates backend_rates_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.backend_rates
    ADD CONSTRAINT backend_rates_pkey PRIMARY KEY (backend_id);


--
-- Name: backends backends_name_key; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.backends
    ADD CONSTRAINT backends_name_key UNIQUE (name);


--
-- Name: backends backends_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.backends
    ADD CONSTRAINT backends_pkey PRIMARY KEY (id);


--
-- Name: binds binds_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.binds
    ADD CONSTRAINT binds_pkey PRIMARY KEY (backend_id, worker, bind);


--
-- Name: connections connections_backend_id_identity_key; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.connections
    ADD CONSTRAINT connections_backend_id_identity_key UNIQUE (backend_id, identity);


--
-- Name: connections connections_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.connections
    ADD CONSTRAINT connections_pkey PRIMARY KEY (id);


--
-- Name: console_sessions console_sessions_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.console_sessions
    ADD CONSTRAINT console_sessions_pkey PRIMARY KEY (token_sha256);


--
-- Name: console_users console_users_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.console_users
    ADD CONSTRAINT console_users_pkey PRIMARY KEY (name);


--
-- Name: database_backend_sends database_backend_sends_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.database_backend_sends
    ADD CONSTRAINT database_backend_sends_pkey PRIMARY KEY (id);


--
-- Name: fanouts fanouts_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.fanouts
    ADD CONSTRAINT fanouts_pkey PRIMARY KEY (message_id, part);


--
-- Name: inbound_parts inbound_parts_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.inbound_parts
    ADD CONSTRAINT inbound_parts_pkey PRIMARY KEY (backend_id, sender, reference, total, part);


--
-- Name: keywords keywords_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.keywords
    ADD CONSTRAINT keywords_pkey PRIMARY KEY (keyword);


--
-- Name: messages messages_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (id);


--
-- Name: opt_out_keywords opt_out_keywords_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.opt_out_keywords
    ADD CONSTRAINT opt_out_keywords_pkey PRIMARY KEY (keyword);


--
-- Name: opt_outs opt_outs_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.opt_outs
    ADD CONSTRAINT opt_outs_pkey PRIMARY KEY (connection_id);


--
-- Name: receipts receipts_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.receipts
    ADD CONSTRAINT receipts_pkey PRIMARY KEY (id);


--
-- Name: received_ids received_ids_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.received_ids
    ADD CONSTRAINT received_ids_pkey PRIMARY KEY (backend_id, external_id);


--
-- Name: schema_files schema_files_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.schema_files
    ADD CONSTRAINT schema_files_pkey PRIMARY KEY (name);


--
-- Name: tenant_backends tenant_backends_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.tenant_backends
    ADD CONSTRAINT tenant_backends_pkey PRIMARY KEY (tenant, backend_id);


--
-- Name: tenant_rates tenant_rates_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.tenant_rates
    ADD CONSTRAINT tenant_rates_pkey PRIMARY KEY (tenant);


--
-- Name: tenant_roles tenant_roles_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.tenant_roles
    ADD CONSTRAINT tenant_roles_pkey PRIMARY KEY (role);


--
-- Name: tenants tenants_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.tenants
    ADD CONSTRAINT tenants_pkey PRIMARY KEY (name);


--
-- Name: transmission_parts transmission_parts_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.transmission_parts
    ADD CONSTRAINT transmission_parts_pkey PRIMARY KEY (transmission_id, part);


--
-- Name: transmissions transmissions_message_id_connection_id_key; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.transmissions
    ADD CONSTRAINT transmissions_message_id_connection_id_key UNIQUE (message_id, connection_id);


--
-- Name: transmissions transmissions_pkey; Type: CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.transmissions
    ADD CONSTRAINT transmissions_pkey PRIMARY KEY (id);


--
-- Name: attempts_transmission; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE INDEX attempts_transmission ON dbrouter.attempts USING btree (transmission_id);


--
-- Name: console_sessions_expiry; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE INDEX console_sessions_expiry ON dbrouter.console_sessions USING btree (expires_at);


--
-- Name: database_backend_sends_transmission; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE INDEX database_backend_sends_transmission ON dbrouter.database_backend_sends USING btree (transmission_id);


--
-- Name: inbound_parts_received; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE INDEX inbound_parts_received ON dbrouter.inbound_parts USING btree (received_at);


--
-- Name: messages_client_key; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE UNIQUE INDEX messages_client_key ON dbrouter.messages USING btree (COALESCE(tenant, enqueued_by, ''::text), client_key) WHERE (client_key IS NOT NULL);


--
-- Name: messages_in_response_to; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE INDEX messages_in_response_to ON dbrouter.messages USING btree (in_response_to) WHERE (in_response_to IS NOT NULL);


--
-- Name: messages_inbound_queued; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE INDEX messages_inbound_queued ON dbrouter.messages USING btree (id) WHERE ((direction = 'I'::bpchar) AND (status = 'Q'::bpchar));


--
-- Name: received_ids_message; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE INDEX received_ids_message ON dbrouter.received_ids USING btree (message_id);


--
-- Name: transmission_parts_gateway_id; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE INDEX transmission_parts_gateway_id ON dbrouter.transmission_parts USING btree (backend_id, gateway_id);


--
-- Name: transmissions_expiring; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE INDEX transmissions_expiring ON dbrouter.transmissions USING btree (expires_at) WHERE ((due_at IS NOT NULL) AND (expires_at IS NOT NULL));


--
-- Name: transmissions_gateway_id; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE INDEX transmissions_gateway_id ON dbrouter.transmissions USING btree (backend_id, external_id) WHERE (external_id IS NOT NULL);


--
-- Name: transmissions_in_flight; Type: INDEX; Schema: dbrouter; Owner: -
--

CREATE INDEX transmissions_in_flight ON dbrouter.transmissions USING btree (backend_id, priority DESC, due_at, id) WHERE (due_at IS NOT NULL);


--
-- Name: backends backends_changed; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER backends_changed AFTER INSERT OR DELETE OR UPDATE ON dbrouter.backends FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.backends_changed();


--
-- Name: backends backends_guard_delete; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER backends_guard_delete BEFORE DELETE ON dbrouter.backends FOR EACH ROW EXECUTE FUNCTION dbrouter.backends_guard_delete();


--
-- Name: backends backends_touch; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER backends_touch BEFORE UPDATE ON dbrouter.backends FOR EACH ROW EXECUTE FUNCTION dbrouter.backends_touch();


--
-- Name: connections connections_check_refs; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER connections_check_refs AFTER INSERT ON dbrouter.connections REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.connections_check_refs();


--
-- Name: connections connections_refuse_reference_change; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER connections_refuse_reference_change BEFORE UPDATE OF id, backend_id ON dbrouter.connections FOR EACH ROW EXECUTE FUNCTION dbrouter.refuse_reference_change();


--
-- Name: connections connections_refuse_referenced_delete; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER connections_refuse_referenced_delete AFTER DELETE ON dbrouter.connections REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.refuse_referenced_delete();


--
-- Name: inbox inbox_drain; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER inbox_drain AFTER INSERT ON dbrouter.inbox REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.inbox_drain();


--
-- Name: messages messages_refuse_referenced_delete; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER messages_refuse_referenced_delete AFTER DELETE ON dbrouter.messages REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.refuse_referenced_delete();


--
-- Name: outbox outbox_drain; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER outbox_drain AFTER INSERT ON dbrouter.outbox REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.outbox_drain();


--
-- Name: tenant_backends tenant_backends_changed; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER tenant_backends_changed AFTER INSERT OR DELETE OR UPDATE ON dbrouter.tenant_backends FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.backends_changed();


--
-- Name: tenants tenants_changed; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER tenants_changed AFTER INSERT OR DELETE OR UPDATE ON dbrouter.tenants FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.backends_changed();


--
-- Name: transmission_parts transmission_parts_roll_up; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER transmission_parts_roll_up AFTER UPDATE ON dbrouter.transmission_parts REFERENCING NEW TABLE AS new_parts FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.roll_up_parts();


--
-- Name: transmissions transmissions_check_refs; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER transmissions_check_refs AFTER INSERT ON dbrouter.transmissions REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.transmissions_check_refs();


--
-- Name: transmissions transmissions_refuse_reference_change; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER transmissions_refuse_reference_change BEFORE UPDATE OF message_id, connection_id, backend_id ON dbrouter.transmissions FOR EACH ROW EXECUTE FUNCTION dbrouter.refuse_reference_change();


--
-- Name: transmissions transmissions_roll_up_changed; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER transmissions_roll_up_changed AFTER UPDATE ON dbrouter.transmissions REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.roll_up_transmissions();


--
-- Name: transmissions transmissions_roll_up_inserted; Type: TRIGGER; Schema: dbrouter; Owner: -
--

CREATE TRIGGER transmissions_roll_up_inserted AFTER INSERT ON dbrouter.transmissions REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.roll_up_transmissions();


--
-- Name: attempts attempts_transmission_id_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.attempts
    ADD CONSTRAINT attempts_transmission_id_fkey FOREIGN KEY (transmission_id) REFERENCES dbrouter.transmissions(id);


--
-- Name: backend_rates backend_rates_backend_id_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.backend_rates
    ADD CONSTRAINT backend_rates_backend_id_fkey FOREIGN KEY (backend_id) REFERENCES dbrouter.backends(id) ON DELETE CASCADE;


--
-- Name: binds binds_backend_id_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.binds
    ADD CONSTRAINT binds_backend_id_fkey FOREIGN KEY (backend_id) REFERENCES dbrouter.backends(id) ON DELETE CASCADE;


--
-- Name: console_sessions console_sessions_user_name_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.console_sessions
    ADD CONSTRAINT console_sessions_user_name_fkey FOREIGN KEY (user_name) REFERENCES dbrouter.console_users(name) ON DELETE CASCADE;


--
-- Name: fanouts fanouts_backend_id_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.fanouts
    ADD CONSTRAINT fanouts_backend_id_fkey FOREIGN KEY (backend_id) REFERENCES dbrouter.backends(id);


--
-- Name: inbound_parts inbound_parts_backend_id_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.inbound_parts
    ADD CONSTRAINT inbound_parts_backend_id_fkey FOREIGN KEY (backend_id) REFERENCES dbrouter.backends(id);


--
-- Name: messages message_tenant; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.messages
    ADD CONSTRAINT message_tenant FOREIGN KEY (tenant) REFERENCES dbrouter.tenants(name) NOT VALID;


--
-- Name: messages messages_in_response_to_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.messages
    ADD CONSTRAINT messages_in_response_to_fkey FOREIGN KEY (in_response_to) REFERENCES dbrouter.messages(id);


--
-- Name: opt_outs opt_outs_connection_id_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.opt_outs
    ADD CONSTRAINT opt_outs_connection_id_fkey FOREIGN KEY (connection_id) REFERENCES dbrouter.connections(id);


--
-- Name: receipts receipts_backend_id_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.receipts
    ADD CONSTRAINT receipts_backend_id_fkey FOREIGN KEY (backend_id) REFERENCES dbrouter.backends(id);


--
-- Name: received_ids received_ids_backend_id_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.received_ids
    ADD CONSTRAINT received_ids_backend_id_fkey FOREIGN KEY (backend_id) REFERENCES dbrouter.backends(id);


--
-- Name: received_ids received_ids_message_id_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.received_ids
    ADD CONSTRAINT received_ids_message_id_fkey FOREIGN KEY (message_id) REFERENCES dbrouter.messages(id) ON DELETE CASCADE;


--
-- Name: tenant_backends tenant_backends_backend_id_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.tenant_backends
    ADD CONSTRAINT tenant_backends_backend_id_fkey FOREIGN KEY (backend_id) REFERENCES dbrouter.backends(id) ON DELETE CASCADE;


--
-- Name: tenant_backends tenant_backends_tenant_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.tenant_backends
    ADD CONSTRAINT tenant_backends_tenant_fkey FOREIGN KEY (tenant) REFERENCES dbrouter.tenants(name) ON DELETE CASCADE;


--
-- Name: tenant_rates tenant_rates_tenant_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.tenant_rates
    ADD CONSTRAINT tenant_rates_tenant_fkey FOREIGN KEY (tenant) REFERENCES dbrouter.tenants(name) ON DELETE CASCADE;


--
-- Name: tenant_roles tenant_roles_tenant_fkey; Type: FK CONSTRAINT; Schema: dbrouter; Owner: -
--

ALTER TABLE ONLY dbrouter.tenant_roles
    ADD CONSTRAINT tenant_roles_tenant_fkey FOREIGN KEY (tenant) REFERENCES dbrouter.tenants(name) ON DELETE CASCADE;


--
-- Name: messages dbrouter_enqueue_own; Type: POLICY; Schema: dbrouter; Owner: -
--

CREATE POLICY dbrouter_enqueue_own ON dbrouter.messages FOR SELECT TO dbrouter_enqueue USING (dbrouter.is_mine(tenant, enqueued_by, ( SELECT dbrouter.caller() AS caller), ( SELECT dbrouter.caller_tenant() AS caller_tenant)));


--
-- Name: messages dbrouter_worker_all; Type: POLICY; Schema: dbrouter; Owner: -
--

CREATE POLICY dbrouter_worker_all ON dbrouter.messages TO dbrouter_worker, dbrouter_admin USING (true) WITH CHECK (true);


--
-- Name: messages; Type: ROW SECURITY; Schema: dbrouter; Owner: -
--

ALTER TABLE dbrouter.messages ENABLE ROW LEVEL SECURITY;

--
-- PostgreSQL database dump complete
--


