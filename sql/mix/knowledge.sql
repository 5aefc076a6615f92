-- Per-caption knowledge measures for mixing policies (the CapsFusion knowledge guard and
-- the knowledge-aware strategy): the per-source aggregates of sql/knowledge/knowledge.sql
-- (retention, hallucinations) turned into one row per caption. They read the views
-- knowledge_latest and caption_entities of knowledge.spacy_ner.v1; the matching rule
-- (curate_norm, curate_occurs; "kept", "supported") is that of curate/knowledge/normalize.py.

-- name: caption_retention
-- Per caption (status ok): raw_entities = distinct knowledge entities of the sample's raw
-- caption, retained = how many of them the caption keeps, retention = retained /
-- raw_entities, 1.0 when the raw caption has none (nothing to lose). The raw caption
-- itself keeps all of its own.
-- defaults: raw=raw
WITH raw_ents AS (
    SELECT DISTINCT uid, norm FROM caption_entities
    WHERE variant = $raw AND knowledge AND norm <> ''
),
caps AS (
    SELECT uid, variant, caption_id, curate_norm(text) AS ntext
    FROM knowledge_latest WHERE status = 'ok'
),
cap_ents AS (
    SELECT DISTINCT caption_id, norm FROM caption_entities WHERE knowledge AND norm <> ''
),
pairs AS (
    SELECT c.caption_id, r.norm,
           c.variant = $raw
           OR curate_occurs(r.norm, c.ntext)
           OR EXISTS (SELECT 1 FROM cap_ents e WHERE e.caption_id = c.caption_id AND curate_occurs(e.norm, r.norm))
           AS kept
    FROM caps c JOIN raw_ents r USING (uid)
)
SELECT c.caption_id, c.uid, c.variant,
       count(p.norm) AS raw_entities,
       coalesce(sum(p.kept::INT), 0)::BIGINT AS retained,
       CASE WHEN count(p.norm) = 0 THEN 1.0 ELSE sum(p.kept::INT) / count(p.norm) END AS retention
FROM caps c LEFT JOIN pairs p USING (caption_id)
GROUP BY c.caption_id, c.uid, c.variant;

-- name: caption_hallucinations
-- Per caption (status ok): entities = distinct knowledge entities, hallucinated = those
-- that neither the sample's raw nor its synthetic caption supports. The references
-- themselves, and captions of samples with no reference caption, count 0.
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
    SELECT DISTINCT caption_id, uid, norm FROM caption_entities
    WHERE knowledge AND norm <> '' AND variant NOT IN ($raw, $synthetic)
      AND uid IN (SELECT uid FROM refs)
),
judged AS (
    SELECT e.caption_id,
           NOT EXISTS (SELECT 1 FROM refs r WHERE r.uid = e.uid AND curate_occurs(e.norm, r.ntext))
           AND NOT EXISTS (SELECT 1 FROM ref_ents x WHERE x.uid = e.uid AND curate_occurs(x.norm, e.norm))
           AS hallucinated
    FROM ents e
)
SELECT k.caption_id, k.uid, k.variant,
       k.n_knowledge AS entities,
       coalesce(sum(j.hallucinated::INT), 0)::BIGINT AS hallucinated
FROM knowledge_latest k LEFT JOIN judged j USING (caption_id)
WHERE k.status = 'ok'
GROUP BY k.caption_id, k.uid, k.variant, k.n_knowledge;
