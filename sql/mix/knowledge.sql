-- Per-caption knowledge measures for mixing policies (the CapsFusion knowledge guard and
-- the knowledge-aware strategy): the per-caption queries of sql/knowledge/knowledge.sql,
-- which the per-source reports aggregate, so a policy and a report never disagree. They read the views
-- knowledge_latest and caption_entities of knowledge.spacy_ner.v1; the matching rule
-- (curate_norm, curate_occurs; "kept", "supported") is that of curate/knowledge/normalize.py.

-- name: caption_retention
-- Per caption (status ok): raw_entities, retained and retention (the lenient rule) and
-- retained_strict and retention_strict (whole names only) as knowledge.caption_retention
-- (built on knowledge.kept); 1.0 when the raw caption has none (nothing to lose).
SELECT caption_id, uid, variant, raw_entities, retained, retention, retained_strict, retention_strict
FROM {{knowledge.caption_retention}};

-- name: caption_hallucinations
-- Per caption (status ok): entities = distinct knowledge entities; hallucinated (also
-- unsupported) = those that neither the sample's raw nor its synthetic caption supports;
-- synthetic_only = those only the synthetic caption supports
-- (knowledge.caption_hallucinations). The references themselves, and captions of samples
-- with no reference caption, count 0.
SELECT caption_id, uid, variant, entities, hallucinated, unsupported, synthetic_only
FROM {{knowledge.caption_hallucinations}};
