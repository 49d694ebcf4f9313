-- A gateway answered "retry after $2 seconds" (HTTP 429): no worker claims
-- for backend $1 until then. Updates (and so briefly locks) the backend row;
-- its trigger tells every worker to reload the backends.
SELECT dbrouter.throttle_backend($1, $2)
