-- An SMPP engine letting its binds go (a reloaded backend, a clean stop):
-- its rows of dbrouter.binds, and only its (a reloaded backend's new
-- engine has written its own under another instance).
-- $1 worker (host:pid), $2 engine instance.
DELETE FROM dbrouter.binds WHERE worker = $1 AND instance = $2
