-- Batches (issue 4): a queue job with `batch:` runs many messages in one
-- Indexed Job, one index per message. Its work items wait with
-- awaiting_batch = 1 until the dispatcher puts them in a batch run;
-- batch_members maps the run's indexes to them, so each message settles on
-- its own index's outcome.
ALTER TABLE work_items ADD COLUMN awaiting_batch BIGINT NOT NULL DEFAULT 0;
CREATE INDEX work_items_awaiting_batch ON work_items (job, awaiting_batch);

CREATE TABLE batch_members (
    run_id        TEXT NOT NULL REFERENCES runs (run_id),
    idx           BIGINT NOT NULL,
    work_item_id  TEXT NOT NULL REFERENCES work_items (id),
    PRIMARY KEY (run_id, idx)
);
CREATE INDEX batch_members_by_item ON batch_members (work_item_id);
