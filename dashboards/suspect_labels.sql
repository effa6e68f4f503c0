-- How many suspect labels were found, and how many did a review confirm and correct?
--
-- Cumulative counts by the model version after which the labels were found suspect:
-- found (sent back for review), confirmed (the reviewer disagreed with the label),
-- corrected (the consensus moved to another label) and cleared (the reviewer agreed).
-- Confirmed over found is the precision of the suspicion; a wide gap between found
-- and confirmed means reviews are spent on labels that were right.
-- plot: line x=version y=labels series=status
WITH found AS (
    SELECT task_id, version FROM suspect_labels FINAL WHERE status = 'found'
)
SELECT f.version AS version, s.status AS status,
       sum(count()) OVER (PARTITION BY s.status ORDER BY f.version) AS labels
FROM suspect_labels AS s FINAL
INNER JOIN found AS f ON f.task_id = s.task_id
GROUP BY version, status
ORDER BY version, status
