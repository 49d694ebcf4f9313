-- Take up to $2 tokens of backend $1's rate-limit bucket (see
-- dbrouter.take_tokens): how many transmissions this claim may take, and
-- when none, how long until the next token.
--
-- Locks: the backend's `backend_rates` row, until the claim's transaction
-- ends, so concurrent claims of one rate-limited backend (in any worker
-- process) take turns and unused tokens are handed back before anyone else
-- looks. Backends without a limit lock nothing.
SELECT granted, wait_seconds FROM dbrouter.take_tokens($1, $2)
