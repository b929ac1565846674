-- When the first launch of a run (this attempt) was tried: a launch that
-- keeps failing for reasons that may pass (no answer, 429, 5xx, a quota)
-- is retried with backoff until executor.kubernetes.launch_timeout after
-- this, then the attempt fails.
ALTER TABLE runs ADD COLUMN first_launch_ms BIGINT;
