-- Who labels how much and how fast, and how often does each annotator agree with the model and with the others?
--
-- Per annotator over all time: labels, seconds of work per label and seconds
-- an item waited from task to label (median and 90th percentile), the share
-- of labels equal to the shadow model's answer before it learned them, and
-- the mean Cohen's kappa with the other annotators. An annotator far below
-- the others on both agreements deserves a look.
-- plot: bar x=annotator_id y=labels
SELECT
    l.annotator_id AS annotator_id,
    l.labels AS labels,
    round(l.work[1], 1) AS work_p50_s,
    round(l.work[2], 1) AS work_p90_s,
    round(l.wait[1], 1) AS wait_p50_s,
    round(l.wait[2], 1) AS wait_p90_s,
    round(l.agreed / nullIf(l.compared, 0), 3) AS agrees_with_model,
    round(k.kappa, 3) AS mean_kappa
FROM
(
    SELECT
        annotator_id,
        uniqExactMerge(labels) AS labels,
        quantilesMerge(0.5, 0.9)(work_seconds) AS work,
        quantilesMerge(0.5, 0.9)(wait_seconds) AS wait,
        uniqExactIfMerge(model_agreed) AS agreed,
        uniqExactIfMerge(model_compared) AS compared
    FROM labeling_1h
    GROUP BY annotator_id
) AS l
LEFT JOIN
(
    SELECT annotator, avgWeightedMerge(value) AS kappa
    FROM agreement_1h
    ARRAY JOIN [annotator_a, annotator_b] AS annotator
    WHERE metric = 'cohen_kappa' AND annotator_a != '' AND annotator_b != ''
    GROUP BY annotator
) AS k ON k.annotator = l.annotator_id
ORDER BY labels DESC, annotator_id
