-- How accurate is the production model, release by release?
--
-- Per production release (the model and version its predictions carry), its
-- accuracy as estimated at each published shadow-model version
-- (streams/evaluation/production.py), two ways: on the random control slice,
-- with a Wilson 95% interval, and on every label weighted by 1 /
-- selection_probability, with a Horvitz-Thompson 95% interval (usually
-- narrower: it uses all the labels). The intervals narrow as labels come in;
-- the last point is the current estimate. The labels' own accuracy would be
-- biased low, since the policy buys labels where the model is unsure; two
-- estimates whose intervals part say a selection probability is off.
-- plot: line x=version y=accuracy series=series
SELECT version, series, round(v, 4) AS accuracy, n
FROM
(
    SELECT version, concat(model_name, ' ', model_version) AS release, estimator,
           argMax(value, ts) AS value, argMax(ci_low, ts) AS low, argMax(ci_high, ts) AS high, argMax(n, ts) AS n
    FROM production_accuracy FINAL
    WHERE metric = 'accuracy'
    GROUP BY version, model_name, model_version, estimator
)
ARRAY JOIN [concat(release, ' ', estimator), concat(release, ' ', estimator, ' 95% low'),
            concat(release, ' ', estimator, ' 95% high')] AS series,
           [value, low, high] AS v
WHERE v IS NOT NULL
ORDER BY series, version
