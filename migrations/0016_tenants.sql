-- ===========================================================================
-- Tenants: several applications on one dbrouter, isolated by the database.
--
-- A tenant is a name; the roles in dbrouter.tenant_roles enqueue as it
-- (messages.tenant, written by the drains from dbrouter.caller_tenant(),
-- schema/90_roles.sql) and may send only through the backends in
-- dbrouter.tenant_backends. Row-level security on messages lets an
-- enqueueing role read its tenant's messages and no other's; its policies
-- (and the worker's and admin's, which see every row) are made by
-- dbrouter.grant_roles, because they name the roles. A role in no tenant
-- works as before: its messages are its own (enqueued_by), tenant NULL.
--
-- client_key was unique across the whole table, so two applications using
-- the same key collided (the second's message silently not written). It is
-- now unique per tenant, or per enqueuing role without one.
-- ===========================================================================

CREATE TABLE dbrouter.tenants (
    name        text PRIMARY KEY
                CONSTRAINT tenant_name CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dbrouter.tenant_roles (
    role    text PRIMARY KEY,
    tenant  text NOT NULL REFERENCES dbrouter.tenants ON DELETE CASCADE
);

CREATE TABLE dbrouter.tenant_backends (
    tenant      text NOT NULL REFERENCES dbrouter.tenants ON DELETE CASCADE,
    backend_id  integer NOT NULL REFERENCES dbrouter.backends ON DELETE CASCADE,
    PRIMARY KEY (tenant, backend_id)
);

-- NULL for messages of roles in no tenant, replies and older messages.
-- (NOT VALID: the rows before are all NULL; new rows are checked. A tenant
-- with messages cannot be deleted.)
ALTER TABLE dbrouter.messages ADD COLUMN tenant text;
ALTER TABLE dbrouter.messages ADD CONSTRAINT message_tenant
    FOREIGN KEY (tenant) REFERENCES dbrouter.tenants NOT VALID;

DROP INDEX dbrouter.messages_client_key;
CREATE UNIQUE INDEX messages_client_key
    ON dbrouter.messages ((coalesce(tenant, enqueued_by, '')), client_key)
    WHERE client_key IS NOT NULL;

ALTER TABLE dbrouter.messages ENABLE ROW LEVEL SECURITY;
