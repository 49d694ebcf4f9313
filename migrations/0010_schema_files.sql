-- ===========================================================================
-- From here on, numbered migrations hold table changes only. The schema's
-- functions, views and triggers live in schema/*.sql as CREATE OR REPLACE
-- statements, and `dbrouter migrate` applies a file, after the migrations,
-- whenever its text differs from the text last applied, kept here. (The
-- landed migrations before this one still define them as they were; the
-- files restate each one's current definition once.)
-- ===========================================================================

CREATE TABLE dbrouter.schema_files (
    name        text PRIMARY KEY,
    body        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
