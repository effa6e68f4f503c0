-- Which annotator pairs disagree most?
--
-- Cohen's kappa of each pair over all windows (weighted by the items each
-- window rests on), lowest first, with their percent agreement. A pair far
-- below the others points at unclear guidelines or at one of the two.
SELECT
    annotator_a,
    annotator_b,
    round(avgWeightedMergeIf(value, metric = 'cohen_kappa'), 3) AS kappa,
    round(avgWeightedMergeIf(value, metric = 'percent_agreement'), 3) AS percent_agreement,
    sumMergeIf(n, metric = 'cohen_kappa') AS items
FROM agreement_1h
WHERE annotator_a != '' AND annotator_b != '' AND metric IN ('cohen_kappa', 'percent_agreement')
GROUP BY annotator_a, annotator_b
HAVING items > 0
ORDER BY kappa ASC, items DESC
LIMIT 20
