-- Replies of an inbound batch, streamed with COPY into the outbox staging
-- table. Its statement-level trigger (outbox_drain) turns the whole stream
-- into connections, messages and transmissions with a few set-wise
-- statements and wakes the workers once. Runs inside the inbound claim's
-- transaction, so the replies commit together with the R marks.
COPY dbrouter.outbox (backend, identity, text, in_response_to) FROM STDIN
