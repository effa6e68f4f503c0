-- Do the annotators agree with each other, and is it getting better or worse?
--
-- Each agreement metric per minute, pooled over annotator pairs and windows
-- (weighted by the items each value rests on). Kappa near 0 means agreement
-- no better than chance; see annotator_pairs.sql for who disagrees.
-- plot: line x=bucket y=value series=metric
SELECT bucket, metric, round(avgWeightedMerge(value), 4) AS value, sumMerge(n) AS items
FROM agreement_1m
WHERE bucket >= (SELECT max(bucket) FROM agreement_1m) - INTERVAL 24 HOUR
GROUP BY bucket, metric
ORDER BY metric, bucket
