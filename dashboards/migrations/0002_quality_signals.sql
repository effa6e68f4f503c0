-- What the loop measures about itself, beside the events of 0001: drift, the
-- lift of the policy over the control slice, the signals for stopping,
-- annotator agreement, the budget, and the agents' own throughput. Each table
-- is a ReplacingMergeTree ordered by what identifies a row, so a row written
-- twice (a restart, a re-delivery) collapses on merge. Times are UTC
-- milliseconds; a metric that is not defined yet is NULL.

-- A drift detector fired on a model's stream.
CREATE TABLE IF NOT EXISTS drift_events
(
    ts         DateTime64(3, 'UTC'),
    model_name LowCardinality(String),
    version    UInt32 COMMENT 'model version being scored when the detector fired',
    detector   LowCardinality(String) COMMENT 'e.g. adwin:control_error, page_hinkley:uncertainty',
    detail     String COMMENT 'free text or JSON: the statistic, its threshold, the window'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (model_name, detector, ts);

-- Accuracy on the labels the policy picked against accuracy on the random
-- control slice, for one model version (lift = policy - control).
CREATE TABLE IF NOT EXISTS policy_lift
(
    ts               DateTime64(3, 'UTC'),
    version          UInt32,
    policy_accuracy  Nullable(Float64),
    control_accuracy Nullable(Float64),
    lift             Nullable(Float64),
    ci_low           Nullable(Float64) COMMENT 'lower end of the confidence interval of the lift',
    ci_high          Nullable(Float64),
    n_policy         UInt32,
    n_control        UInt32
)
ENGINE = ReplacingMergeTree
ORDER BY (version, ts);

-- Evidence on whether more labels still pay: a metric, its value, and what it recommends.
CREATE TABLE IF NOT EXISTS stopping_signals
(
    ts             DateTime64(3, 'UTC'),
    version        UInt32,
    metric         LowCardinality(String) COMMENT 'e.g. control_accuracy_slope, stabilizing_predictions',
    value          Nullable(Float64),
    recommendation LowCardinality(String) COMMENT 'continue, slow_down or stop'
)
ENGINE = ReplacingMergeTree
ORDER BY (metric, version, ts);

-- Agreement between annotators over a window of labels. annotator_a and
-- annotator_b name a pair (a < b); a per-annotator metric leaves annotator_b
-- empty, and a metric over all annotators (Fleiss' kappa, Krippendorff's
-- alpha) leaves both empty. n is the number of items the value rests on.
CREATE TABLE IF NOT EXISTS annotator_agreement
(
    window_start   DateTime64(3, 'UTC'),
    window_seconds UInt32,
    annotator_a    LowCardinality(String),
    annotator_b    LowCardinality(String),
    metric         LowCardinality(String) COMMENT 'e.g. cohen_kappa, percent_agreement, fleiss_kappa',
    value          Nullable(Float64),
    n              UInt32
)
ENGINE = ReplacingMergeTree
ORDER BY (metric, annotator_a, annotator_b, window_seconds, window_start);

-- The global budget as its owner sees it: labels spent in the current calendar
-- hour, day and week against the caps (NULL: no cap), and the share of the
-- stream labeled against its target.
CREATE TABLE IF NOT EXISTS budget_state
(
    ts                DateTime64(3, 'UTC'),
    spent_hour        UInt32,
    spent_day         UInt32,
    spent_week        UInt32,
    cap_hour          Nullable(UInt32),
    cap_day           Nullable(UInt32),
    cap_week          Nullable(UInt32),
    target_fraction   Float64,
    realised_fraction Float64
)
ENGINE = ReplacingMergeTree
ORDER BY ts;

-- What each agent of each worker did since its previous row: events handled,
-- seconds spent handling them, and the messages still behind it (consumer lag).
CREATE TABLE IF NOT EXISTS agent_stats
(
    ts      DateTime64(3, 'UTC'),
    worker  LowCardinality(String),
    agent   LowCardinality(String) COMMENT 'score, route or learn',
    events  UInt64,
    seconds Float64,
    lag     Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (worker, agent, ts);
