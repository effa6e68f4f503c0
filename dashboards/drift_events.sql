-- When did the drift detectors fire, and on which signal?
--
-- Drift events per minute by detector, over the last day of events. Read the
-- details (statistic, threshold, window) in the drift_events table.
-- plot: stacked x=bucket y=events series=detector
SELECT bucket, detector, countMerge(events) AS events
FROM drift_1m
WHERE bucket >= (SELECT max(bucket) FROM drift_1m) - INTERVAL 24 HOUR
GROUP BY bucket, detector
ORDER BY bucket, detector
