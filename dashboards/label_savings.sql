-- How many labels did the policy save against random sampling?
--
-- Per model version: the labels the policy needed to reach the target accuracy
-- (the highest both reached on the control slice's evaluation half) divided by
-- the labels random sampling needed for it, with its 95% bootstrap interval.
-- Below 1 the policy saved labels (0.5: half as many); an interval that stays
-- below 1 means the saving is real. No point where the data cannot say yet.
-- plot: line x=version y=value series=series
SELECT version, series, round(value, 4) AS value
FROM
(
    SELECT version, argMax(ratio, ts) AS ratio, argMax(ci_low, ts) AS ci_low, argMax(ci_high, ts) AS ci_high
    FROM label_savings FINAL
    GROUP BY version
)
ARRAY JOIN ['ratio', 'ci low', 'ci high'] AS series, [ratio, ci_low, ci_high] AS value
WHERE value IS NOT NULL
ORDER BY series, version
