-- Is any agent falling behind?
--
-- Messages waiting behind each agent of each worker (its consumer lag at the
-- end of the minute), with the events it handled and the share of the minute
-- it was busy, as the agents report them (agent_stats). A lag that keeps
-- growing while busy_share nears 1 calls for more partitions and workers.
-- plot: line x=bucket y=lag series=worker_agent
SELECT
    bucket,
    concat(worker, '/', agent) AS worker_agent,
    argMaxMerge(lag) AS lag,
    sumMerge(events) AS events,
    round(sumMerge(seconds) / 60, 3) AS busy_share
FROM agents_1m
WHERE bucket >= (SELECT max(bucket) FROM agents_1m) - INTERVAL 3 HOUR
GROUP BY bucket, worker, agent
ORDER BY worker_agent, bucket
