-- Pause backend $1 with reason $2 (a gateway refused our credentials).
-- Updates the backend row; its trigger tells every worker to reload, and
-- the claim checks the row, so no further batch is taken.
SELECT dbrouter.pause_backend($1, $2)
