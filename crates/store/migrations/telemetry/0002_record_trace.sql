-- The call's W3C traceparent, so a trace found in a tracing backend leads to its records
-- (and their request ids to the logs).
ALTER TABLE invocation_records ADD COLUMN traceparent TEXT;
