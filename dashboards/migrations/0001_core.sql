-- Core tables. Every table is a ReplacingMergeTree ordered by the id of what it
-- records, so an event delivered twice collapses to one row on merge: count with
-- FINAL (or after OPTIMIZE TABLE ... FINAL) for exact figures. Times are UTC
-- milliseconds. Statements end with ';' at the end of a line.

-- One row per production prediction, as scored by the shadow model.
CREATE TABLE IF NOT EXISTS predictions
(
    event_id        String,
    item_id         String,
    ts              DateTime64(3, 'UTC'),
    model_name      LowCardinality(String),
    model_version   LowCardinality(String),
    predicted_label LowCardinality(String),
    confidence      Float64 COMMENT 'highest production class probability',
    shadow_label    LowCardinality(Nullable(String)),
    shadow_version  UInt32,
    signals         Map(LowCardinality(String), Float64),
    scored_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY event_id;

-- One row per input event (prediction, override, appeal): routed or not, and why.
CREATE TABLE IF NOT EXISTS routing_decisions
(
    event_id              String,
    item_id               String,
    ts                    DateTime64(3, 'UTC'),
    kind                  LowCardinality(String),
    selected              UInt8,
    reasons               Array(LowCardinality(String)),
    selection_probability Float64,
    priority              Float64,
    signals               Map(LowCardinality(String), Float64),
    task_id               Nullable(String),
    policy_version        LowCardinality(String),
    model_version         LowCardinality(String),
    shadow_version        UInt32,
    decided_at            DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS labeling_tasks
(
    task_id               String,
    event_id              String,
    item_id               String,
    kind                  LowCardinality(String),
    created_at            DateTime64(3, 'UTC'),
    source_ts             DateTime64(3, 'UTC'),
    reasons               Array(LowCardinality(String)),
    signals               Map(LowCardinality(String), Float64),
    selection_probability Float64,
    priority              Float64,
    suggested_label       LowCardinality(Nullable(String)),
    confidence            Float64,
    predicted_label       LowCardinality(Nullable(String)),
    user_label            LowCardinality(Nullable(String)),
    model_version         LowCardinality(String),
    shadow_version        UInt32,
    policy_version        LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY task_id;

-- Labels as learned: the version is the replacing column, so the row written
-- after learning wins over an earlier copy whatever the insert order.
CREATE TABLE IF NOT EXISTS labels
(
    event_id           String,
    task_id            String,
    item_id            String,
    label              LowCardinality(String),
    annotator_id       LowCardinality(String),
    ts                 DateTime64(3, 'UTC'),
    duration_ms        Int64,
    note               Nullable(String),
    learned_by_version UInt32 DEFAULT 0,
    shadow_prediction  LowCardinality(Nullable(String)) COMMENT 'shadow model answer before learning this label',
    reasons            Array(LowCardinality(String)) COMMENT 'the task reasons',
    control            UInt8 DEFAULT 0
)
ENGINE = ReplacingMergeTree(learned_by_version)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS model_versions
(
    model_name           LowCardinality(String),
    version              UInt32,
    ts                   DateTime64(3, 'UTC'),
    labels_seen          UInt64,
    prequential_accuracy Nullable(Float64),
    control_accuracy     Nullable(Float64),
    control_labels       UInt32
)
ENGINE = ReplacingMergeTree
ORDER BY (model_name, version);

-- Input that could not be processed; payload and key are the original bytes.
CREATE TABLE IF NOT EXISTS dead_letters
(
    event_id    String,
    ts          DateTime64(3, 'UTC'),
    topic       LowCardinality(String),
    `partition` Int32,
    `offset`    Int64,
    key         Nullable(String),
    reason      String,
    error       LowCardinality(String),
    payload     String
)
ENGINE = ReplacingMergeTree
ORDER BY event_id;
