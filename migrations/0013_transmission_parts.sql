-- ===========================================================================
-- The parts of a transmission sent in several (SMPP: one submit_sm a part),
-- each with the id the SMSC gave it and its own delivery state, so a
-- delivery receipt for any part counts for that part: a transmission is D
-- only once every part is delivered, and E once any part failed
-- (dbrouter.roll_up_parts, schema/50_receipts.sql). Written by the finish
-- (sql/outbound_finish.sql) with the S, only for texts of two or more parts;
-- the transmission's external_id is the first part's id.
--
-- No foreign key to transmissions: a row-level check per deleted
-- transmission would slow dbrouter.purge, which deletes the parts of what it
-- purges itself; sql/invariants.sql checks that none is left without its
-- transmission.
-- ===========================================================================

CREATE TABLE dbrouter.transmission_parts (
    transmission_id  bigint NOT NULL,
    part             integer NOT NULL CONSTRAINT transmission_part_number CHECK (part BETWEEN 1 AND 255),
    backend_id       integer NOT NULL,
    gateway_id       text NOT NULL,
    status           char(1) NOT NULL DEFAULT 'S'
                     CONSTRAINT transmission_part_status CHECK (status IN ('S', 'D', 'E')),
    detail           text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (transmission_id, part)
);

-- Receipts find their part by the gateway's id.
CREATE INDEX transmission_parts_gateway_id ON dbrouter.transmission_parts (backend_id, gateway_id);
