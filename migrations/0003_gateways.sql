-- Real gateways: de-duplicated inbound messages, delivery reports.

-- A failure that did not use up an attempt: the gateway asked us to wait
-- (throttled) or refused our credentials; the transmission went back to Q.
ALTER TABLE dbrouter.attempts
    ADD COLUMN requeued boolean NOT NULL DEFAULT false;

CREATE OR REPLACE VIEW dbrouter.recent_errors AS
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
  FROM (SELECT * FROM dbrouter.attempts ORDER BY id DESC LIMIT 100) a
  JOIN dbrouter.transmissions t ON t.id = a.transmission_id
  JOIN dbrouter.messages m ON m.id = t.message_id
  JOIN dbrouter.connections c ON c.id = t.connection_id
  JOIN dbrouter.backends b ON b.id = t.backend_id
 ORDER BY a.id DESC;

-- ---------------------------------------------------------------------------
-- A gateway that retries a message it already delivered to us (it did not
-- see our answer) sends the same message id again. The first (backend,
-- external_id) wins; later inbox rows with it write nothing. Purging the
-- message removes its entry (ON DELETE CASCADE).
-- ---------------------------------------------------------------------------
CREATE TABLE dbrouter.received_ids (
    backend_id   integer NOT NULL REFERENCES dbrouter.backends (id),
    external_id  text NOT NULL,
    message_id   bigint NOT NULL REFERENCES dbrouter.messages (id) ON DELETE CASCADE,
    PRIMARY KEY (backend_id, external_id)
);
CREATE INDEX received_ids_message ON dbrouter.received_ids (message_id);

-- The inbox trigger, now with identities normalised per backend (0002) and
-- gateway ids de-duplicated.
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
                  JOIN dbrouter.connections c
                    ON c.backend_id = b.id
                   AND c.identity = dbrouter.normalize_identity(n.identity, b.number_format, b.country_code)
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

-- ---------------------------------------------------------------------------
-- Delivery reports. `dbrouter serve` appends one row per report (cheap: no
-- lock on the message a broadcast's thousands of reports share); workers
-- apply them in batches with dbrouter.apply_receipts.
-- outcome: 'D' delivered, 'E' failed (detail says why), 'B' buffered /
-- accepted / pending (recorded, changes nothing).
-- A report names its transmission by id (Kannel: the id we put in the
-- dlr-url) or by the gateway's message id (Vumi's user_message_id).
-- ---------------------------------------------------------------------------
CREATE TABLE dbrouter.receipts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    backend_id       integer NOT NULL REFERENCES dbrouter.backends (id),
    transmission_id  bigint,
    gateway_id       text,
    outcome          char(1) NOT NULL CONSTRAINT receipt_outcome CHECK (outcome IN ('D', 'E', 'B')),
    detail           text,
    received_at      timestamptz NOT NULL DEFAULT now(),
    -- a report waiting for its send to be recorded is looked at again then
    not_before       timestamptz,
    CONSTRAINT receipt_names_transmission CHECK (transmission_id IS NOT NULL OR gateway_id IS NOT NULL)
);

-- Reports that name the gateway's id find their transmission through this
-- (only transmissions a gateway gave an id enter it).
CREATE INDEX transmissions_gateway_id ON dbrouter.transmissions (backend_id, external_id)
    WHERE external_id IS NOT NULL;

-- Apply up to p_limit reports, oldest first. Transitions are monotonic:
-- S or E -> D on "delivered" (an E whose report says delivered was sent
-- after all: its retry is cancelled), S -> E on "failed", nothing undoes a
-- D, and "buffered" changes nothing. Several reports for one transmission
-- in a batch count as the strongest (D over E over B); a repeated report
-- changes nothing. A report for a transmission not yet S/E, or for a
-- gateway id not recorded yet (it arrived before the worker recorded the
-- send), is looked at again 2 s later; one naming a transmission id that is
-- not this backend's outbound transmission, or still waiting after a day,
-- is dropped.
-- Returns how many reports were consumed.
-- Locks: the reports (SKIP LOCKED), the transmissions they change, then
-- their messages in id order, as claims and finishes do.
CREATE FUNCTION dbrouter.apply_receipts(p_limit integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    WITH picked AS (
        SELECT r.id, r.outcome, r.detail, r.received_at,
               -- an outbound transmission of the reporting backend, or none
               CASE WHEN r.transmission_id IS NOT NULL
                    THEN (SELECT t.id FROM dbrouter.transmissions t
                            JOIN dbrouter.messages m ON m.id = t.message_id AND m.direction = 'O'
                           WHERE t.id = r.transmission_id AND t.backend_id = r.backend_id)
                    ELSE (SELECT t.id FROM dbrouter.transmissions t
                           WHERE t.backend_id = r.backend_id AND t.external_id = r.gateway_id
                           ORDER BY t.id LIMIT 1)
               END AS tid
          FROM dbrouter.receipts r
         WHERE r.not_before IS NULL OR r.not_before <= now()
         ORDER BY r.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), strongest AS (
        SELECT DISTINCT ON (tid) tid, outcome, detail
          FROM picked WHERE tid IS NOT NULL
         ORDER BY tid, CASE outcome WHEN 'D' THEN 0 WHEN 'E' THEN 1 ELSE 2 END, id DESC
    ), target AS (
        SELECT t.id, t.message_id, t.status AS was, s.outcome, s.detail
          FROM strongest s JOIN dbrouter.transmissions t ON t.id = s.tid
         WHERE t.status IN ('S', 'E', 'D')
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
        RETURNING t.message_id, x.was, x.outcome
    ), deltas AS (
        SELECT message_id,
               -- done: S/D count; error: E count; delivered: D count
               sum(CASE WHEN was = 'E' THEN 1 WHEN outcome = 'E' THEN -1 ELSE 0 END)::integer AS done,
               sum(CASE WHEN was = 'E' THEN -1 WHEN outcome = 'E' THEN 1 ELSE 0 END)::integer AS error,
               count(*) FILTER (WHERE outcome = 'D')::integer AS delivered
          FROM changed GROUP BY message_id
    ), locked AS (
        SELECT m.id, d.done, d.error, d.delivered
          FROM dbrouter.messages m JOIN deltas d ON d.message_id = m.id
         ORDER BY m.id FOR UPDATE OF m
    ), rolled AS (
        UPDATE dbrouter.messages m
           SET n_done = m.n_done + l.done,
               n_error = m.n_error + l.error,
               n_delivered = m.n_delivered + l.delivered,
               status = dbrouter.rollup(m.n_total, m.n_error + l.error, m.n_done + l.done,
                                        m.n_delivered + l.delivered),
               delivered_at = CASE WHEN m.n_delivered + l.delivered = m.n_total THEN now()
                                   ELSE m.delivered_at END,
               updated_at = now()
          FROM locked l WHERE m.id = l.id
    ), verdict AS (
        SELECT p.id,
               -- a transmission id that is not an outbound transmission of
               -- this backend never will be; a gateway id may not be
               -- recorded yet; a send still in flight will be soon
               (p.tid IS NULL AND r.transmission_id IS NOT NULL)
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
