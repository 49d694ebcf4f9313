-- ===========================================================================
-- The web console's people and sessions (`dbrouter console`, src/console/).
-- A console user logs in with a password hashed with argon2 (set by
-- `dbrouter console --set-password`); a user may be read-only. A session is a
-- random token in an HttpOnly cookie; only its SHA-256 is kept here, so a
-- reader of this table cannot take a session over. Each session carries the
-- CSRF token its forms must send back.
--
-- What a console user may do is bounded twice: by the user's own role here,
-- and by the database role the console process connects as (README "Web
-- console").
-- ===========================================================================

CREATE TABLE dbrouter.console_users (
    name           text PRIMARY KEY
        CONSTRAINT console_user_name CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
    password_hash  text NOT NULL
        CONSTRAINT console_password_is_argon2 CHECK (password_hash LIKE '$argon2%'),
    read_only      boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dbrouter.console_sessions (
    token_sha256  bytea PRIMARY KEY,
    user_name     text NOT NULL REFERENCES dbrouter.console_users ON DELETE CASCADE,
    csrf          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON dbrouter.console_sessions (expires_at);
