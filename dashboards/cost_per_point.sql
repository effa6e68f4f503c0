-- How many labels does one point of control-slice accuracy cost, hour by hour?
--
-- Labels learned in the hour and the change in control accuracy since the
-- last version of the previous hour (in points), and their ratio. The cost
-- rises as the model saturates: when it is high for hours, see
-- should_we_stop.sql.
SELECT
    bucket,
    model_name,
    last_labels - previous_labels AS labels,
    round(100 * (last_accuracy - previous_accuracy), 2) AS gain_points,
    round(labels / nullIf(gain_points, 0), 1) AS labels_per_point
FROM
(
    SELECT
        bucket,
        model_name,
        last_labels,
        last_accuracy,
        lagInFrame(last_labels, 1, first_labels) OVER w AS previous_labels,
        lagInFrame(last_accuracy, 1, first_accuracy) OVER w AS previous_accuracy
    FROM
    (
        SELECT
            bucket,
            model_name,
            argMinMerge(first_labels_seen) AS first_labels,
            argMaxMerge(last_labels_seen) AS last_labels,
            argMinMerge(first_control_accuracy) AS first_accuracy,
            argMaxMerge(last_control_accuracy) AS last_accuracy
        FROM models_1h
        GROUP BY bucket, model_name
    )
    WINDOW w AS (PARTITION BY model_name ORDER BY bucket ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
ORDER BY model_name, bucket
