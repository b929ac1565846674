-- Queue sources (issue 4): dead letters published to a broker's dead-letter
-- target after they are stored here (an outbox), so an unreachable broker
-- delays a dead letter but never loses it.
ALTER TABLE dead_letters ADD COLUMN forwarded_ms BIGINT;
ALTER TABLE dead_letters ADD COLUMN forward_error TEXT;
