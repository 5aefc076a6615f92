-- Manifest audit: the pool versus the manifest, side by side. The queries read temp
-- views that `curate mix` creates on its connection (they do not exist in a bare
-- `curate sql` session): mix_pool (uid, source, caption_id, variant: every caption of
-- the policy's sources and variants) and mix_manifest (uid, source, caption_id, variant,
-- weight: the manifest rows); audit_knowledge also reads mix_retention
-- (mix.caption_retention) and audit_dedup_left mix_dropped (member_kind, member_id: the
-- dropped members of the latest dedup runs, as the attributes dedup_kept and
-- image_dedup_kept read them).

-- name: audit_size
-- Samples and captions in the pool and in the manifest, with the manifest's weight sum.
SELECT 'pool' AS side, count(DISTINCT uid) AS samples, count(*) AS captions,
       count(DISTINCT source) AS sources, count(DISTINCT variant) AS variants, NULL::DOUBLE AS weight_sum
FROM mix_pool
UNION ALL
SELECT 'manifest', count(DISTINCT uid), count(*), count(DISTINCT source), count(DISTINCT variant),
       round(sum(weight), 3)
FROM mix_manifest;

-- name: audit_variants
-- Captions per variant in the pool and chosen captions per variant in the manifest.
WITH p AS (SELECT variant, count(*) AS pool_captions FROM mix_pool GROUP BY variant),
m AS (SELECT variant, count(*) AS manifest_samples, sum(weight) AS w FROM mix_manifest GROUP BY variant)
SELECT variant, coalesce(pool_captions, 0) AS pool_captions,
       round(coalesce(pool_captions, 0) / sum(pool_captions) OVER (), 4) AS pool_share,
       coalesce(manifest_samples, 0) AS manifest_samples,
       round(coalesce(manifest_samples, 0) / nullif(sum(manifest_samples) OVER (), 0), 4) AS manifest_share,
       round(coalesce(w, 0) / nullif(sum(w) OVER (), 0), 4) AS weighted_share
FROM p FULL JOIN m USING (variant)
ORDER BY variant;

-- name: audit_sources
-- Samples per source in the pool and in the manifest, and the share kept.
WITH p AS (SELECT source, count(DISTINCT uid) AS pool_samples FROM mix_pool GROUP BY source),
m AS (SELECT source, count(*) AS manifest_samples FROM mix_manifest GROUP BY source)
SELECT source, pool_samples, coalesce(manifest_samples, 0) AS manifest_samples,
       round(coalesce(manifest_samples, 0) / pool_samples, 4) AS kept
FROM p LEFT JOIN m USING (source)
ORDER BY source;

-- name: audit_words
-- Caption length (words, from caption_stats) per variant: pool captions versus the
-- manifest's chosen captions. mix_words: the stage's latest rows (curate.mix.audit).
WITH s AS (
    SELECT caption_id, words FROM mix_words
)
SELECT 'pool' AS side, variant, count(words) AS captions, round(avg(words), 2) AS mean_words,
       quantile_cont(words, 0.1) AS p10, median(words) AS median, quantile_cont(words, 0.9) AS p90
FROM mix_pool JOIN s USING (caption_id) GROUP BY variant
UNION ALL
SELECT 'manifest', variant, count(words), round(avg(words), 2),
       quantile_cont(words, 0.1), median(words), quantile_cont(words, 0.9)
FROM mix_manifest JOIN s USING (caption_id) GROUP BY variant
ORDER BY side DESC, variant;

-- name: audit_clip
-- CLIP score distribution per variant (clip_scores_latest of one model, status ok, --param model=...):
-- pool captions versus the manifest's chosen captions.
WITH s AS (SELECT caption_id, score FROM clip_scores_latest WHERE model = $model AND status = 'ok')
SELECT 'pool' AS side, variant, count(score) AS captions, round(avg(score), 4) AS mean,
       round(quantile_cont(score, 0.1), 4) AS p10, round(median(score), 4) AS median,
       round(quantile_cont(score, 0.9), 4) AS p90, round(min(score), 4) AS min
FROM mix_pool JOIN s USING (caption_id) GROUP BY variant
UNION ALL
SELECT 'manifest', variant, count(score), round(avg(score), 4), round(quantile_cont(score, 0.1), 4),
       round(median(score), 4), round(quantile_cont(score, 0.9), 4), round(min(score), 4)
FROM mix_manifest JOIN s USING (caption_id) GROUP BY variant
ORDER BY side DESC, variant;

-- name: audit_duplicates
-- Exact duplicates per side: captions whose exact text another caption of the same side
-- also has, the extra copies (captions - distinct texts) and the distinct texts; samples
-- whose image bytes (samples.sha256, when not NULL) another sample of the same side also
-- has, and the extra image copies (samples with a sha256 - distinct sha256). The pool
-- counts every caption and sample of mix_pool, the manifest its chosen captions.
WITH r AS (
    SELECT 'pool' AS side, uid, caption_id FROM mix_pool
    UNION ALL
    SELECT 'manifest', uid, caption_id FROM mix_manifest
),
n AS (SELECT side, count(*) AS captions, count(DISTINCT uid) AS samples FROM r GROUP BY side),
txt AS (SELECT r.side, c.text, count(*) AS n FROM r JOIN captions c USING (caption_id) GROUP BY r.side, c.text),
img AS (
    SELECT r.side, s.sha256, count(*) AS n
    FROM (SELECT DISTINCT side, uid FROM r) r JOIN samples s USING (uid)
    WHERE s.sha256 IS NOT NULL GROUP BY r.side, s.sha256
),
t AS (SELECT side, sum(n) FILTER (WHERE n > 1) AS repeated, sum(n - 1) AS extra, count(*) AS texts
      FROM txt GROUP BY side),
