SELECT trio_cancel_requests_cancel('job-42', 'the user pressed stop');
-- with a ttl of its own:
SELECT trio_cancel_requests_cancel('job-42', NULL, interval '10 minutes');
INSERT INTO trio_cancel_requests (job_id, reason) VALUES ('job-42', 'stop');
