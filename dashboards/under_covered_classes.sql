-- Which classes are under-covered by labels?
--
-- Per class, its share of the production predictions against its share of
-- the labels; coverage below 1 means the class gets fewer labels than its
-- traffic would suggest (rare classes first), and labels_per_1000 is the
-- number of labels per thousand predictions of it.
-- plot: bar x=class y=labels_per_1000
SELECT
    class,
    predicted,
    labeled,
    round(predicted / sum(predicted) OVER (), 4) AS share_of_predictions,
    round(labeled / nullIf(sum(labeled) OVER (), 0), 4) AS share_of_labels,
    round(1000 * labeled / nullIf(predicted, 0), 1) AS labels_per_1000,
    round(share_of_labels / nullIf(share_of_predictions, 0), 2) AS coverage
FROM
(
    SELECT class, countMerge(predicted) AS predicted, uniqExactMerge(labeled) AS labeled
    FROM classes_1h
    WHERE class != ''
    GROUP BY class
)
ORDER BY coverage ASC NULLS FIRST, class
