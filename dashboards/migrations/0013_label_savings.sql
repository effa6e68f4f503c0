-- Labels saved against random sampling, one row per published model version
-- (streams/evaluation/savings.py). The random control slice is split in two
-- halves by a hash of the item id: the first half's labels teach a
-- counterfactual learner (what random sampling would have taught), the second
-- half is the evaluation set of both it and the policy's model. The two
-- learning curves are compared at the target, the highest accuracy both
-- reached. NULL where the data cannot say yet (too few evaluation labels, or a
-- curve still empty).
CREATE TABLE IF NOT EXISTS label_savings
(
    ts                   DateTime64(3, 'UTC'),
    version              UInt32,
    policy_labels        Nullable(UInt32) COMMENT 'labels the policy''s model needed to first reach the target',
    random_labels_needed Nullable(UInt32) COMMENT 'random labels the counterfactual needed to first reach the target',
    target_accuracy      Nullable(Float64) COMMENT 'the highest accuracy both curves reached, on the evaluation half',
    ratio                Nullable(Float64) COMMENT 'policy_labels / random_labels_needed: below 1, the policy saved labels',
    ci_low               Nullable(Float64) COMMENT 'lower end of the 95% bootstrap interval of the ratio',
    ci_high              Nullable(Float64),
    policy_labels_seen   UInt32 COMMENT 'labels the policy''s model has learned at this version',
    policy_accuracy      Nullable(Float64) COMMENT 'its accuracy now, on the evaluation half',
    random_labels_seen   UInt32 COMMENT 'labels the counterfactual has learned (first half of the control slice)',
    random_accuracy      Nullable(Float64) COMMENT 'its accuracy now, on the evaluation half',
    n_eval               UInt32 COMMENT 'evaluation labels (second half of the control slice)',
    inserted_at          DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted'
)
ENGINE = ReplacingMergeTree
ORDER BY (version, ts);
