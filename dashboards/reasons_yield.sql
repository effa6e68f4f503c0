-- Which reasons' tasks get labeled, and what share of the labels does each bring?
--
-- Per reason over all time: tasks created, labels received, the share of its
-- tasks labeled, and its share of all labels.
SELECT
    reason,
    tasks,
    labels,
    round(labels / nullIf(tasks, 0), 3) AS labeled_share,
    round(labels / nullIf(sum(labels) OVER (), 0), 3) AS share_of_labels
FROM
(
    SELECT reason, uniqExactMerge(tasks) AS tasks, uniqExactMerge(labels) AS labels
    FROM reasons_1h
    GROUP BY reason
)
ORDER BY labels DESC, reason
