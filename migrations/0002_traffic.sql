-- Traffic control and message lifecycle: pause, rate limits, throttling,
-- priorities, send-at, expiry, cancel, idempotent enqueue, opt-outs,
-- identity normalisation and retention.
--
-- The one mechanism under several of these is the transmission's
-- `expires_at`: the outbound claim never takes a row whose deadline has
-- passed, and a sweep (dbrouter.expire_due, run by every worker about once a
-- second) ends such rows E with the reason ("expired", or "cancelled" when
-- their message was cancelled). Cancel moves the deadline of in-flight rows
-- to now, so a transmission being sent at that instant either goes out (it
-- was already handed to the gateway) or ends E "cancelled"; it is never
-- retried.

-- ---------------------------------------------------------------------------
-- Backends.
-- ---------------------------------------------------------------------------
ALTER TABLE dbrouter.backends
    -- Paused by an operator (or, later, by a gateway refusing our
    -- credentials): messages stay queued; the reason shows in `status`.
    ADD COLUMN paused_at timestamptz,
    ADD COLUMN pause_reason text,
    -- Messages per second for all workers together, and how many may go at
    -- once after an idle spell (default: one second's worth, at least 1).
    ADD COLUMN rate_limit double precision
        CONSTRAINT backend_rate_limit_positive CHECK (rate_limit > 0 AND rate_limit <= 1000000),
    ADD COLUMN rate_burst integer
        CONSTRAINT backend_rate_burst_range CHECK (rate_burst BETWEEN 1 AND 1000000),
    -- A gateway asked us to wait (HTTP 429 Retry-After): no claims until then.
    ADD COLUMN throttled_until timestamptz,
    -- Default deadlines, counted from the send-at time (or enqueue time):
    -- for replies (messages with in_response_to) and for everything else.
    ADD COLUMN expire_replies_after interval
        CONSTRAINT backend_expire_replies_positive CHECK (expire_replies_after > interval '0'),
    ADD COLUMN expire_after interval
        CONSTRAINT backend_expire_positive CHECK (expire_after > interval '0'),
    -- How identities are written: 'as-is' (default) or 'e164' (+<country
    -- code><number>, with `country_code` for numbers written nationally).
    ADD COLUMN number_format text NOT NULL DEFAULT 'as-is'
        CONSTRAINT backend_number_format CHECK (number_format IN ('as-is', 'e164')),
    ADD COLUMN country_code text
        CONSTRAINT backend_country_code CHECK (country_code ~ '^[1-9][0-9]{0,2}$'),
    ADD CONSTRAINT backend_pause_reason CHECK ((paused_at IS NULL) = (pause_reason IS NULL));

-- The token bucket of each rate-limited backend, shared by every worker.
-- One row per backend, locked only by claims of that backend.
CREATE TABLE dbrouter.backend_rates (
    backend_id   integer PRIMARY KEY REFERENCES dbrouter.backends (id) ON DELETE CASCADE,
    tokens       double precision NOT NULL,
    refilled_at  timestamptz NOT NULL
);

-- ---------------------------------------------------------------------------
-- Messages and transmissions.
-- ---------------------------------------------------------------------------
ALTER TABLE dbrouter.messages
    ADD COLUMN priority smallint NOT NULL DEFAULT 0
        CONSTRAINT message_priority_range CHECK (priority BETWEEN -1000 AND 1000),
    ADD COLUMN send_at timestamptz,
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN client_key text
        CONSTRAINT message_client_key_length CHECK (length(client_key) BETWEEN 1 AND 200),
    ADD COLUMN cancelled_at timestamptz;

-- Idempotent enqueue: one message per client key.
CREATE UNIQUE INDEX messages_client_key ON dbrouter.messages (client_key)
    WHERE client_key IS NOT NULL;

-- Deleting a message (retention) checks that nothing answers it.
CREATE INDEX messages_in_response_to ON dbrouter.messages (in_response_to)
    WHERE in_response_to IS NOT NULL;

ALTER TABLE dbrouter.transmissions
    ADD COLUMN priority smallint NOT NULL DEFAULT 0,
    ADD COLUMN expires_at timestamptz;

-- The outbound claim's index: highest priority first, then oldest due, for
-- rows still in flight only.
DROP INDEX dbrouter.transmissions_in_flight;
CREATE INDEX transmissions_in_flight ON dbrouter.transmissions (backend_id, priority DESC, due_at, id)
    WHERE due_at IS NOT NULL;

-- The expiry sweep's index: in-flight rows that have a deadline.
CREATE INDEX transmissions_expiring ON dbrouter.transmissions (expires_at)
    WHERE due_at IS NOT NULL AND expires_at IS NOT NULL;

-- ---------------------------------------------------------------------------
-- Opt-outs: a connection (backend + identity) that sent STOP. Broadcasts and
-- the outbox create its transmissions already E "opted out"; replies to the
-- person's own messages (including the STOP confirmation) still go out.
-- ---------------------------------------------------------------------------
CREATE TABLE dbrouter.opt_outs (
    connection_id  bigint PRIMARY KEY REFERENCES dbrouter.connections (id),
    keyword        text NOT NULL,
    -- the message that opted out, if any (not a foreign key: retention may
    -- purge the message, the opt-out stays)
    message_id     bigint,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- The `optout` app's keywords, any language: a message consisting of one of
-- these words (any case, surrounding spaces and .!  ignored) opts its sender
-- out ('stop') or back in ('start'), and is answered with `reply`.
CREATE TABLE dbrouter.opt_out_keywords (
    keyword  text PRIMARY KEY
             CONSTRAINT opt_out_keyword_format CHECK (keyword = lower(btrim(keyword)) AND keyword <> ''),
    action   text NOT NULL CONSTRAINT opt_out_keyword_action CHECK (action IN ('stop', 'start')),
    reply    text NOT NULL CONSTRAINT opt_out_keyword_reply CHECK (length(reply) BETWEEN 1 AND 10000)
);

INSERT INTO dbrouter.opt_out_keywords (keyword, action, reply)
SELECT k, 'stop', 'You are unsubscribed and will get no more messages. Reply START to subscribe again.'
  FROM unnest(ARRAY['stop', 'stopall', 'unsubscribe', 'cancel', 'end', 'quit']) AS k
UNION ALL
SELECT k, 'start', 'You are subscribed again. Reply STOP to unsubscribe.'
  FROM unnest(ARRAY['start', 'unstop']) AS k;

-- ---------------------------------------------------------------------------
-- Identity normalisation. 'as-is' keeps the identity as given. 'e164'
-- removes spaces, dots, dashes and parentheses, then: "+…" stays, "00…" is
-- international, "0…" is national (needs the backend's country_code), and
-- bare digits are taken as already starting with a country code. The result
-- must be "+" and 7 to 15 digits; NULL means the number is not valid.
-- ---------------------------------------------------------------------------
CREATE FUNCTION dbrouter.normalize_identity(identity text, number_format text, country_code text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN number_format IS DISTINCT FROM 'e164' THEN identity
        ELSE (SELECT CASE WHEN e ~ '^\+[1-9][0-9]{6,14}$' THEN e END
                FROM (SELECT CASE
                          WHEN d LIKE '+%' THEN d
                          WHEN d LIKE '00%' THEN '+' || substr(d, 3)
                          WHEN d LIKE '0%' AND country_code IS NOT NULL THEN '+' || country_code || substr(d, 2)
                          WHEN d LIKE '0%' THEN NULL
                          ELSE '+' || d
                      END AS e
                        FROM (SELECT regexp_replace(identity, '[[:space:]().-]', '', 'g') AS d) x) y)
    END
$$;

-- ---------------------------------------------------------------------------
-- Enqueue validation, now with the backend's number format and the
-- scheduling fields. The 4-argument version is replaced.
-- ---------------------------------------------------------------------------

-- The core checks keep their body under a new name.
ALTER FUNCTION dbrouter.enqueue_problem(text, boolean, text, text) RENAME TO enqueue_core_problem;

CREATE FUNCTION dbrouter.enqueue_problem(backend text, backend_known boolean, identity text, body text,
                                         number_format text, country_code text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
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

CREATE FUNCTION dbrouter.schedule_problem(priority integer, send_at timestamptz, expires_at timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN priority NOT BETWEEN -1000 AND 1000
            THEN format('priority %s is out of range; use -1000 to 1000 (higher goes first, default 0, replies 1)', priority)
        WHEN expires_at <= now()
            THEN format('expires_at %s has already passed', expires_at)
        WHEN expires_at <= send_at
            THEN format('expires_at %s is not after send_at %s', expires_at, send_at)
    END
$$;

-- The deadline of an outbound message: the explicit one, else the backend's
-- default counted from when it may first be sent.
CREATE FUNCTION dbrouter.deadline(explicit timestamptz, send_at timestamptz, is_reply boolean,
                                  b dbrouter.backends)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT coalesce(explicit,
                    greatest(now(), send_at)
                    + CASE WHEN is_reply THEN b.expire_replies_after ELSE b.expire_after END)
$$;

-- ---------------------------------------------------------------------------
-- dbrouter.inbox: identities normalised per backend.
-- ---------------------------------------------------------------------------
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
    -- sender are processed in the order they were enqueued.
    WITH src AS MATERIALIZED (
        SELECT nextval('dbrouter.messages_id_seq') AS mid, s.*
          FROM (SELECT c.id AS cid, c.backend_id, n.text, n.external_id,
                       coalesce(n.fields, '{}') AS fields
                  FROM (SELECT *, row_number() OVER () AS rn FROM new_rows) n
                  JOIN dbrouter.backends b ON b.name = n.backend
                  JOIN dbrouter.connections c
                    ON c.backend_id = b.id
                   AND c.identity = dbrouter.normalize_identity(n.identity, b.number_format, b.country_code)
                 ORDER BY n.rn) s
    ), msg AS (
        INSERT INTO dbrouter.messages (id, direction, status, text, external_id, fields, n_total)
        SELECT mid, 'I', 'Q', text, external_id, fields, 1 FROM src
    )
    INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id, status)
    SELECT mid, cid, backend_id, 'Q' FROM src;

    DELETE FROM dbrouter.inbox;
    PERFORM pg_notify('dbrouter', '');
    RETURN NULL;
END
$$;

-- ---------------------------------------------------------------------------
-- dbrouter.outbox: new optional columns. Rows of opted-out identities become
-- messages already E "opted out"; a row whose client_key exists (or repeats
-- an earlier row of the same statement) writes nothing.
-- ---------------------------------------------------------------------------
ALTER TABLE dbrouter.outbox
    ADD COLUMN priority integer,
    ADD COLUMN send_at timestamptz,
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN client_key text;

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
              LEFT JOIN dbrouter.messages m ON m.id = n.in_response_to) x
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
                  JOIN dbrouter.connections c
                    ON c.backend_id = b.id
                   AND c.identity = dbrouter.normalize_identity(n.identity, b.number_format, b.country_code)
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
-- dbrouter.broadcast: the same options as the outbox, as named arguments.
-- Returns the message id (the first message's, when client_key repeats).
-- ---------------------------------------------------------------------------
DROP FUNCTION dbrouter.broadcast(text, text[], text);

CREATE FUNCTION dbrouter.broadcast(backend text, identities text[], text text,
                                   send_at timestamptz DEFAULT NULL,
                                   expires_at timestamptz DEFAULT NULL,
                                   priority integer DEFAULT 0,
                                   client_key text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    b dbrouter.backends%ROWTYPE;
    v_ids text[];
    v_message_id bigint;
    v_opted integer;
    v_expires timestamptz;
    problem text;
BEGIN
    SELECT * INTO b FROM dbrouter.backends WHERE name = broadcast.backend;
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
        SELECT id INTO v_message_id FROM dbrouter.messages WHERE client_key = broadcast.client_key;
        IF FOUND THEN
            RETURN v_message_id;
        END IF;
    END IF;

    -- Distinct normalised identities, sorted (the connection upsert's lock order).
    v_ids := ARRAY(SELECT DISTINCT dbrouter.normalize_identity(i, b.number_format, b.country_code)
                     FROM unnest(broadcast.identities) AS i ORDER BY 1);
    v_expires := dbrouter.deadline(broadcast.expires_at, broadcast.send_at, false, b);

    INSERT INTO dbrouter.connections (backend_id, identity)
    SELECT b.id, i FROM unnest(v_ids) AS i
    ON CONFLICT DO NOTHING;

    INSERT INTO dbrouter.messages (direction, status, text, n_total, priority, send_at, expires_at, client_key)
    VALUES ('O', 'Q', broadcast.text, cardinality(v_ids), broadcast.priority, broadcast.send_at,
            v_expires, broadcast.client_key)
    ON CONFLICT (client_key) WHERE client_key IS NOT NULL DO NOTHING
    RETURNING id INTO v_message_id;
    IF v_message_id IS NULL THEN
        -- A concurrent call with the same key committed first.
        SELECT id INTO v_message_id FROM dbrouter.messages WHERE client_key = broadcast.client_key;
        IF v_message_id IS NULL THEN
            RAISE EXCEPTION 'client_key % is being used by a transaction this one cannot see', quote_literal(broadcast.client_key)
                USING HINT = 'retry in a new transaction (READ COMMITTED)';
        END IF;
        RETURN v_message_id;
    END IF;

    WITH ins AS (
        INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id, status, due_at,
                                            priority, expires_at, last_error)
        SELECT v_message_id, c.id, b.id,
               CASE WHEN o.connection_id IS NULL THEN 'Q' ELSE 'E' END,
               CASE WHEN o.connection_id IS NULL THEN greatest(now(), broadcast.send_at) END,
               broadcast.priority, v_expires,
               CASE WHEN o.connection_id IS NOT NULL THEN 'opted out' END
          FROM unnest(v_ids) AS i
          JOIN dbrouter.connections c ON c.backend_id = b.id AND c.identity = i
          LEFT JOIN dbrouter.opt_outs o ON o.connection_id = c.id
        RETURNING status
    )
    SELECT count(*) FILTER (WHERE status = 'E') INTO v_opted FROM ins;
    IF v_opted > 0 THEN
        UPDATE dbrouter.messages m
           SET n_error = v_opted,
               status = dbrouter.rollup(m.n_total, v_opted, m.n_done, m.n_delivered)
         WHERE m.id = v_message_id;
    END IF;

    PERFORM pg_notify('dbrouter', '');
    RETURN v_message_id;
END
$$;


-- ---------------------------------------------------------------------------
-- Ending unsent transmissions (cancel, expiry): E with the reason, no next
-- attempt, message counters and status by deltas. Rows leased to a worker
-- (P with a live lease) are left to that worker. Returns how many ended.
-- Locks: the transmissions, then their messages in id order (as claims do).
-- ---------------------------------------------------------------------------
CREATE FUNCTION dbrouter.end_unsent(p_ids bigint[], p_reason text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    WITH old AS (
        SELECT t.id, t.status
          FROM dbrouter.transmissions t
         WHERE t.id = ANY (p_ids) AND t.due_at IS NOT NULL
           AND (t.status <> 'P' OR t.due_at <= now())
         ORDER BY t.id
           FOR UPDATE
    ), ended AS (
        UPDATE dbrouter.transmissions t
           SET status = 'E', due_at = NULL, lease_token = NULL, updated_at = now(),
               last_error = coalesce(p_reason,
                   (SELECT CASE WHEN m.cancelled_at IS NOT NULL THEN 'cancelled' ELSE 'expired' END
                      FROM dbrouter.messages m WHERE m.id = t.message_id))
          FROM old
         WHERE t.id = old.id
        RETURNING t.message_id, old.status AS was
    ), deltas AS (
        SELECT message_id, count(*) FILTER (WHERE was <> 'E')::integer AS failed, count(*) AS how_many
          FROM ended GROUP BY message_id
    ), locked AS (
        SELECT m.id, d.failed FROM dbrouter.messages m JOIN deltas d ON d.message_id = m.id
         ORDER BY m.id FOR UPDATE OF m
    ), rolled AS (
        UPDATE dbrouter.messages m
           SET n_error = m.n_error + l.failed,
               status = dbrouter.rollup(m.n_total, m.n_error + l.failed, m.n_done, m.n_delivered),
               updated_at = now()
          FROM locked l WHERE m.id = l.id
    )
    SELECT coalesce(sum(how_many), 0) INTO n FROM deltas;
    RETURN n;
END
$$;

-- The expiry sweep: ends up to p_limit transmissions whose deadline passed.
-- Workers run it about once a second; SKIP LOCKED keeps sweeps and claims
-- out of each other's way.
CREATE FUNCTION dbrouter.expire_due(p_limit integer DEFAULT 1000) RETURNS integer
LANGUAGE sql AS $$
    SELECT dbrouter.end_unsent(ARRAY(
        SELECT t.id FROM dbrouter.transmissions t
         WHERE t.expires_at <= now() AND t.due_at IS NOT NULL
           AND (t.status <> 'P' OR t.due_at <= now())
         ORDER BY t.expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED), NULL)
$$;

-- Cancel an outbound message: its unsent transmissions end E "cancelled" now;
-- those a worker is sending at this moment finish as the gateway answers,
-- and are not retried. Sent ones are untouched. Returns how many ended now.
CREATE FUNCTION dbrouter.cancel_message(p_message_id bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_direction char(1);
    n integer;
BEGIN
    SELECT direction INTO v_direction FROM dbrouter.messages WHERE id = p_message_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no message with id %', p_message_id
            USING HINT = 'SELECT id, text, status FROM dbrouter.messages ORDER BY id DESC LIMIT 20 lists recent ones';
    END IF;
    IF v_direction <> 'O' THEN
        RAISE EXCEPTION 'message % is inbound; only outbound messages can be cancelled', p_message_id;
    END IF;
    -- Transmissions before the message row: the lock order claims use.
    UPDATE dbrouter.transmissions
       SET expires_at = now()
     WHERE message_id = p_message_id AND due_at IS NOT NULL AND status = 'P';
    n := dbrouter.end_unsent(
        ARRAY(SELECT id FROM dbrouter.transmissions WHERE message_id = p_message_id AND due_at IS NOT NULL),
        'cancelled');
    UPDATE dbrouter.messages SET cancelled_at = coalesce(cancelled_at, now()), updated_at = now()
     WHERE id = p_message_id;
    RETURN n;
END
$$;

-- ---------------------------------------------------------------------------
-- Pause, resume, rate limits, throttling.
-- ---------------------------------------------------------------------------
CREATE FUNCTION dbrouter.backend_id(p_backend text) RETURNS integer
LANGUAGE plpgsql STABLE AS $$
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

CREATE FUNCTION dbrouter.pause_backend(p_backend text, p_reason text DEFAULT 'paused by an operator')
RETURNS void LANGUAGE sql AS $$
    UPDATE dbrouter.backends
       SET paused_at = coalesce(paused_at, now()),
           pause_reason = coalesce(nullif(btrim(p_reason), ''), 'paused by an operator')
     WHERE id = dbrouter.backend_id(p_backend)
$$;

CREATE FUNCTION dbrouter.resume_backend(p_backend text) RETURNS void
LANGUAGE sql AS $$
    UPDATE dbrouter.backends SET paused_at = NULL, pause_reason = NULL
     WHERE id = dbrouter.backend_id(p_backend)
$$;

-- Take up to p_wanted tokens of a backend's bucket. `granted` is how many
-- transmissions the caller may claim now; when it is 0, `wait_seconds` says
-- when the next one is due. Backends without a limit grant everything.
-- Locks the bucket row until the caller's transaction ends, so the claim
-- that follows runs under it and unused tokens can be handed back.
CREATE FUNCTION dbrouter.take_tokens(p_backend_id integer, p_wanted integer,
                                     OUT granted integer, OUT wait_seconds double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_rate double precision;
    v_burst double precision;
    v_tokens double precision;
    v_at timestamptz;
    v_now timestamptz;
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
    -- Read the clock once the lock is ours, so refills never run backwards.
    v_now := clock_timestamp();
    v_tokens := least(v_burst, v_tokens + v_rate * greatest(0, extract(epoch FROM v_now - v_at)));
    granted := least(p_wanted, floor(v_tokens))::integer;
    wait_seconds := CASE WHEN granted > 0 THEN 0 ELSE (1 - v_tokens) / v_rate END;
    UPDATE dbrouter.backend_rates SET tokens = v_tokens - granted, refilled_at = v_now
     WHERE backend_id = p_backend_id;
END
$$;

-- Hand back tokens a claim did not use (fewer rows were due than granted).
CREATE FUNCTION dbrouter.return_tokens(p_backend_id integer, p_unused integer) RETURNS void
LANGUAGE sql AS $$
    UPDATE dbrouter.backend_rates r
       SET tokens = least(coalesce(b.rate_burst, greatest(1, floor(b.rate_limit))), r.tokens + p_unused)
      FROM dbrouter.backends b
     WHERE r.backend_id = p_backend_id AND b.id = r.backend_id AND b.rate_limit IS NOT NULL
$$;

-- A gateway asked us to wait: no claims for this backend until then (a later
-- deadline wins over an earlier one).
CREATE FUNCTION dbrouter.throttle_backend(p_backend_id integer, p_seconds double precision)
RETURNS void LANGUAGE sql AS $$
    UPDATE dbrouter.backends
       SET throttled_until = greatest(throttled_until, now() + make_interval(secs => p_seconds))
     WHERE id = p_backend_id
       AND (throttled_until IS NULL OR throttled_until < now() + make_interval(secs => p_seconds))
$$;

-- ---------------------------------------------------------------------------
-- Opt-outs by hand.
-- ---------------------------------------------------------------------------
CREATE FUNCTION dbrouter.opt_out(p_backend text, p_identity text, p_keyword text DEFAULT 'operator')
RETURNS void LANGUAGE plpgsql AS $$
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

CREATE FUNCTION dbrouter.opt_in(p_backend text, p_identity text) RETURNS boolean
LANGUAGE plpgsql AS $$
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

CREATE VIEW dbrouter.opted_out AS
SELECT b.name AS backend, c.identity, o.keyword, o.message_id, o.created_at
  FROM dbrouter.opt_outs o
  JOIN dbrouter.connections c ON c.id = o.connection_id
  JOIN dbrouter.backends b ON b.id = c.backend_id;

-- ---------------------------------------------------------------------------
-- Retention: delete final messages older than a cut, a small batch per
-- transaction, walking the messages by id (ids grow with time, so a window
-- that starts younger than the cut ends the walk).
--
-- Kept: anything not final (an inbound Q, an outbound with a transmission
-- still in flight), anything created or changed after the cut, and anything
-- a kept message answers. A purged message takes its transmissions, their
-- attempt history and database-backend records with it. Connections and
-- opt-outs stay. Client keys of purged messages can be used again.
-- ---------------------------------------------------------------------------
CREATE FUNCTION dbrouter.purge_batch(p_older_than interval, p_after bigint DEFAULT 0,
                                     p_batch integer DEFAULT 1000,
                                     OUT purged integer, OUT last_id bigint)
LANGUAGE plpgsql AS $$
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
    ids := ARRAY(
        SELECT m.id FROM dbrouter.messages m
         WHERE ((m.id > p_after AND m.id <= last_id)
                OR m.in_response_to IN (SELECT id FROM dbrouter.messages
                                         WHERE id > p_after AND id <= last_id))
           AND m.created_at < cut AND m.updated_at < cut
           AND m.status IN ('R', 'E', 'S', 'D')
           AND NOT EXISTS (SELECT 1 FROM dbrouter.transmissions t
                            WHERE t.message_id = m.id AND t.due_at IS NOT NULL)
           FOR UPDATE SKIP LOCKED);
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
    DELETE FROM dbrouter.database_backend_sends s USING dbrouter.transmissions t
     WHERE t.message_id = ANY (ids) AND s.transmission_id = t.id;
    DELETE FROM dbrouter.transmissions WHERE message_id = ANY (ids);
    DELETE FROM dbrouter.messages WHERE id = ANY (ids);
    purged := cardinality(ids);
END
$$;

-- From psql: CALL dbrouter.purge('30 days'); one transaction per batch.
CREATE PROCEDURE dbrouter.purge(older_than interval, batch_size integer DEFAULT 1000)
LANGUAGE plpgsql AS $$
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
