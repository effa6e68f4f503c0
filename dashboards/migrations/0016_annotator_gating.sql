-- Annotator gating (consumers/labeling/gating.py): who the labeling service
-- paused, and who a reviewer re-admitted. A pause comes from the gate (the
-- annotator's gold accuracy fell under the threshold after at least K gold
-- checks) or from a reviewer; while paused, the queue leases the annotator
-- nothing and their open leases went back to it. The service writes each as an
-- audit event (action pause or readmit, the figures as JSON in detail); this
-- view copies them from audit_log as they are inserted.
CREATE TABLE IF NOT EXISTS annotator_gating
(
    event_id      String,
    ts            DateTime64(3, 'UTC'),
    annotator_id  LowCardinality(String) COMMENT 'whom it concerns',
    action        LowCardinality(String) COMMENT 'pause or readmit',
    decided_by    String COMMENT 'gate (the gold checks) or the reviewer',
    gold_accuracy Nullable(Float64) COMMENT 'gold accuracy since the last admission, when it was decided',
    gold_checks   UInt32 COMMENT 'gold checks it rests on',
    threshold     Float64 COMMENT 'the gate''s threshold',
    released      Array(String) COMMENT 'tasks whose leases went back to the queue',
    service       LowCardinality(String),
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted'
)
ENGINE = ReplacingMergeTree
ORDER BY (annotator_id, ts, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS annotator_gating_from_audit TO annotator_gating AS
SELECT event_id, ts, annotator_id, action,
       JSONExtractString(detail, 'by') AS decided_by,
       if(JSONHas(detail, 'gold_accuracy') AND NOT JSONType(detail, 'gold_accuracy') = 'Null',
          JSONExtractFloat(detail, 'gold_accuracy'), NULL) AS gold_accuracy,
       JSONExtractUInt(detail, 'gold_checks') AS gold_checks,
       JSONExtractFloat(detail, 'threshold') AS threshold,
       JSONExtract(detail, 'released', 'Array(String)') AS released,
       service
FROM audit_log
WHERE action IN ('pause', 'readmit');

-- Model against annotator, per annotator: how often each annotator's label is
-- the model's suggestion for the item, and Cohen's kappa between the two
-- (streams/labels/agreement.py). Low against a model that is right on the
-- control slice points at the annotator; low for everyone, at the model.
ALTER TABLE annotator_quality ADD COLUMN IF NOT EXISTS model_agreement Nullable(Float64)
    COMMENT 'share of the annotator''s labels equal to the model''s suggestion';
ALTER TABLE annotator_quality ADD COLUMN IF NOT EXISTS model_kappa Nullable(Float64)
    COMMENT 'Cohen''s kappa between the annotator and the model''s suggestion';
