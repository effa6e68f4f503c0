-- The production model, release by release (streams/evaluation/production.py):
-- its accuracy and per-class precision and recall for each production
-- model_version (the version its prediction events carry), measured on the
-- labels bought for its predictions. Two estimators side by side:
--   control   the random control slice (a uniform sample of the stream): plain
--             proportions with Wilson intervals;
--   weighted  every label, weighted by 1 / selection_probability (the ratio
--             form of the Horvitz-Thompson estimator) with a normal interval
--             from its linearised Horvitz-Thompson variance.
-- A row is written for each figure every time the shadow model publishes a
-- version; the newest row per (model_version, estimator, metric, class) is the
-- current estimate. NULL where there is no label to say.
CREATE TABLE IF NOT EXISTS production_accuracy
(
    ts            DateTime64(3, 'UTC'),
    version       UInt32 COMMENT 'the shadow model version published when this was estimated',
    model_name    LowCardinality(String) COMMENT 'the production model',
    model_version LowCardinality(String) COMMENT 'the production model version the predictions came from',
    estimator     LowCardinality(String) COMMENT 'control or weighted',
    metric        LowCardinality(String) COMMENT 'accuracy, precision or recall',
    class         String COMMENT 'the class of a precision or recall; empty for accuracy',
    value         Nullable(Float64),
    ci_low        Nullable(Float64) COMMENT 'lower end of the 95% interval',
    ci_high       Nullable(Float64),
    n             UInt32 COMMENT 'labels the figure rests on',
    weight        Float64 COMMENT 'the stream items they stand for (sum of 1 / selection_probability); n for control',
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted'
)
ENGINE = ReplacingMergeTree
ORDER BY (model_name, model_version, estimator, metric, class, version, ts);
