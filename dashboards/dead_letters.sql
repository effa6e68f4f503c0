-- What input is being refused, and why?
--
-- Dead letters per minute by kind of error (undecodable, schema, nan,
-- unknown_label, oversize, internal, ...), over the last day of them. The
-- original bytes and the full reason are in the dead_letters table.
-- plot: stacked x=bucket y=letters series=error
SELECT bucket, error, uniqExactMerge(letters) AS letters
FROM dead_letters_1m
WHERE bucket >= (SELECT max(bucket) FROM dead_letters_1m) - INTERVAL 24 HOUR
GROUP BY bucket, error
ORDER BY bucket, error