i AS (SELECT side, sum(n) FILTER (WHERE n > 1) AS repeated, sum(n - 1) AS extra FROM img GROUP BY side)
SELECT side, coalesce(n.captions, 0) AS captions,
       coalesce(t.repeated, 0)::BIGINT AS with_repeated_text,
       coalesce(t.extra, 0)::BIGINT AS extra_text_copies,
       coalesce(t.texts, 0) AS distinct_texts,
       coalesce(n.samples, 0) AS samples,
       coalesce(i.repeated, 0)::BIGINT AS with_repeated_sha256,
       coalesce(i.extra, 0)::BIGINT AS extra_image_copies
FROM (VALUES ('pool'), ('manifest')) sides(side) LEFT JOIN n USING (side) LEFT JOIN t USING (side)
     LEFT JOIN i USING (side)
ORDER BY side DESC;

-- name: audit_dedup_left
-- Dropped duplicates left per side, by the rules of the select attributes dedup_kept and
-- image_dedup_kept (only the latest run of each dedup kind and scope counts): captions
-- that caption dedup dropped (pool: every caption; manifest: the chosen captions) and
-- samples that image dedup (semdedup, near or exact duplicates: member_kind 'uid')
-- dropped. Reads the temp view mix_dropped (member_kind, member_id), which `curate mix`
-- creates from dedup_groups (caption verdicts only when dedup_summary exists); a kind
-- without a run counts 0.
WITH r AS (
    SELECT 'pool' AS side, uid, caption_id FROM mix_pool
    UNION ALL
    SELECT 'manifest', uid, caption_id FROM mix_manifest
)
SELECT side, count(r.caption_id) AS captions,
       count(r.caption_id) FILTER (WHERE r.caption_id IN (SELECT member_id FROM mix_dropped
                                                          WHERE member_kind = 'caption_id')) AS dropped_captions_left,
       count(DISTINCT r.uid) AS samples,
       count(DISTINCT r.uid) FILTER (WHERE r.uid IN (SELECT member_id FROM mix_dropped
                                                     WHERE member_kind = 'uid')) AS dropped_samples_left
FROM (VALUES ('pool'), ('manifest')) sides(side) LEFT JOIN r USING (side)
GROUP BY side
ORDER BY side DESC;

-- name: audit_knowledge
-- Knowledge per side: for the pool, every caption of the pool's variants; for the
-- manifest, the chosen captions. with_knowledge = share with at least one knowledge
-- entity; mean_retention = mean share of the raw caption's entities kept (1 when the raw
-- caption has none), from the temp view mix_retention (mix.caption_retention).
WITH k AS (SELECT caption_id, n_knowledge, density FROM knowledge_latest WHERE status = 'ok')
SELECT 'pool' AS side, count(*) AS captions, round(avg((n_knowledge > 0)::INT), 4) AS with_knowledge,
       round(avg(n_knowledge), 3) AS mean_knowledge, round(avg(density), 4) AS mean_density,
       round(avg(retention), 4) AS mean_retention
FROM mix_pool JOIN k USING (caption_id) LEFT JOIN mix_retention USING (caption_id)
UNION ALL
SELECT 'manifest', count(*), round(avg((n_knowledge > 0)::INT), 4), round(avg(n_knowledge), 3),
       round(avg(density), 4), round(avg(retention), 4)
FROM mix_manifest JOIN k USING (caption_id) LEFT JOIN mix_retention USING (caption_id)
ORDER BY side DESC;

-- name: audit_concepts
-- Concept coverage of a vocabulary (--param vocabulary=cifar10): concepts with zero
-- samples in the pool (any caption) and in the manifest (chosen caption), and the tail:
-- concepts in the lowest quarter of non-zero pool counts, kept (named by at least one
-- manifest row) or lost.
-- defaults: mode=phrase
WITH vocab AS (SELECT DISTINCT concept FROM concepts WHERE vocabulary = $vocabulary),
h AS (SELECT caption_id, concept FROM concept_hits WHERE vocabulary = $vocabulary AND mode = $mode),
pc AS (SELECT concept, count(DISTINCT p.uid) AS n FROM mix_pool p JOIN h USING (caption_id) GROUP BY concept),
mc AS (SELECT concept, count(DISTINCT m.uid) AS n FROM mix_manifest m JOIN h USING (caption_id) GROUP BY concept),
c AS (SELECT v.concept, coalesce(pc.n, 0) AS pool, coalesce(mc.n, 0) AS manifest
      FROM vocab v LEFT JOIN pc USING (concept) LEFT JOIN mc USING (concept)),
tail AS (SELECT quantile_disc(pool, 0.25) AS q FROM c WHERE pool > 0)
SELECT count(*) AS concepts,
       round(avg((pool = 0)::INT), 4) AS pool_zero_share,
       round(avg((manifest = 0)::INT), 4) AS manifest_zero_share,
       count(*) FILTER (WHERE pool > 0 AND pool <= (SELECT q FROM tail)) AS tail_concepts,
       count(*) FILTER (WHERE pool > 0 AND pool <= (SELECT q FROM tail) AND manifest > 0) AS tail_kept,
       count(*) FILTER (WHERE pool > 0 AND pool <= (SELECT q FROM tail) AND manifest = 0) AS tail_lost,
       count(*) FILTER (WHERE pool > 0 AND manifest = 0) AS concepts_lost
FROM c;
