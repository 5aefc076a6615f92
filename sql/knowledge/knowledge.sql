-- Knowledge audits over the stage knowledge.spacy_ner.v1 (run it first, e.g.
-- `curate knowledge score` or a pipeline). All queries read the views knowledge_latest
-- and caption_entities: the rows of the most recent configuration run.
-- The matching rule (normalisation, "kept", "supported") is written out in
-- curate/knowledge/normalize.py; curate_norm/curate_occurs are its SQL twins.

-- name: by_variant
-- Knowledge per caption variant, over all sources: captions, share of captions with at
-- least one knowledge entity, mean distinct knowledge entities per caption, knowledge
-- entities per 100 words (sum of entities / sum of words), mean of the per-caption
-- density, mean weighted score, mean numeric entities (DATE, CARDINAL, ... counted apart).
SELECT variant,
       count(*) AS captions,
       round(avg((n_knowledge > 0)::INT), 4) AS with_knowledge,
       round(avg(n_knowledge), 3) AS mean_knowledge,
       round(100 * sum(n_knowledge) / nullif(sum(words), 0), 2) AS knowledge_per_100_words,
       round(avg(density), 4) AS mean_density,
       round(avg(score), 3) AS mean_score,
       round(avg(n_numeric), 3) AS mean_numeric,
       round(avg(words), 2) AS mean_words
FROM knowledge_latest
WHERE status = 'ok'
GROUP BY variant
ORDER BY variant;

-- name: by_source
-- The same measures per source and variant.
SELECT source, variant,
       count(*) AS captions,
       round(avg((n_knowledge > 0)::INT), 4) AS with_knowledge,
       round(avg(n_knowledge), 3) AS mean_knowledge,
       round(100 * sum(n_knowledge) / nullif(sum(words), 0), 2) AS knowledge_per_100_words,
       round(avg(density), 4) AS mean_density,
       round(avg(score), 3) AS mean_score,
       round(avg(n_numeric), 3) AS mean_numeric
FROM knowledge_latest
WHERE status = 'ok'
GROUP BY source, variant
ORDER BY source, variant;

-- name: labels
-- Entity spans per label and variant, with the share of the variant's captions that
-- carry the label.
SELECT variant, label, any_value(knowledge) AS knowledge, count(*) AS spans,
       count(DISTINCT caption_id) AS captions
FROM caption_entities
GROUP BY variant, label
ORDER BY variant, spans DESC;

-- name: top_entities
-- The most frequent normalised knowledge entities of one variant (--param variant=raw).
SELECT norm, mode(label) AS label, count(*) AS spans, count(DISTINCT uid) AS samples, any_value(text) AS example
FROM caption_entities
WHERE variant = $variant AND knowledge AND norm <> ''
GROUP BY norm
ORDER BY spans DESC, norm
LIMIT 50;

-- name: retention
-- Share of the raw caption's knowledge entities that each other variant of the same
-- sample keeps, per source and variant. Only samples whose raw caption has a knowledge
-- entity count. micro = kept / raw entities over all pairs; macro = mean over captions
-- of each caption's share.
-- defaults: raw=raw
WITH raw_ents AS (
    SELECT DISTINCT uid, norm FROM caption_entities
    WHERE variant = $raw AND knowledge AND norm <> ''
),
others AS (
    SELECT uid, source, variant, caption_id, curate_norm(text) AS ntext
    FROM knowledge_latest WHERE variant <> $raw AND status = 'ok'
),
other_ents AS (
    SELECT DISTINCT caption_id, norm FROM caption_entities
    WHERE variant <> $raw AND knowledge AND norm <> ''
),
pairs AS (
    SELECT o.source, o.variant, o.caption_id, r.uid, r.norm,
           curate_occurs(r.norm, o.ntext)
           OR EXISTS (SELECT 1 FROM other_ents e WHERE e.caption_id = o.caption_id AND curate_occurs(e.norm, r.norm))
           AS kept
    FROM raw_ents r JOIN others o USING (uid)
),
per_caption AS (
    SELECT source, variant, caption_id, count(*) AS raw_entities, sum(kept::INT) AS kept
    FROM pairs GROUP BY ALL
)
SELECT source, variant,
       count(*) AS captions,
       sum(raw_entities)::BIGINT AS raw_entities,
       sum(kept)::BIGINT AS kept,
       round(sum(kept) / sum(raw_entities), 4) AS retention_micro,
       round(avg(kept / raw_entities), 4) AS retention_macro,
       round(avg((kept = raw_entities)::INT), 4) AS keeps_all
FROM per_caption
GROUP BY source, variant
ORDER BY source, variant;

