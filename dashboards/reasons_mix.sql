-- Why are items sent to labeling, minute by minute?
--
-- Tasks created per minute by reason (override, appeal, uncertain,
-- disagreement, control, ...). A task with several reasons counts under each.
-- plot: stacked x=bucket y=tasks series=reason
SELECT bucket, reason, uniqExactMerge(tasks) AS tasks
FROM reasons_1m
WHERE bucket >= (SELECT max(bucket) FROM reasons_1m) - INTERVAL 3 HOUR
GROUP BY bucket, reason
HAVING tasks > 0
ORDER BY bucket, reason
