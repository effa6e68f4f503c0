-- Label quality: consensus per task, adjudications, and each annotator's standing.

-- The label a task settled on; a correction adds a newer row (take argMax(label, ts) per task).
CREATE TABLE IF NOT EXISTS consensus_labels
(
    task_id            String,
    item_id            String,
    label              LowCardinality(String),
    confidence         Float64 COMMENT 'posterior of the label under the weighted vote',
    method             LowCardinality(String) COMMENT 'weighted_vote, adaptive_single or reviewer',
    annotators         Array(LowCardinality(String)),
    n_labels           UInt32,
    round              UInt32 COMMENT 'adjudication rounds it took',
    ts                 DateTime64(3, 'UTC'),
    learned_by_version UInt32
)
ENGINE = ReplacingMergeTree
ORDER BY (task_id, ts);

-- A disagreement sent to a further annotator, or up to a reviewer.
CREATE TABLE IF NOT EXISTS adjudications
(
    task_id    String,
    item_id    String,
    round      UInt32,
    tier       LowCardinality(String) COMMENT 'annotator or reviewer',
    reason     String,
    annotators Array(LowCardinality(String)) COMMENT 'who had labeled it, excluded from the next round',
    ts         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (task_id, round);

-- Each annotator's standing over time (cumulative at ts).
CREATE TABLE IF NOT EXISTS annotator_quality
(
    ts                      DateTime64(3, 'UTC'),
    annotator_id            LowCardinality(String),
    labels                  UInt32,
    gold_checks             UInt32,
    gold_accuracy           Nullable(Float64),
    agreement_with_majority Nullable(Float64),
    time_to_label_p50_ms    Nullable(Float64),
    time_to_label_p90_ms    Nullable(Float64),
    labels_per_hour         Nullable(Float64),
    label_drift             Nullable(Float64),
    flagged                 UInt8 COMMENT 'gold accuracy under the threshold'
)
ENGINE = ReplacingMergeTree
ORDER BY (annotator_id, ts);

-- The labeler's role: annotator, reviewer or admin.
ALTER TABLE labels ADD COLUMN IF NOT EXISTS tier LowCardinality(String) DEFAULT 'annotator';
