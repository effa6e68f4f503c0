-- What did the last 1,000 labels buy?
--
-- Control-slice accuracy of the newest model version against the version
-- published about 1,000 labels earlier (or the first one), the gain in
-- points, the labels each point cost, and why those labels were bought.
WITH versions AS
(
    SELECT version, labels_seen, control_accuracy
    FROM model_versions FINAL
    WHERE control_accuracy IS NOT NULL
)
SELECT
    min(version) AS from_version,
    max(version) AS to_version,
    max(labels_seen) - min(labels_seen) AS labels,
    round(argMin(control_accuracy, version), 4) AS accuracy_before,
    round(argMax(control_accuracy, version), 4) AS accuracy_after,
    round(100 * (accuracy_after - accuracy_before), 2) AS gain_points,
    round(labels / nullIf(gain_points, 0), 1) AS labels_per_point,
    (
        SELECT arrayStringConcat(groupArray(concat(reason, ' ', toString(n))), ', ')
        FROM
        (
            SELECT reason, count() AS n
            FROM (SELECT reasons FROM labels FINAL ORDER BY ts DESC LIMIT 1000)
            ARRAY JOIN reasons AS reason
            GROUP BY reason
            ORDER BY n DESC, reason
        )
    ) AS bought_for
FROM versions
WHERE labels_seen >= (
    SELECT max(labels_seen) FROM versions
    WHERE labels_seen <= (SELECT max(labels_seen) FROM versions) - 1000
)
