-- Hand back $2 tokens of backend $1 that the claim did not use (fewer rows
-- were due than it was granted). Runs in the claim's transaction, under the
-- bucket row lock take_tokens took.
SELECT dbrouter.return_tokens($1, $2)
