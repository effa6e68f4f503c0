-- How does the shadow model improve as labels come in, on the control slice and on the labels the policy picks?
--
-- One point per published model version. The control slice is a uniform
-- random sample held out from learning: its accuracy is the unbiased one.
-- The policy curve is prequential accuracy on the labels the policy bought
-- (each predicted before it was learned); it runs lower because the policy
-- buys the hard items. lift.sql tells how much the policy gains over random.
-- plot: line x=labels_seen y=accuracy series=curve
SELECT labels_seen, curve, round(accuracy, 4) AS accuracy
FROM
(
    SELECT labels_seen, control_accuracy, prequential_accuracy
    FROM model_versions FINAL
)
ARRAY JOIN
    ['control slice', 'policy (prequential)'] AS curve,
    [control_accuracy, prequential_accuracy] AS accuracy
WHERE accuracy IS NOT NULL
ORDER BY curve, labels_seen
