-- Did a new guideline version change which labels annotators give, and how far they agree?
--
-- Per guideline version (sequence-hash; "none" for labels given without one): the share
-- of each label among the labels given under it (a shift from one version to the next is
-- label drift the guideline caused), and the newest cumulative Krippendorff's alpha among
-- those labels (NULL until two annotators labeled the same item under it).
-- plot: stacked x=version y=share series=label
WITH per_label AS (
    SELECT if(guideline_version = '', 'none', guideline_version) AS version, label, count() AS labels
    FROM labels FINAL
    GROUP BY version, label
),
agreement AS (
    SELECT guideline_version AS version, argMax(value, window_start) AS alpha
    FROM annotator_agreement FINAL
    WHERE metric = 'krippendorff_alpha' AND window_seconds = 0 AND guideline_version != ''
    GROUP BY version
)
SELECT p.version AS version, p.label AS label, p.labels AS labels,
       round(p.labels / sum(p.labels) OVER (PARTITION BY p.version), 4) AS share,
       a.alpha AS alpha
FROM per_label AS p
LEFT JOIN agreement AS a ON a.version = p.version
ORDER BY toUInt32OrZero(splitByChar('-', p.version)[1]), p.version, p.label
SETTINGS join_use_nulls = 1
