-- Retention (issue 13): finished history is pruned after `retention.history`
-- and payloads of succeeded work cleared after `retention.payloads`, in
-- small batches. These indexes let each batch find its rows without
-- scanning the tables.
-- Finished work items by age (state IN (finished states) AND updated_ms < cutoff).
CREATE INDEX work_items_by_state_age ON work_items (state, updated_ms);
-- Only rows that still hold a payload: clearing them never rescans the
-- ones already cleared.
CREATE INDEX work_items_with_payload ON work_items (state, updated_ms) WHERE payload IS NOT NULL;
-- A work item's dead letters (is one still open?), and its cron fire.
CREATE INDEX dead_letters_by_item ON dead_letters (work_item_id);
CREATE INDEX cron_fires_by_item ON cron_fires (work_item_id);
-- Cron fires by age.
CREATE INDEX cron_fires_by_recorded ON cron_fires (recorded_ms);
