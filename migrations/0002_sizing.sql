-- Sizing decisions per run (DESIGN §5): the history the rate model learns
-- from, and what `kedge runs` shows about each decision.
ALTER TABLE runs ADD COLUMN work DOUBLE PRECISION;
ALTER TABLE runs ADD COLUMN parallelism BIGINT;
ALTER TABLE runs ADD COLUMN completions BIGINT;
ALTER TABLE runs ADD COLUMN projected_finish_ms BIGINT;
ALTER TABLE runs ADD COLUMN at_risk BIGINT;
ALTER TABLE runs ADD COLUMN sizing_note TEXT;
