-- How long does an item wait for its label, and how long does labeling take?
--
-- Per minute of labels: seconds from task to label (median and 90th
-- percentile) and the annotators' own seconds of work (median).
-- plot: line x=bucket y=seconds series=series
SELECT bucket, series, round(seconds, 2) AS seconds
FROM
(
    SELECT
        bucket,
        quantilesMerge(0.5, 0.9)(wait_seconds) AS wait,
        quantilesMerge(0.5, 0.9)(work_seconds) AS work
    FROM labeling_1m
    WHERE bucket >= (SELECT max(bucket) FROM labeling_1m) - INTERVAL 3 HOUR
    GROUP BY bucket
)
ARRAY JOIN ['wait p50', 'wait p90', 'work p50'] AS series, [wait[1], wait[2], work[1]] AS seconds
WHERE NOT isNaN(seconds)
ORDER BY series, bucket
