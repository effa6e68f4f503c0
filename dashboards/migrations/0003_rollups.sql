-- Rollups: materialized views that aggregate every insert into per-minute
-- tables (NAME_1m), which in turn feed per-hour tables (NAME_1h) of the same
-- shape. Both are AggregatingMergeTrees keyed by `bucket` (the start of the
-- minute or hour, UTC) and a few dimensions; their columns hold aggregate
-- states, read with the -Merge combinator of the same function:
--
--     SELECT bucket, reason, uniqExactMerge(tasks) AS tasks
--     FROM reasons_1h GROUP BY bucket, reason ORDER BY bucket
--
-- Counts of tasks, labels and dead letters are uniqExact of their ids, so a
-- row the sink lets through twice still counts once; counts of predictions and
-- decisions are plain counts (exact figures: the FINAL tables). A rollup sees
-- the rows inserted after it was created.

-- Labeling tasks created, and labels received, by reason.
CREATE TABLE IF NOT EXISTS reasons_1m
(
    bucket DateTime('UTC'),
    reason LowCardinality(String),
    tasks  AggregateFunction(uniqExact, String),
    labels AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (bucket, reason);

CREATE MATERIALIZED VIEW IF NOT EXISTS reasons_1m_from_tasks TO reasons_1m AS
SELECT toStartOfMinute(created_at) AS bucket, reason, uniqExactState(task_id) AS tasks
FROM labeling_tasks
ARRAY JOIN if(empty(reasons), ['none'], reasons) AS reason
GROUP BY bucket, reason;

CREATE MATERIALIZED VIEW IF NOT EXISTS reasons_1m_from_labels TO reasons_1m AS
SELECT toStartOfMinute(ts) AS bucket, reason, uniqExactState(event_id) AS labels
FROM labels
ARRAY JOIN if(empty(reasons), ['none'], reasons) AS reason
GROUP BY bucket, reason;

CREATE TABLE IF NOT EXISTS reasons_1h AS reasons_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS reasons_1h_from_1m TO reasons_1h AS
SELECT toStartOfHour(bucket) AS bucket, reason,
       uniqExactMergeState(tasks) AS tasks, uniqExactMergeState(labels) AS labels
FROM reasons_1m
GROUP BY bucket, reason;

-- Budget: tasks bought, and the owner's last view of the spend against the caps.
CREATE TABLE IF NOT EXISTS budget_1m
(
    bucket            DateTime('UTC'),
    tasks             AggregateFunction(uniqExact, String),
    spent_hour        AggregateFunction(argMax, UInt32, DateTime64(3, 'UTC')),
    spent_day         AggregateFunction(argMax, UInt32, DateTime64(3, 'UTC')),
    spent_week        AggregateFunction(argMax, UInt32, DateTime64(3, 'UTC')),
    cap_hour          AggregateFunction(argMax, Nullable(UInt32), DateTime64(3, 'UTC')),
    cap_day           AggregateFunction(argMax, Nullable(UInt32), DateTime64(3, 'UTC')),
    cap_week          AggregateFunction(argMax, Nullable(UInt32), DateTime64(3, 'UTC')),
    target_fraction   AggregateFunction(argMax, Float64, DateTime64(3, 'UTC')),
    realised_fraction AggregateFunction(argMax, Float64, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS budget_1m_from_tasks TO budget_1m AS
SELECT toStartOfMinute(created_at) AS bucket, uniqExactState(task_id) AS tasks
FROM labeling_tasks
GROUP BY bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS budget_1m_from_state TO budget_1m AS
SELECT toStartOfMinute(ts) AS bucket,
       argMaxState(spent_hour, ts) AS spent_hour,
       argMaxState(spent_day, ts) AS spent_day,
       argMaxState(spent_week, ts) AS spent_week,
       argMaxState(cap_hour, ts) AS cap_hour,
       argMaxState(cap_day, ts) AS cap_day,
       argMaxState(cap_week, ts) AS cap_week,
       argMaxState(target_fraction, ts) AS target_fraction,
       argMaxState(realised_fraction, ts) AS realised_fraction
FROM budget_state
GROUP BY bucket;

CREATE TABLE IF NOT EXISTS budget_1h AS budget_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS budget_1h_from_1m TO budget_1h AS
SELECT toStartOfHour(bucket) AS bucket,
       uniqExactMergeState(tasks) AS tasks,
       argMaxMergeState(spent_hour) AS spent_hour,
       argMaxMergeState(spent_day) AS spent_day,
       argMaxMergeState(spent_week) AS spent_week,
       argMaxMergeState(cap_hour) AS cap_hour,
       argMaxMergeState(cap_day) AS cap_day,
       argMaxMergeState(cap_week) AS cap_week,
       argMaxMergeState(target_fraction) AS target_fraction,
       argMaxMergeState(realised_fraction) AS realised_fraction
FROM budget_1m
GROUP BY bucket;

-- Labeling, per annotator: labels, seconds of work (duration_ms), seconds an
-- item waited from task to label, and how often the label agreed with the
-- shadow model's answer before it learned the label.
CREATE TABLE IF NOT EXISTS labeling_1m
(
    bucket         DateTime('UTC'),
    annotator_id   LowCardinality(String),
    labels         AggregateFunction(uniqExact, String),
    model_agreed   AggregateFunction(uniqExactIf, String, UInt8),
    model_compared AggregateFunction(uniqExactIf, String, UInt8),
    work_seconds   AggregateFunction(quantiles(0.5, 0.9), Float64),
    wait_seconds   AggregateFunction(quantiles(0.5, 0.9), Float64)
)
ENGINE = AggregatingMergeTree
ORDER BY (bucket, annotator_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS labeling_1m_from_labels TO labeling_1m AS
SELECT toStartOfMinute(ts) AS bucket, annotator_id,
       uniqExactState(event_id) AS labels,
       uniqExactIfState(event_id, coalesce(shadow_prediction = label, 0)) AS model_agreed,
       uniqExactIfState(event_id, isNotNull(shadow_prediction)) AS model_compared,
       quantilesState(0.5, 0.9)(duration_ms / 1000) AS work_seconds
FROM labels
GROUP BY bucket, annotator_id;

-- The task is looked up by the ids of the inserted labels only (the table is
-- ordered by task_id), so the cost does not grow with the table.
CREATE MATERIALIZED VIEW IF NOT EXISTS labeling_1m_wait TO labeling_1m AS
SELECT toStartOfMinute(l.ts) AS bucket, l.annotator_id AS annotator_id,
       quantilesState(0.5, 0.9)(greatest(0, dateDiff('millisecond', t.created_at, l.ts)) / 1000) AS wait_seconds
FROM labels AS l
INNER JOIN
(
    SELECT task_id, min(created_at) AS created_at
    FROM labeling_tasks
    WHERE task_id IN (SELECT task_id FROM labels)
    GROUP BY task_id
) AS t ON l.task_id = t.task_id
GROUP BY bucket, annotator_id;

CREATE TABLE IF NOT EXISTS labeling_1h AS labeling_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS labeling_1h_from_1m TO labeling_1h AS
SELECT toStartOfHour(bucket) AS bucket, annotator_id,
       uniqExactMergeState(labels) AS labels,
       uniqExactIfMergeState(model_agreed) AS model_agreed,
       uniqExactIfMergeState(model_compared) AS model_compared,
       quantilesMergeState(0.5, 0.9)(work_seconds) AS work_seconds,
       quantilesMergeState(0.5, 0.9)(wait_seconds) AS wait_seconds
FROM labeling_1m
GROUP BY bucket, annotator_id;

-- Agreement between annotators, pooled over the windows starting in the bucket
-- (weighted by the items each value rests on; the weight is a Float64, as
-- avgWeighted with an integer weight answered 0 on the engine this was tested on).
CREATE TABLE IF NOT EXISTS agreement_1m
(
    bucket      DateTime('UTC'),
    metric      LowCardinality(String),
    annotator_a LowCardinality(String),
    annotator_b LowCardinality(String),
    value       AggregateFunction(avgWeighted, Float64, Float64),
    n           AggregateFunction(sum, UInt32)
)
ENGINE = AggregatingMergeTree
ORDER BY (bucket, metric, annotator_a, annotator_b);

CREATE MATERIALIZED VIEW IF NOT EXISTS agreement_1m_from_windows TO agreement_1m AS
SELECT toStartOfMinute(window_start) AS bucket, metric, annotator_a, annotator_b,
       avgWeightedState(assumeNotNull(annotator_agreement.value), toFloat64(annotator_agreement.n)) AS value,
       sumState(annotator_agreement.n) AS n
FROM annotator_agreement
WHERE annotator_agreement.value IS NOT NULL AND annotator_agreement.n > 0
GROUP BY bucket, metric, annotator_a, annotator_b;

CREATE TABLE IF NOT EXISTS agreement_1h AS agreement_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS agreement_1h_from_1m TO agreement_1h AS
SELECT toStartOfHour(bucket) AS bucket, metric, annotator_a, annotator_b,
       avgWeightedMergeState(value) AS value, sumMergeState(n) AS n
FROM agreement_1m
GROUP BY bucket, metric, annotator_a, annotator_b;

-- Accuracy of the shadow model on each label before learning it: on the labels
-- the policy bought (prequential) and on the random control slice (held out).
CREATE TABLE IF NOT EXISTS accuracy_1m
(
    bucket DateTime('UTC'),
    slice  LowCardinality(String),
    hits   AggregateFunction(uniqExactIf, String, UInt8),
    scored AggregateFunction(uniqExactIf, String, UInt8)
)
ENGINE = AggregatingMergeTree
ORDER BY (bucket, slice);

CREATE MATERIALIZED VIEW IF NOT EXISTS accuracy_1m_from_labels TO accuracy_1m AS
SELECT toStartOfMinute(ts) AS bucket, if(control = 1, 'control', 'policy') AS slice,
       uniqExactIfState(event_id, coalesce(shadow_prediction = label, 0)) AS hits,
       uniqExactIfState(event_id, isNotNull(shadow_prediction)) AS scored
FROM labels
GROUP BY bucket, slice;

CREATE TABLE IF NOT EXISTS accuracy_1h AS accuracy_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS accuracy_1h_from_1m TO accuracy_1h AS
SELECT toStartOfHour(bucket) AS bucket, slice,
       uniqExactIfMergeState(hits) AS hits, uniqExactIfMergeState(scored) AS scored
FROM accuracy_1m
GROUP BY bucket, slice;

-- Model versions published in the bucket: labels seen and accuracy at the first
-- and the last of them, so that labels per point of accuracy follow.
CREATE TABLE IF NOT EXISTS models_1m
(
    bucket                    DateTime('UTC'),
    model_name                LowCardinality(String),
    versions                  AggregateFunction(uniqExact, UInt32),
    first_version             AggregateFunction(min, UInt32),
    last_version              AggregateFunction(max, UInt32),
    first_labels_seen         AggregateFunction(argMin, UInt64, UInt32),
    last_labels_seen          AggregateFunction(argMax, UInt64, UInt32),
    first_control_accuracy    AggregateFunction(argMin, Nullable(Float64), UInt32),
    last_control_accuracy     AggregateFunction(argMax, Nullable(Float64), UInt32),
    last_prequential_accuracy AggregateFunction(argMax, Nullable(Float64), UInt32)
)
ENGINE = AggregatingMergeTree
ORDER BY (bucket, model_name);

CREATE MATERIALIZED VIEW IF NOT EXISTS models_1m_from_versions TO models_1m AS
SELECT toStartOfMinute(ts) AS bucket, model_name,
       uniqExactState(version) AS versions,
       minState(version) AS first_version,
       maxState(version) AS last_version,
       argMinState(labels_seen, version) AS first_labels_seen,
       argMaxState(labels_seen, version) AS last_labels_seen,
       argMinState(control_accuracy, version) AS first_control_accuracy,
       argMaxState(control_accuracy, version) AS last_control_accuracy,
       argMaxState(prequential_accuracy, version) AS last_prequential_accuracy
FROM model_versions
GROUP BY bucket, model_name;

CREATE TABLE IF NOT EXISTS models_1h AS models_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS models_1h_from_1m TO models_1h AS
SELECT toStartOfHour(bucket) AS bucket, model_name,
       uniqExactMergeState(versions) AS versions,
       minMergeState(first_version) AS first_version,
       maxMergeState(last_version) AS last_version,
       argMinMergeState(first_labels_seen) AS first_labels_seen,
       argMaxMergeState(last_labels_seen) AS last_labels_seen,
       argMinMergeState(first_control_accuracy) AS first_control_accuracy,
       argMaxMergeState(last_control_accuracy) AS last_control_accuracy,
       argMaxMergeState(last_prequential_accuracy) AS last_prequential_accuracy
FROM models_1m
GROUP BY bucket, model_name;

-- Lift of the policy over the control slice: the last estimate in the bucket.
CREATE TABLE IF NOT EXISTS lift_1m
(
    bucket           DateTime('UTC'),
    version          AggregateFunction(max, UInt32),
    policy_accuracy  AggregateFunction(argMax, Nullable(Float64), DateTime64(3, 'UTC')),
    control_accuracy AggregateFunction(argMax, Nullable(Float64), DateTime64(3, 'UTC')),
    lift             AggregateFunction(argMax, Nullable(Float64), DateTime64(3, 'UTC')),
    ci_low           AggregateFunction(argMax, Nullable(Float64), DateTime64(3, 'UTC')),
    ci_high          AggregateFunction(argMax, Nullable(Float64), DateTime64(3, 'UTC')),
    n_policy         AggregateFunction(argMax, UInt32, DateTime64(3, 'UTC')),
    n_control        AggregateFunction(argMax, UInt32, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS lift_1m_from_estimates TO lift_1m AS
SELECT toStartOfMinute(ts) AS bucket,
       maxState(version) AS version,
       argMaxState(policy_accuracy, ts) AS policy_accuracy,
       argMaxState(control_accuracy, ts) AS control_accuracy,
       argMaxState(lift, ts) AS lift,
       argMaxState(ci_low, ts) AS ci_low,
       argMaxState(ci_high, ts) AS ci_high,
       argMaxState(n_policy, ts) AS n_policy,
       argMaxState(n_control, ts) AS n_control
FROM policy_lift
GROUP BY bucket;

CREATE TABLE IF NOT EXISTS lift_1h AS lift_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS lift_1h_from_1m TO lift_1h AS
SELECT toStartOfHour(bucket) AS bucket,
       maxMergeState(version) AS version,
       argMaxMergeState(policy_accuracy) AS policy_accuracy,
       argMaxMergeState(control_accuracy) AS control_accuracy,
       argMaxMergeState(lift) AS lift,
       argMaxMergeState(ci_low) AS ci_low,
       argMaxMergeState(ci_high) AS ci_high,
       argMaxMergeState(n_policy) AS n_policy,
       argMaxMergeState(n_control) AS n_control
FROM lift_1m
GROUP BY bucket;

-- Coverage of the classes: predictions of each class against labels of it.
CREATE TABLE IF NOT EXISTS classes_1m
(
    bucket    DateTime('UTC'),
    class     LowCardinality(String),
    predicted AggregateFunction(count),
    labeled   AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (bucket, class);

CREATE MATERIALIZED VIEW IF NOT EXISTS classes_1m_from_predictions TO classes_1m AS
SELECT toStartOfMinute(ts) AS bucket, predicted_label AS class, countState() AS predicted
FROM predictions
GROUP BY bucket, class;

CREATE MATERIALIZED VIEW IF NOT EXISTS classes_1m_from_labels TO classes_1m AS
SELECT toStartOfMinute(ts) AS bucket, label AS class, uniqExactState(event_id) AS labeled
FROM labels
GROUP BY bucket, class;

CREATE TABLE IF NOT EXISTS classes_1h AS classes_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS classes_1h_from_1m TO classes_1h AS
SELECT toStartOfHour(bucket) AS bucket, class,
       countMergeState(predicted) AS predicted, uniqExactMergeState(labeled) AS labeled
FROM classes_1m
GROUP BY bucket, class;

-- Drift events by model and detector.
CREATE TABLE IF NOT EXISTS drift_1m
(
    bucket     DateTime('UTC'),
    model_name LowCardinality(String),
    detector   LowCardinality(String),
    events     AggregateFunction(count)
)
ENGINE = AggregatingMergeTree
ORDER BY (bucket, model_name, detector);

CREATE MATERIALIZED VIEW IF NOT EXISTS drift_1m_from_events TO drift_1m AS
SELECT toStartOfMinute(ts) AS bucket, model_name, detector, countState() AS events
FROM drift_events
GROUP BY bucket, model_name, detector;

CREATE TABLE IF NOT EXISTS drift_1h AS drift_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS drift_1h_from_1m TO drift_1h AS
SELECT toStartOfHour(bucket) AS bucket, model_name, detector, countMergeState(events) AS events
FROM drift_1m
GROUP BY bucket, model_name, detector;

-- Dead letters by input topic and kind of error.
CREATE TABLE IF NOT EXISTS dead_letters_1m
(
    bucket  DateTime('UTC'),
    topic   LowCardinality(String),
    error   LowCardinality(String),
    letters AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (bucket, topic, error);

CREATE MATERIALIZED VIEW IF NOT EXISTS dead_letters_1m_from_letters TO dead_letters_1m AS
SELECT toStartOfMinute(ts) AS bucket, topic, error, uniqExactState(event_id) AS letters
FROM dead_letters
GROUP BY bucket, topic, error;

CREATE TABLE IF NOT EXISTS dead_letters_1h AS dead_letters_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS dead_letters_1h_from_1m TO dead_letters_1h AS
SELECT toStartOfHour(bucket) AS bucket, topic, error, uniqExactMergeState(letters) AS letters
FROM dead_letters_1m
GROUP BY bucket, topic, error;

-- Rows written by each stage, by the time they were processed: predictions
-- scored (score), decisions made (route), labels learned (learn, label time).
CREATE TABLE IF NOT EXISTS stages_1m
(
    bucket DateTime('UTC'),
    stage  LowCardinality(String),
    events AggregateFunction(count)
)
ENGINE = AggregatingMergeTree
ORDER BY (bucket, stage);

CREATE MATERIALIZED VIEW IF NOT EXISTS stages_1m_from_predictions TO stages_1m AS
SELECT toStartOfMinute(scored_at) AS bucket, 'score' AS stage, countState() AS events
FROM predictions
GROUP BY bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS stages_1m_from_decisions TO stages_1m AS
SELECT toStartOfMinute(decided_at) AS bucket, 'route' AS stage, countState() AS events
FROM routing_decisions
GROUP BY bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS stages_1m_from_labels TO stages_1m AS
SELECT toStartOfMinute(ts) AS bucket, 'learn' AS stage, countState() AS events
FROM labels
GROUP BY bucket;

CREATE TABLE IF NOT EXISTS stages_1h AS stages_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS stages_1h_from_1m TO stages_1h AS
SELECT toStartOfHour(bucket) AS bucket, stage, countMergeState(events) AS events
FROM stages_1m
GROUP BY bucket, stage;

-- Throughput and lag of each agent of each worker, as the agents report them.
CREATE TABLE IF NOT EXISTS agents_1m
(
    bucket  DateTime('UTC'),
    worker  LowCardinality(String),
    agent   LowCardinality(String),
    events  AggregateFunction(sum, UInt64),
    seconds AggregateFunction(sum, Float64),
    max_lag AggregateFunction(max, Int64),
    lag     AggregateFunction(argMax, Int64, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (bucket, worker, agent);

CREATE MATERIALIZED VIEW IF NOT EXISTS agents_1m_from_stats TO agents_1m AS
SELECT toStartOfMinute(ts) AS bucket, worker, agent,
       sumState(events) AS events, sumState(seconds) AS seconds,
       maxState(agent_stats.lag) AS max_lag, argMaxState(agent_stats.lag, ts) AS lag
FROM agent_stats
GROUP BY bucket, worker, agent;

CREATE TABLE IF NOT EXISTS agents_1h AS agents_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS agents_1h_from_1m TO agents_1h AS
SELECT toStartOfHour(bucket) AS bucket, worker, agent,
       sumMergeState(events) AS events, sumMergeState(seconds) AS seconds,
       maxMergeState(max_lag) AS max_lag, argMaxMergeState(lag) AS lag
FROM agents_1m
GROUP BY bucket, worker, agent;
