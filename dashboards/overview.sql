-- What has the loop done so far?
--
-- Predictions scored, routing decisions, labeling tasks, labels learned,
-- dead letters, and the newest model version with its control-slice
-- accuracy. Tasks, labels and dead letters count each id once.
-- plot: tiles
SELECT
    (SELECT countMerge(events) FROM stages_1h WHERE stage = 'score') AS predictions,
    (SELECT countMerge(events) FROM stages_1h WHERE stage = 'route') AS decisions,
    (SELECT uniqExactMerge(tasks) FROM budget_1h) AS tasks,
    (SELECT uniqExactMerge(labels) FROM labeling_1h) AS labels,
    (SELECT uniqExactMerge(letters) FROM dead_letters_1h) AS dead_letters,
    (SELECT max(version) FROM model_versions) AS model_version,
    (SELECT round(argMax(control_accuracy, version), 4) FROM model_versions) AS control_accuracy
