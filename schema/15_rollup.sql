-- schema/15_rollup.sql: applied by `dbrouter migrate` whenever this text changes
-- (src/schema.rs). CREATE OR REPLACE only; a function dropped or whose
-- arguments change needs a numbered migration.
--
-- The rollup protocol, written once. An outbound message carries counters
-- of its transmissions (n_error: E; n_done: S or D; n_delivered: D) and its
-- status follows from them by rollup(), so a broadcast to a million
-- identities never recounts its transmissions. Two statement-level
-- triggers keep the counters: whatever inserts or changes transmissions —
-- a claim, a finish, a receipt, a cancel, a requeue, an operator's UPDATE in
-- psql — the statement's transitions are summed per message and applied
-- as deltas, the messages locked in id order (every writer's order, so two
-- statements touching the same messages cannot deadlock). n_total is the
-- message's own: whoever writes the message sets it (a broadcast counts its
-- identities not yet expanded).

-- Status rollup, RapidSMS's rule in its order: any transmission E -> E; else
-- any not S/D -> P; else any not D -> S; else D. Computed from the counters.
CREATE OR REPLACE FUNCTION dbrouter.rollup(n_total integer, n_error integer, n_done integer, n_delivered integer)
 RETURNS character
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT CASE
        WHEN n_error > 0 THEN 'E'
        WHEN n_done < n_total THEN 'P'
        WHEN n_delivered < n_total THEN 'S'
        ELSE 'D'
    END::char(1)
$function$;

-- The trigger behind both triggers below. Each transmission's status
-- before (old_rows, -1) and after (new_rows, +1) the statement is summed per
-- message, so rows whose status did not change cancel out; no join of the
-- two (a generic plan made on an empty statement joined them by nested
-- loop: 40,000 comparisons for a batch of 200, 40 % more PostgreSQL CPU
-- per round trip). A message is updated when its counters change, or when
-- it is still Q and one of its transmissions was just leased (its first
-- claim makes it P). Inbound messages are left alone: their status is the
-- worker's (Q R E), not a rollup. Also sets the message's sent_at when its
-- last transmission is sent and delivered_at when its last is delivered.
--
-- Locks: the changed messages, in id order. (enable_seqscan off: the
-- messages are probed by primary key whatever the statistics of a table
-- that was small when the plan was cached say.)
CREATE OR REPLACE FUNCTION dbrouter.roll_up_transmissions()
 RETURNS trigger
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
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
$function$;

CREATE OR REPLACE TRIGGER transmissions_roll_up_inserted AFTER INSERT ON dbrouter.transmissions REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.roll_up_transmissions();

CREATE OR REPLACE TRIGGER transmissions_roll_up_changed AFTER UPDATE ON dbrouter.transmissions REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dbrouter.roll_up_transmissions();

-- Counters recounted from the rows, for one outbound message: n_total from
-- its transmissions and the identities of its parts not yet expanded (never
-- lowered), the others from its transmissions' statuses. For a message
-- written by hand whose counters cannot take its transmissions' outcomes
-- (the finish's last resort, sql/outbound_quarantine.sql, calls it), or after
-- an operator edited counters directly. Reads every transmission of the
-- message: not for the hot path. Locks the message. Returns its status.
CREATE OR REPLACE FUNCTION dbrouter.recount(p_message_id bigint)
 RETURNS character
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

-- The finish's last resort (sql/outbound_quarantine.sql): transmission
-- p_id, if still P under lease p_token, ends E for good with p_error after
-- its message's counters are recounted (in that order: the rollup trigger
-- then counts this E like any other). Returns 1 if it ended, else 0.
CREATE OR REPLACE FUNCTION dbrouter.quarantine(p_token bigint, p_id bigint, p_error text)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
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
$function$;
