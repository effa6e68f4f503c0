-- How much better than random labeling is the policy?
--
-- The latest estimate in each minute of the lift of the policy over the
-- control slice (accuracy points), with its confidence interval; an interval
-- that stays above 0 means the policy's labels teach more than random ones.
-- plot: line x=bucket y=value series=series
SELECT bucket, series, round(value, 4) AS value
FROM
(
    SELECT bucket, argMaxMerge(lift) AS lift, argMaxMerge(ci_low) AS ci_low, argMaxMerge(ci_high) AS ci_high
    FROM lift_1m
    WHERE bucket >= (SELECT max(bucket) FROM lift_1m) - INTERVAL 24 HOUR
    GROUP BY bucket
)
ARRAY JOIN ['lift', 'ci low', 'ci high'] AS series, [lift, ci_low, ci_high] AS value
WHERE value IS NOT NULL
ORDER BY series, bucket
