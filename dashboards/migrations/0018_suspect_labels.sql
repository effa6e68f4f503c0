-- Suspect labels (streams/labels/suspects.py): labels already bought that the
-- cross-fitted model, and the other annotators where there are any, give a low
-- probability (confident learning), sent back for review. One row per label and
-- step: found (the review task was sent), confirmed or cleared (the reviewer,
-- another annotator than the first, disagreed with the label or agreed), and
-- corrected (the task's consensus moved to another label; the learner, the
-- consensus and the agreement figures follow). The label as first bought stays
-- in `label`, the new one is `corrected_label`: both versions are kept.
CREATE TABLE IF NOT EXISTS suspect_labels
(
    ts                    DateTime64(3, 'UTC'),
    task_id               String,
    item_id               String,
    status                LowCardinality(String) COMMENT 'found, confirmed, cleared or corrected',
    version               UInt32 COMMENT 'the model version after which the label was found suspect',
    label                 String COMMENT 'the label as first bought',
    suggested_label       String COMMENT 'the class the model puts above its threshold instead',
    corrected_label       Nullable(String) COMMENT 'the consensus after the review (corrected rows)',
    probability           Float64 COMMENT 'the cross-fitted probability of the label',
    threshold             Float64 COMMENT 'its class threshold: the mean probability of the class over its labels',
    suggested_probability Float64,
    support               Nullable(Float64) COMMENT 'the other annotators'' vote for the label (NULL: labelled alone)',
    score                 Float64 COMMENT 'suggested probability minus the label''s: the higher, the more suspect',
    reason                String,
    annotators            Array(String) COMMENT 'who gave the label (the review goes to someone else)',
    reviewer              Nullable(String) COMMENT 'who reviewed it (confirmed and cleared rows)',
    inserted_at           DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (task_id, status);
