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

-- name: kept
-- The retention rule, once: one row per (caption with status ok, distinct knowledge entity
-- of its sample's raw caption): kept when the caption's normalised text contains the
-- entity (curate_occurs) or one of the caption's own knowledge entities is a partial form
-- of it ("Obama" for "Barack Obama"); the raw caption keeps all of its own. Every
-- retention and loss figure below is built on this query.
-- defaults: raw=raw
WITH raw_ents AS (
    SELECT DISTINCT uid, norm FROM caption_entities
    WHERE variant = $raw AND knowledge AND norm <> ''
),
caps AS (
    SELECT uid, source, variant, caption_id, curate_norm(text) AS ntext
    FROM knowledge_latest WHERE status = 'ok'
),
cap_ents AS (
    SELECT DISTINCT caption_id, norm FROM caption_entities WHERE knowledge AND norm <> ''
)
SELECT c.caption_id, c.uid, c.source, c.variant, r.norm,
       c.variant = $raw
       OR curate_occurs(r.norm, c.ntext)
       OR EXISTS (SELECT 1 FROM cap_ents e WHERE e.caption_id = c.caption_id AND curate_occurs(e.norm, r.norm))
       AS kept
FROM caps c JOIN raw_ents r USING (uid);

-- name: caption_retention
-- Per caption (status ok): raw_entities = distinct knowledge entities of the sample's raw
-- caption, retained = how many of them the caption keeps (knowledge.kept), retention =
-- retained / raw_entities, 1.0 when the raw caption has none (nothing to lose).
SELECT k.caption_id, k.uid, k.source, k.variant,
       count(p.norm) AS raw_entities,
       coalesce(sum(p.kept::INT), 0)::BIGINT AS retained,
       CASE WHEN count(p.norm) = 0 THEN 1.0 ELSE sum(p.kept::INT) / count(p.norm) END AS retention
FROM knowledge_latest k LEFT JOIN {{knowledge.kept}} p USING (caption_id)
WHERE k.status = 'ok'
GROUP BY k.caption_id, k.uid, k.source, k.variant;

-- name: retention
-- Share of the raw caption's knowledge entities that each other variant of the same
-- sample keeps, per source and variant. Only samples whose raw caption has a knowledge
-- entity count. micro = kept / raw entities over all pairs; macro = mean over captions
-- of each caption's share.
SELECT source, variant,
       count(*) AS captions,
       sum(raw_entities)::BIGINT AS raw_entities,
       sum(retained)::BIGINT AS kept,
       round(sum(retained) / sum(raw_entities), 4) AS retention_micro,
       round(avg(retained / raw_entities), 4) AS retention_macro,
       round(avg((retained = raw_entities)::INT), 4) AS keeps_all
FROM {{knowledge.caption_retention}}
WHERE variant <> $raw AND raw_entities > 0
GROUP BY source, variant
ORDER BY source, variant;

-- name: lost
-- Every raw knowledge entity a variant drops (knowledge.kept is false), with both
-- captions (--param variant=synthetic); entity and label are the raw caption's first
-- span with that normal form.
WITH spans AS (
    SELECT uid, norm, first(text ORDER BY start_char) AS entity, first(label ORDER BY start_char) AS label
    FROM caption_entities WHERE variant = $raw AND knowledge AND norm <> '' GROUP BY uid, norm
)
SELECT e.entity, e.label, v.text AS variant_caption, r.text AS raw_caption
FROM {{knowledge.kept}} p
JOIN spans e USING (uid, norm)
JOIN knowledge_latest v USING (caption_id)
JOIN knowledge_latest r ON r.uid = p.uid AND r.variant = $raw
WHERE p.variant = $variant AND NOT p.kept
ORDER BY p.uid, p.norm, p.caption_id;

-- name: unsupported
-- The hallucination rule, once: one row per (caption with status ok that is neither the
-- raw nor the synthetic caption, of a sample with a raw or synthetic caption with status
-- ok; distinct knowledge entity of that caption): hallucinated when no reference caption
-- contains it (curate_occurs on the normalised text) and no reference entity is a
-- partial form of it. Every hallucination figure below is built on this query.
-- defaults: raw=raw, synthetic=synthetic
WITH refs AS (
    SELECT uid, curate_norm(text) AS ntext FROM knowledge_latest
    WHERE variant IN ($raw, $synthetic) AND status = 'ok'
),
ref_ents AS (
    SELECT DISTINCT uid, norm FROM caption_entities
    WHERE variant IN ($raw, $synthetic) AND knowledge AND norm <> ''
),
ents AS (
    SELECT DISTINCT e.caption_id, e.uid, e.source, e.variant, e.norm
    FROM caption_entities e JOIN knowledge_latest k USING (caption_id)
    WHERE e.knowledge AND e.norm <> '' AND k.status = 'ok' AND e.variant NOT IN ($raw, $synthetic)
      AND e.uid IN (SELECT uid FROM refs)
)
SELECT e.caption_id, e.uid, e.source, e.variant, e.norm,
       NOT EXISTS (SELECT 1 FROM refs r WHERE r.uid = e.uid AND curate_occurs(e.norm, r.ntext))
       AND NOT EXISTS (SELECT 1 FROM ref_ents x WHERE x.uid = e.uid AND curate_occurs(x.norm, e.norm))
       AS hallucinated
FROM ents e;

-- name: caption_hallucinations
-- Per caption (status ok): judged = the caption is neither reference and its sample has
-- a reference caption with status ok; entities = its distinct knowledge entities
-- (n_knowledge); hallucinated = how many of them knowledge.unsupported flags (0 when not
-- judged).
-- defaults: raw=raw, synthetic=synthetic
SELECT k.caption_id, k.uid, k.source, k.variant,
       k.variant NOT IN ($raw, $synthetic) AND k.uid IN (
           SELECT uid FROM knowledge_latest WHERE variant IN ($raw, $synthetic) AND status = 'ok') AS judged,
       k.n_knowledge AS entities,
       count(u.norm) AS judged_entities,
       coalesce(sum(u.hallucinated::INT), 0)::BIGINT AS hallucinated
FROM knowledge_latest k LEFT JOIN {{knowledge.unsupported}} u USING (caption_id)
WHERE k.status = 'ok'
GROUP BY k.caption_id, k.uid, k.source, k.variant, k.n_knowledge;

-- name: hallucinations
-- Knowledge entities of a variant that neither the raw nor the synthetic caption of the
-- same sample supports, per source and variant (the raw and synthetic variants
-- themselves are the references, so they are not listed). Only samples with a raw or
-- synthetic caption count. rate = unsupported / entities; captions_hallucinating = share
-- of the variant's captions with at least one unsupported entity.
SELECT source, variant,
       count(*) AS captions,
       sum(judged_entities)::BIGINT AS entities,
       sum(hallucinated)::BIGINT AS hallucinated,
       round(sum(hallucinated) / nullif(sum(judged_entities), 0), 4) AS rate,
       round(avg((hallucinated > 0)::INT), 4) AS captions_hallucinating
FROM {{knowledge.caption_hallucinations}}
WHERE judged
GROUP BY source, variant
ORDER BY source, variant;

-- name: hallucinated
-- Every unsupported knowledge entity span of one variant (knowledge.unsupported), with
-- its caption and the reference captions (--param variant=fused).
SELECT e.text AS entity, e.label, k.text AS caption,
       (SELECT string_agg(r.text, ' | ') FROM knowledge_latest r
        WHERE r.uid = e.uid AND r.variant IN ($raw, $synthetic)) AS references
FROM caption_entities e
JOIN {{knowledge.unsupported}} u ON u.caption_id = e.caption_id AND u.norm = e.norm
JOIN knowledge_latest k ON k.caption_id = e.caption_id
WHERE e.variant = $variant AND e.knowledge AND u.hallucinated
ORDER BY e.uid, e.start_char;

-- name: status
-- Captions per knowledge status (ok, empty, too long, error) and variant: every caption
-- the stage saw has a row, so this accounts for all of them.
SELECT variant, status, count(*) AS captions, any_value(detail) AS example_detail
FROM knowledge_latest
GROUP BY variant, status
ORDER BY variant, status;
