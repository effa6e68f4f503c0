-- When each row reached ClickHouse (server time), for every table the sink writes:
-- after a restart the sink reads the keys of the rows written last and does not
-- write them again (ClickHouseSink.remember_recent), so counts without FINAL stay exact.

ALTER TABLE predictions ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE routing_decisions ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE labeling_tasks ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE labels ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE consensus_labels ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE adjudications ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE annotator_quality ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE annotator_agreement ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE drift_events ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE policy_lift ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE stopping_signals ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE budget_state ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
ALTER TABLE agent_stats ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted';
