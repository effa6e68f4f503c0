-- How many events per second does each stage of the loop handle?
--
-- Rows written per second, minute by minute: predictions scored (score),
-- routing decisions made (route) and labels learned (learn). The newest
-- minute is still filling.
-- plot: line x=bucket y=per_second series=stage
SELECT bucket, stage, round(countMerge(events) / 60, 2) AS per_second
FROM stages_1m
WHERE bucket >= (SELECT max(bucket) FROM stages_1m) - INTERVAL 3 HOUR
GROUP BY bucket, stage
ORDER BY stage, bucket
