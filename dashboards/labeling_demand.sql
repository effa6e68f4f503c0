-- Can the annotators keep up with the labeling demand?
--
-- Tasks waiting for their first label, the demand (tasks created per hour) and
-- the capacity (labels per hour), both at the pace of the last hour of activity,
-- and the hours the queue takes to drain at that capacity if no new task came.
-- Demand above capacity means the queue grows: add annotators or lower the budget.
-- plot: tiles
WITH
    (SELECT max(ts) FROM labels) AS last_label,
    (SELECT max(created_at) FROM labeling_tasks) AS last_task
SELECT
    (SELECT uniqExact(task_id) FROM labeling_tasks WHERE task_id NOT IN (SELECT task_id FROM labels)) AS tasks_waiting,
    (SELECT round(uniqExact(task_id) * 3600 / greatest(60, dateDiff('second', min(created_at), last_task)), 1)
     FROM labeling_tasks WHERE created_at > last_task - INTERVAL 1 HOUR) AS tasks_per_hour,
    (SELECT round(uniqExact(event_id) * 3600 / greatest(60, dateDiff('second', min(ts), last_label)), 1)
     FROM labels WHERE ts > last_label - INTERVAL 1 HOUR) AS labels_per_hour,
    round(tasks_waiting / nullIf(labels_per_hour, 0), 2) AS hours_to_drain
