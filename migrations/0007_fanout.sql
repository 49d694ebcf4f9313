-- ===========================================================================
-- Large broadcasts are fanned out by the workers.
--
-- broadcast() wrote a connection and a transmission per identity before it
-- returned: 100,000 identities took 0.9-2 s in one transaction, most of it
-- the 200,000 rows and their index entries (bare INSERTs of just those rows
-- took 0.8 s of a 1.3 s call), for a caller who only needs to know that the
-- broadcast is accepted. Now a broadcast to more than 1,000 distinct
-- identities checks and normalises all of them as before (bad input still
-- fails the call and writes nothing), writes its message, and stores the
-- sorted identities in parts of 1,000 in dbrouter.fanouts. The workers turn
-- one part at a time into connections and transmissions (dbrouter.fan_out,
-- below), each part in one transaction that also deletes it: a worker that
-- dies mid-part rolls it back and the part waits for the next worker, so an
-- identity is never dropped nor given two transmissions (the (message_id,
-- connection_id) key would refuse the second anyway). Up to 1,000
-- identities, broadcast() writes the transmissions itself, as before.
--
-- Until its parts are expanded, a message's n_total already counts every
-- identity, so it cannot roll up to S, D or E early. Opt-outs are applied as
-- a part is expanded (an opt-out recorded after the call still counts), the
-- message's deadline and schedule are read from its row then, and
-- cancel_message() ends the parts left too (expanded straight into E).
-- ===========================================================================

CREATE TABLE dbrouter.fanouts (
    message_id bigint NOT NULL,
    part integer NOT NULL,
    backend_id integer NOT NULL REFERENCES dbrouter.backends (id),
    identities text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- A part whose expansion failed: why, and when it is tried again.
    error text,
    retry_at timestamptz,
    PRIMARY KEY (message_id, part),
    CONSTRAINT fanout_identities CHECK (cardinality(identities) BETWEEN 1 AND 1000)
);

COMMENT ON TABLE dbrouter.fanouts IS
    'Identities of large broadcasts not yet given their transmissions; the workers expand one part at a time (dbrouter.fan_out).';

-- A message with parts still waiting cannot be deleted (its row is what the
-- parts will refer to), like one with transmissions; the check is the same
-- statement-level trigger (0004), now asking both tables.
CREATE OR REPLACE FUNCTION dbrouter.refuse_referenced_delete() RETURNS trigger LANGUAGE plpgsql AS $$
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

-- One part: its connections (the new ones inserted, sorted, as broadcast()
-- did), its transmissions (Q; E "opted out" for the opted out; E
-- "cancelled" for all of them once the message is cancelled), the
-- message's error count for those E, and the part deleted. The caller holds
-- the part's row lock. Returns the transmissions written.
CREATE FUNCTION dbrouter.expand_fanout_part(p_message_id bigint, p_part integer)
RETURNS integer LANGUAGE plpgsql
SET enable_seqscan = off SET jit = off SET dbrouter.refs_checked = on AS $$
DECLARE
    f dbrouter.fanouts%ROWTYPE;
    m dbrouter.messages%ROWTYPE;
    v_written integer;
    v_failed integer;
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

    WITH ins AS (
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
                            WHEN m.cancelled_at IS NOT NULL THEN 'cancelled' END AS error) x
        RETURNING status
    )
    SELECT count(*), count(*) FILTER (WHERE status = 'E') INTO v_written, v_failed FROM ins;

    IF v_failed > 0 THEN
        UPDATE dbrouter.messages
           SET n_error = n_error + v_failed,
               status = dbrouter.rollup(n_total, n_error + v_failed, n_done, n_delivered),
               updated_at = now()
         WHERE id = p_message_id;
    END IF;
    DELETE FROM dbrouter.fanouts WHERE message_id = p_message_id AND part = p_part;
    RETURN v_written;
END
$$;

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
-- with ANALYZE dbrouter.transmissions, as broadcast() itself did for
-- audiences of 10,000 or more (0004): the claims' plans are made again for
-- the many rows now in flight. Without the right to analyze the table it is
-- only a warning.
CREATE FUNCTION dbrouter.fan_out(p_parts integer DEFAULT 1) RETURNS integer
LANGUAGE plpgsql AS $$
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

-- The parts still waiting, for operators (also in `dbrouter status`).
CREATE VIEW dbrouter.fanouts_waiting AS
SELECT f.message_id,
       b.name AS backend,
       count(*) AS parts,
       sum(cardinality(f.identities)) AS identities,
       now() - min(f.created_at) AS oldest_age,
       count(f.error) AS failing_parts,
       min(f.error) AS error
  FROM dbrouter.fanouts f
  JOIN dbrouter.backends b ON b.id = f.backend_id
 GROUP BY f.message_id, b.name;

-- ===========================================================================
-- broadcast(): as in 0004 up to the message's insert; then the identities
-- go to dbrouter.fanouts, and a broadcast of one part (up to 1,000) expands
-- it at once, a larger one leaves its parts to the workers. Its ANALYZE
-- (for 10,000 or more) moved to their expansion (fan_out, above): the rows
-- it was for do not exist yet when it returns. The settings 0005 and 0006 gave it
-- are restated (CREATE OR REPLACE keeps them only if given again).
-- ===========================================================================
CREATE OR REPLACE FUNCTION dbrouter.broadcast(backend text, identities text[], text text,
                                   send_at timestamptz DEFAULT NULL,
                                   expires_at timestamptz DEFAULT NULL,
                                   priority integer DEFAULT 0,
                                   client_key text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql
SET enable_seqscan = off SET jit = off SET dbrouter.refs_checked = on AS $$
#variable_conflict use_column
DECLARE
    b dbrouter.backends%ROWTYPE;
    v_ids text[];
    v_message_id bigint;
    v_expires timestamptz;
    problem text;
    part_size constant integer := 1000;
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

    -- Distinct normalised identities, sorted (the connection insert's lock
    -- order; byte order is enough for that and sorts faster than a locale).
    v_ids := ARRAY(SELECT DISTINCT dbrouter.normalize_identity(i, b.number_format, b.country_code) COLLATE "C"
                     FROM unnest(broadcast.identities) AS i ORDER BY 1);
    v_expires := dbrouter.deadline(broadcast.expires_at, broadcast.send_at, false, b);

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

-- cancel_message(): as in 0002, and the parts still waiting end E
-- "cancelled" too. The parts are locked first (waiting for any a worker is
-- expanding now, whose transmissions are then ended with the others), so
-- no worker expands one after the unsent were ended; they are expanded
-- last, once the message is marked cancelled, straight into E. Returns how
-- many ended, both kinds.
CREATE OR REPLACE FUNCTION dbrouter.cancel_message(p_message_id bigint) RETURNS integer
LANGUAGE plpgsql AS $$
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
