-- The labeling service's audit log: who leased, labeled, skipped, flagged, resolved or requeued
-- which task, when and from where, and which addresses were locked out for bad tokens. The service
-- sends each event once to the `audit` topic (AuditEvent); the worker's `audit` agent writes it here.
-- Append-only: nothing updates or deletes a row; an event delivered twice collapses on its event_id.
CREATE TABLE IF NOT EXISTS audit_log
(
    event_id     String,
    ts           DateTime64(3, 'UTC'),
    action       LowCardinality(String) COMMENT 'lease, label, skip, flag, resolve, requeue or lockout',
    annotator_id String COMMENT 'who: the token''s annotator (empty for a lockout)',
    role         LowCardinality(String),
    client       String COMMENT 'from where: the client address the service saw',
    task_id      Nullable(String),
    detail       String COMMENT 'the label given, the state a requeued task left, or the reason of a lockout',
    service      LowCardinality(String) COMMENT 'the labeling service that recorded it (host:pid)',
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY event_id;
