-- Guideline versions (streams/labels/guidelines.py): the labeling guideline of
-- each label set, one row per version. A version is the guideline's sequence
-- number (1, 2, ... as it changes) and a hash of its text ("3-1a2b3c4d5e6f");
-- the labeling service records a new one whenever the file it reads changes,
-- as an audit event (action guideline, the version as JSON in detail) that
-- this view copies from audit_log.
CREATE TABLE IF NOT EXISTS guideline_versions
(
    label_set   String COMMENT 'the label set the guideline is for (its labels joined by |; * for any)',
    sequence    UInt32 COMMENT '1 for the first version, one more at each change',
    version     String COMMENT 'sequence and content hash: what tasks and labels carry',
    digest      String COMMENT 'SHA-256 of the guideline text',
    title       String,
    content     String COMMENT 'the markdown text (the first 60,000 characters)',
    ts          DateTime64(3, 'UTC') COMMENT 'when the service first served it',
    service     LowCardinality(String),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was inserted'
)
ENGINE = ReplacingMergeTree
ORDER BY (label_set, sequence);

CREATE MATERIALIZED VIEW IF NOT EXISTS guideline_versions_from_audit TO guideline_versions AS
SELECT JSONExtractString(detail, 'label_set') AS label_set,
       JSONExtractUInt(detail, 'sequence') AS sequence,
       JSONExtractString(detail, 'version') AS version,
       JSONExtractString(detail, 'digest') AS digest,
       JSONExtractString(detail, 'title') AS title,
       JSONExtractString(detail, 'content') AS content,
       ts, service
FROM audit_log
WHERE action = 'guideline';

-- Labels carry the guideline version their task was shown with (empty: not known).
ALTER TABLE labels ADD COLUMN IF NOT EXISTS guideline_version LowCardinality(String) DEFAULT ''
    COMMENT 'the guideline version the annotator was shown';

-- Agreement can be split by guideline version: cumulative rows per version
-- beside the rows over every version (guideline_version empty).
ALTER TABLE annotator_agreement
    ADD COLUMN IF NOT EXISTS guideline_version LowCardinality(String) COMMENT 'empty: every version',
    MODIFY ORDER BY (metric, annotator_a, annotator_b, window_seconds, window_start, guideline_version);

-- The agreement rollup pools the rows over every version only, so a per-version
-- row does not count its labels twice.
DROP VIEW IF EXISTS agreement_1m_from_windows;

CREATE MATERIALIZED VIEW IF NOT EXISTS agreement_1m_from_windows TO agreement_1m AS
SELECT toStartOfMinute(window_start) AS bucket, metric, annotator_a, annotator_b,
       avgWeightedState(assumeNotNull(annotator_agreement.value), toFloat64(annotator_agreement.n)) AS value,
       sumState(annotator_agreement.n) AS n
FROM annotator_agreement
WHERE annotator_agreement.value IS NOT NULL AND annotator_agreement.n > 0
  AND annotator_agreement.guideline_version = ''
GROUP BY bucket, metric, annotator_a, annotator_b;