-- name: lost
-- Every raw knowledge entity a variant drops, with both captions (--param variant=synthetic).
-- defaults: raw=raw
WITH raw_ents AS (
    SELECT DISTINCT uid, norm, first(text ORDER BY start_char) AS entity, first(label ORDER BY start_char) AS label
    FROM caption_entities WHERE variant = $raw AND knowledge AND norm <> '' GROUP BY uid, norm
),
v AS (SELECT uid, caption_id, text, curate_norm(text) AS ntext FROM knowledge_latest WHERE variant = $variant),
v_ents AS (SELECT DISTINCT caption_id, norm FROM caption_entities WHERE variant = $variant AND knowledge)
SELECT r.entity, r.label, v.text AS variant_caption, raw.text AS raw_caption
FROM raw_ents r
JOIN v USING (uid)
JOIN knowledge_latest raw ON raw.uid = r.uid AND raw.variant = $raw
WHERE NOT curate_occurs(r.norm, v.ntext)
  AND NOT EXISTS (SELECT 1 FROM v_ents e WHERE e.caption_id = v.caption_id AND curate_occurs(e.norm, r.norm))
ORDER BY r.uid, r.norm;

-- name: hallucinations
-- Knowledge entities of a variant that neither the raw nor the synthetic caption of the
-- same sample supports, per source and variant (the raw and synthetic variants
-- themselves are the references, so they are not listed). Only samples with a raw or
-- synthetic caption count. rate = unsupported / entities; captions_hallucinating = share
-- of the variant's captions with at least one unsupported entity.
-- defaults: raw=raw, synthetic=synthetic
WITH refs AS (
    SELECT uid, curate_norm(text) AS ntext FROM knowledge_latest
    WHERE variant IN ($raw, $synthetic) AND status = 'ok'
),
ref_ents AS (
    SELECT DISTINCT uid, norm FROM caption_entities
    WHERE variant IN ($raw, $synthetic) AND knowledge AND norm <> ''
),
cands AS (
    SELECT k.uid, k.source, k.variant, k.caption_id, e.norm
    FROM knowledge_latest k
    LEFT JOIN (SELECT DISTINCT caption_id, norm FROM caption_entities WHERE knowledge AND norm <> '') e
           USING (caption_id)
    WHERE k.variant NOT IN ($raw, $synthetic) AND k.status = 'ok'
      AND k.uid IN (SELECT uid FROM refs)
),
judged AS (
    SELECT c.*,
           c.norm IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM refs r WHERE r.uid = c.uid AND curate_occurs(c.norm, r.ntext))
           AND NOT EXISTS (SELECT 1 FROM ref_ents e WHERE e.uid = c.uid AND curate_occurs(e.norm, c.norm))
           AS hallucinated
    FROM cands c
),
per_caption AS (
    SELECT source, variant, caption_id, count(norm) AS entities, sum(hallucinated::INT) AS hallucinated
    FROM judged GROUP BY ALL
)
SELECT source, variant,
       count(*) AS captions,
       sum(entities)::BIGINT AS entities,
       sum(hallucinated)::BIGINT AS hallucinated,
       round(sum(hallucinated) / nullif(sum(entities), 0), 4) AS rate,
       round(avg((hallucinated > 0)::INT), 4) AS captions_hallucinating
FROM per_caption
GROUP BY source, variant
ORDER BY source, variant;

-- name: hallucinated
-- Every unsupported knowledge entity of one variant, with its caption and the
-- reference captions (--param variant=fused).
-- defaults: raw=raw, synthetic=synthetic
WITH refs AS (
    SELECT uid, curate_norm(text) AS ntext FROM knowledge_latest WHERE variant IN ($raw, $synthetic)
),
ref_ents AS (
    SELECT DISTINCT uid, norm FROM caption_entities WHERE variant IN ($raw, $synthetic) AND knowledge
)
SELECT e.text AS entity, e.label, k.text AS caption,
       (SELECT string_agg(r.text, ' | ') FROM knowledge_latest r
        WHERE r.uid = e.uid AND r.variant IN ($raw, $synthetic)) AS references
FROM caption_entities e
JOIN knowledge_latest k USING (caption_id)
WHERE e.variant = $variant AND e.knowledge AND e.norm <> ''
  AND e.uid IN (SELECT uid FROM refs)
  AND NOT EXISTS (SELECT 1 FROM refs r WHERE r.uid = e.uid AND curate_occurs(e.norm, r.ntext))
  AND NOT EXISTS (SELECT 1 FROM ref_ents x WHERE x.uid = e.uid AND curate_occurs(x.norm, e.norm))
ORDER BY e.uid, e.start_char;

-- name: status
-- Captions per knowledge status (ok, empty, too long, error) and variant: every caption
-- the stage saw has a row, so this accounts for all of them.
SELECT variant, status, count(*) AS captions, any_value(detail) AS example_detail
FROM knowledge_latest
GROUP BY variant, status
ORDER BY variant, status;
