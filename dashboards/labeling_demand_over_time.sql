-- Is the labeling queue growing or draining?
--
-- Minute by minute over the last three hours of activity: tasks created
-- (demand), labels received (capacity), and the tasks still waiting at the end
-- of each minute (created minus labeled, from the start of the window). A
-- waiting line that climbs means demand outruns the annotators.
-- plot: line x=bucket y=count series=series
SELECT bucket, series, count
FROM
(
    SELECT bucket, tasks, labels,
           sum(toInt64(tasks) - toInt64(labels)) OVER (ORDER BY bucket) AS waiting
    FROM
    (
        SELECT bucket, sum(tasks) AS tasks, sum(labels) AS labels
        FROM
        (
            SELECT bucket, uniqExactMerge(tasks) AS tasks, 0 AS labels FROM budget_1m GROUP BY bucket
            UNION ALL
            SELECT bucket, 0 AS tasks, uniqExactMerge(labels) AS labels FROM labeling_1m GROUP BY bucket
        )
        WHERE bucket >= (SELECT max(bucket) FROM budget_1m) - INTERVAL 3 HOUR
        GROUP BY bucket
    )
)
ARRAY JOIN ['tasks created', 'labels received', 'tasks waiting'] AS series,
           [toInt64(tasks), toInt64(labels), greatest(toInt64(0), waiting)] AS count
ORDER BY series, bucket
