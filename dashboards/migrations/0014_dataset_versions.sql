-- Dataset versions for retraining the production model (feedbackloop export).
--
-- A labeled item's features and text travel on its task (labeling.tasks) but were
-- not stored in ClickHouse; the export needs them, so labeling_tasks keeps them
-- from now on. Tasks are the few routed items, not the stream, so this costs
-- little; the sink writes the task's own fields, so no code changes with it.
-- Tasks stored before this migration export with empty features and NULL text.
ALTER TABLE labeling_tasks ADD COLUMN IF NOT EXISTS features Map(LowCardinality(String), Float64) COMMENT 'the item''s numeric features, as its task carried them';
ALTER TABLE labeling_tasks ADD COLUMN IF NOT EXISTS text Nullable(String) COMMENT 'the item''s text, as its task carried it';

-- One row per export: which labeled set (as of which model version), the file's
-- content hash (SHA-256 of its bytes), and what is in it. Exporting the same
-- version again writes the same bytes, so the row collapses onto this one.
CREATE TABLE IF NOT EXISTS dataset_versions
(
    version              UInt32 COMMENT 'the model version whose labeled set this is (labels learned before it was published); 0: every label at export time',
    content_hash         String COMMENT 'SHA-256 of the Parquet file, hex',
    ts                   DateTime64(3, 'UTC') COMMENT 'when it was first exported',
    model_name           LowCardinality(String),
    rows                 UInt64,
    control_rows         UInt64 COMMENT 'rows from the random control slice',
    label_counts         Map(String, UInt64) COMMENT 'consensus label -> rows',
    weighted_label_shares Map(String, Float64) COMMENT 'consensus label -> its share once rows are weighted by 1 / selection_probability',
    format               LowCardinality(String) COMMENT 'the writer and its fixed options, e.g. parquet/pyarrow-26/zstd',
    path                 String COMMENT 'where this export was written',
    inserted_at          DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted'
)
ENGINE = ReplacingMergeTree
ORDER BY (version, content_hash);
