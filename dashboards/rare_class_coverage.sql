-- Which classes have too few labels to judge the production model on?
--
-- Per class (the settled label of prediction tasks): its labels, its labels in
-- the random control slice, its share of the stream once labels are weighted
-- by 1 / selection_probability, and the production model's recall of it on the
-- control slice with the half-width of its Wilson 95% interval. Rare classes
-- come first: a class with few control labels (a half-width of 0.1 takes about
-- 100) cannot be judged yet, however many labels the policy bought for it.
-- plot: bar x=class y=control_labels
WITH 1.959964 AS z
SELECT
    class,
    labels,
    control_labels,
    round(weight / sum(weight) OVER (), 4) AS stream_share,
    round(found / nullIf(control_labels, 0), 3) AS control_recall,
    round(if(control_labels = 0, NULL,
             z * sqrt(control_recall * (1 - control_recall) / control_labels + z * z / (4 * control_labels * control_labels))
             / (1 + z * z / control_labels)), 3) AS recall_half_width
FROM
(
    SELECT c.label AS class, count() AS labels, countIf(has(t.reasons, 'control')) AS control_labels,
           countIf(has(t.reasons, 'control') AND t.predicted_label = c.label) AS found,
           sum(1 / t.selection_probability) AS weight
    FROM
    (
        SELECT task_id, argMax(label, (ts, learned_by_version)) AS label
        FROM consensus_labels FINAL
        GROUP BY task_id
    ) AS c
    INNER JOIN
    (
        SELECT task_id, reasons, predicted_label, selection_probability
        FROM labeling_tasks FINAL
        WHERE kind = 'prediction' AND selection_probability > 0
    ) AS t ON c.task_id = t.task_id
    GROUP BY class
)
ORDER BY control_labels, class
