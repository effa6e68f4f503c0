-- Where does the production model err: precision and recall per class, release by release?
--
-- Per production release and class, the newest estimates of precision (of the
-- items it predicted as the class, the share that were) and recall (of the
-- items of the class, the share it found), each with its 95% interval, from the
-- control slice (control) and from every label weighted by 1 /
-- selection_probability (weighted). n_predicted and n_labeled are the labels
-- each figure rests on; a wide interval asks for more labels of that class.
SELECT
    concat(model_name, ' ', model_version) AS release,
    class,
    estimator,
    round(argMaxIf(value, (version, ts), metric = 'precision'), 3) AS precision,
    round(argMaxIf(ci_low, (version, ts), metric = 'precision'), 3) AS precision_low,
    round(argMaxIf(ci_high, (version, ts), metric = 'precision'), 3) AS precision_high,
    round(argMaxIf(value, (version, ts), metric = 'recall'), 3) AS recall,
    round(argMaxIf(ci_low, (version, ts), metric = 'recall'), 3) AS recall_low,
    round(argMaxIf(ci_high, (version, ts), metric = 'recall'), 3) AS recall_high,
    argMaxIf(n, (version, ts), metric = 'precision') AS n_predicted,
    argMaxIf(n, (version, ts), metric = 'recall') AS n_labeled
FROM production_accuracy FINAL
WHERE metric IN ('precision', 'recall')
GROUP BY model_name, model_version, class, estimator
ORDER BY release, class, estimator
