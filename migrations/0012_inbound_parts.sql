-- ===========================================================================
-- The parts of long messages from phones, held until their message is whole.
--
-- An SMSC delivers a long message as parts (each with a reference, the
-- number of parts and its own number, in a user data header or SAR TLVs),
-- in any order, on any bind, to any worker. dbrouter.receive_part
-- (schema/30_enqueue.sql) keeps each here and, when the last one arrives,
-- turns them into one message through dbrouter.inbox in the same
-- transaction. Parts still incomplete after the workers'
-- --reassembly-timeout are delivered as they are, flagged
-- (dbrouter.flush_parts): never dropped.
-- ===========================================================================

CREATE TABLE dbrouter.inbound_parts (
    backend_id   integer NOT NULL REFERENCES dbrouter.backends (id),
    sender       text NOT NULL,
    reference    integer NOT NULL,
    total        integer NOT NULL CONSTRAINT inbound_part_total CHECK (total BETWEEN 2 AND 255),
    part         integer NOT NULL CONSTRAINT inbound_part_number CHECK (part BETWEEN 1 AND total),
    text         text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backend_id, sender, reference, total, part)
);

-- The flush looks for the oldest incomplete messages.
CREATE INDEX inbound_parts_received ON dbrouter.inbound_parts (received_at);
