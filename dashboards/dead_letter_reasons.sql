-- Which exact reasons refuse the most input?
--
-- The twenty most frequent reasons of dead letters, with their topic, kind of
-- error, count and when they were last seen.
SELECT topic, error, reason, count() AS letters, max(ts) AS last_seen
FROM dead_letters FINAL
GROUP BY topic, error, reason
ORDER BY letters DESC, last_seen DESC
LIMIT 20
