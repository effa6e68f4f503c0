-- Is it time to stop, or slow down, labeling?
--
-- The newest value of each stopping signal and what it recommends, with the
-- model version it was measured on.
SELECT
    metric,
    argMax(version, ts) AS version,
    round(argMax(value, ts), 4) AS value,
    argMax(recommendation, ts) AS recommendation,
    max(ts) AS measured_at
FROM stopping_signals FINAL
GROUP BY metric
ORDER BY metric
