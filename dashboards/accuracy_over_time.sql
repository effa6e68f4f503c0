-- Is the shadow model right more often, on the policy's picks and on the control slice?
--
-- Per minute of labels, the share the shadow model predicted correctly
-- before learning them, on the labels the policy bought and on the random
-- control slice.
-- plot: line x=bucket y=accuracy series=slice
SELECT bucket, slice, round(uniqExactIfMerge(hits) / scored, 4) AS accuracy, uniqExactIfMerge(scored) AS scored
FROM accuracy_1m
WHERE bucket >= (SELECT max(bucket) FROM accuracy_1m) - INTERVAL 3 HOUR
GROUP BY bucket, slice
HAVING scored > 0
ORDER BY slice, bucket
