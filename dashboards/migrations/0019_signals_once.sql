-- A prediction's signals are stored once: in its routing decision, which every input
-- event has (predictions, overrides and appeals; the same values, joined on event_id).
-- The copy in predictions was three quarters of that table's bytes and about a third of
-- what an insert of its rows cost the worker (docs/scaling.md, 2026-12-01).
--
--     SELECT p.event_id, p.predicted_label, d.signals['margin']
--     FROM predictions AS p INNER JOIN routing_decisions AS d USING event_id

ALTER TABLE predictions DROP COLUMN IF EXISTS signals;
