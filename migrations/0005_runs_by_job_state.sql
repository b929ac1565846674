-- A job's active runs (the overlap check of every cron fire) without
-- scanning its whole history or every job's active runs.
CREATE INDEX runs_by_job_state ON runs (job, state);
