-- How accurate is the production model, release by release?
--
-- Per production release (the model and version its predictions carry), its
-- accuracy as last estimated (streams/evaluation/production.py) two ways: on
-- the random control slice, with a Wilson 95% interval, and on every label
-- weighted by 1 / selection_probability, with a Horvitz-Thompson 95% interval
-- (usually narrower: it uses all the labels). The labels' own accuracy would be
-- biased low, since the policy buys labels where the model is unsure. Two
-- estimates whose intervals do not overlap say a selection probability is off.
-- plot: bar x=release y=accuracy series=series
SELECT release, series, round(v, 4) AS accuracy, n
FROM
(
    SELECT concat(model_name, ' ', model_version) AS release, estimator,
           argMax(value, (version, ts)) AS value, argMax(ci_low, (version, ts)) AS low,
           argMax(ci_high, (version, ts)) AS high, argMax(n, (version, ts)) AS n
    FROM production_accuracy FINAL
    WHERE metric = 'accuracy'
    GROUP BY model_name, model_version, estimator
)
ARRAY JOIN [estimator, concat(estimator, ' 95% low'), concat(estimator, ' 95% high')] AS series,
           [value, low, high] AS v
WHERE v IS NOT NULL
ORDER BY release, series
