-- Operator controls (issue 14): a job's operator state, the audit log of
-- every operator action, and backfills with their own cap on active runs.

-- A job's operator state. No row: `active`. The row stays when the job is
-- resumed (state `active`, who and when), so `kedge runs` can say who.
CREATE TABLE job_controls (
    job        TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    reason     TEXT,
    actor      TEXT NOT NULL,
    since_ms   BIGINT NOT NULL
);

-- Every operator action: who, when, what, on which job or run, why.
-- Written in the same transaction as the change it records; never pruned.
CREATE TABLE audit_log (
    id         TEXT PRIMARY KEY,
    at_ms      BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    job        TEXT,
    run_id     TEXT,
    reason     TEXT,
    details    TEXT
);
CREATE INDEX audit_log_by_at ON audit_log (at_ms);
CREATE INDEX audit_log_by_job ON audit_log (job, at_ms);

-- One `kedge backfill`: the fires it created run under its own cap.
CREATE TABLE backfills (
    id          TEXT PRIMARY KEY,
    job         TEXT NOT NULL,
    from_ms     BIGINT NOT NULL,
    to_ms       BIGINT NOT NULL,
    max_active  BIGINT NOT NULL,
    overlap     TEXT NOT NULL,
    actor       TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
-- The backfill a work item's current runs belong to (NULL: none).
ALTER TABLE work_items ADD COLUMN backfill_id TEXT;
CREATE INDEX work_items_by_backfill ON work_items (backfill_id);
