-- How fast is the labeling budget being spent, against its hourly cap?
--
-- Tasks bought so far in each hour, minute by minute, beside the spend and the
-- cap the budget's owner reports (budget_state; missing until it reports).
-- A line that meets the cap early in the hour means the cap, not the policy,
-- decides what gets labeled.
-- plot: line x=bucket y=labels series=series
SELECT bucket, series, labels
FROM
(
    SELECT
        bucket,
        sum(uniqExactMerge(tasks)) OVER (PARTITION BY toStartOfHour(bucket) ORDER BY bucket) AS bought,
        argMaxMerge(spent_hour) AS spent,
        argMaxMerge(cap_hour) AS cap
    FROM budget_1m
    WHERE bucket >= (SELECT max(bucket) FROM budget_1m) - INTERVAL 3 HOUR
    GROUP BY bucket
)
ARRAY JOIN
    ['tasks this hour', 'spent this hour (budget)', 'hourly cap'] AS series,
    [toNullable(toFloat64(bought)), if(spent > 0, toFloat64(spent), NULL), toFloat64(cap)] AS labels
WHERE labels IS NOT NULL
ORDER BY series, bucket
