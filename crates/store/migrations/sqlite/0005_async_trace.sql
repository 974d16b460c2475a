-- The W3C traceparent of the submission (the span that accepted the event): every attempt
-- continues that trace as a child span, so an asynchronous call is traced like a sync one.
ALTER TABLE async_invocations ADD COLUMN traceparent TEXT;
