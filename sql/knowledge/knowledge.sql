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
-- of its sample's raw caption). kept_strict: the caption's normalised text contains the
-- whole entity (curate_occurs). kept (lenient): kept_strict, or one of the caption's own
-- knowledge entities is a partial form of it ("Obama" for "Barack Obama"). The lenient
-- rule also credits partial keeps that are not keeps ("Acura RDX" via "Acura"), so every
-- retention figure below gives both. The raw caption keeps all of its own.
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
       c.variant = $raw OR curate_occurs(r.norm, c.ntext) AS kept_strict,
       c.variant = $raw
       OR curate_occurs(r.norm, c.ntext)
       OR EXISTS (SELECT 1 FROM cap_ents e WHERE e.caption_id = c.caption_id AND curate_occurs(e.norm, r.norm))
       AS kept
FROM caps c JOIN raw_ents r USING (uid);

-- name: caption_retention
-- Per caption (status ok): raw_entities = distinct knowledge entities of the sample's raw
-- caption; retained_strict / retained_lenient = how many of them it keeps under each rule
-- of knowledge.kept; retention_strict / retention_lenient = those over raw_entities, 1.0
-- when the raw caption has none (nothing to lose). retained and retention are the lenient
-- pair under their older names.
SELECT k.caption_id, k.uid, k.source, k.variant,
       count(p.norm) AS raw_entities,
       coalesce(sum(p.kept_strict::INT), 0)::BIGINT AS retained_strict,
       coalesce(sum(p.kept::INT), 0)::BIGINT AS retained_lenient,
       CASE WHEN count(p.norm) = 0 THEN 1.0 ELSE sum(p.kept_strict::INT) / count(p.norm) END AS retention_strict,
       CASE WHEN count(p.norm) = 0 THEN 1.0 ELSE sum(p.kept::INT) / count(p.norm) END AS retention_lenient,
       retained_lenient AS retained,
       retention_lenient AS retention
FROM knowledge_latest k LEFT JOIN {{knowledge.kept}} p USING (caption_id)
WHERE k.status = 'ok'
GROUP BY k.caption_id, k.uid, k.source, k.variant;

-- name: retention
-- Share of the raw caption's knowledge entities that each other variant of the same
-- sample keeps, per source and variant, strict (whole name) and lenient (a partial name
-- counts) side by side. Only samples whose raw caption has a knowledge entity count.
-- micro = kept / raw entities over all pairs; macro = mean over captions of each
-- caption's share; keeps_all = share of captions that keep every raw entity.
SELECT source, variant,
       count(*) AS captions,
       sum(raw_entities)::BIGINT AS raw_entities,
       sum(retained_strict)::BIGINT AS kept_strict,
       sum(retained_lenient)::BIGINT AS kept_lenient,
       round(sum(retained_strict) / sum(raw_entities), 4) AS strict_micro,
       round(sum(retained_lenient) / sum(raw_entities), 4) AS lenient_micro,
       round(avg(retained_strict / raw_entities), 4) AS strict_macro,
       round(avg(retained_lenient / raw_entities), 4) AS lenient_macro,
       round(avg((retained_strict = raw_entities)::INT), 4) AS keeps_all_strict,
       round(avg((retained_lenient = raw_entities)::INT), 4) AS keeps_all_lenient
FROM {{knowledge.caption_retention}}
WHERE variant <> $raw AND raw_entities > 0
GROUP BY source, variant
ORDER BY source, variant;

-- name: lost
-- Every raw knowledge entity a variant drops, with both captions (--param
-- variant=synthetic). lost_by = 'both' when neither rule keeps it, 'strict' when only a
-- partial name keeps it (lenient rule), so `-p variant=synthetic` then filtering
-- lost_by = 'strict' lists exactly the keeps the lenient rule adds. Entity and label are
-- the raw caption's first span with that normal form.
WITH spans AS (
    SELECT uid, norm, first(text ORDER BY start_char) AS entity, first(label ORDER BY start_char) AS label
    FROM caption_entities WHERE variant = $raw AND knowledge AND norm <> '' GROUP BY uid, norm
)
SELECT e.entity, e.label, CASE WHEN p.kept THEN 'strict' ELSE 'both' END AS lost_by,
       v.text AS variant_caption, r.text AS raw_caption
FROM {{knowledge.kept}} p
JOIN spans e USING (uid, norm)
JOIN knowledge_latest v USING (caption_id)
JOIN knowledge_latest r ON r.uid = p.uid AND r.variant = $raw
WHERE p.variant = $variant AND NOT p.kept_strict
ORDER BY p.uid, p.norm, p.caption_id;

-- name: unsupported
-- The support rule, once: one row per (caption with status ok that is neither the raw nor
-- the synthetic caption, of a sample with a raw or synthetic caption with status ok;
-- distinct knowledge entity of that caption). A reference caption supports the entity
-- (cause, tried in this order): 'text', its normalised text contains the entity;
-- 'partial', one of its knowledge entities is a partial form of it; 'abbreviation', its
-- original text has the entity's initials as an upper-case word ("BJJ" for "Brazilian
-- Jiu Jitsu"; entities of two or more words); 'hashtag', its normalised text has the
-- entity's words run together as one word ("#BlackFriday" for "Black Friday"); 'escaped
-- unicode', with JSON escapes that lost their backslash ("u0027") read as an apostrophe
-- on either side, the text or partial rule holds ("Worldu0027s" supports "World's"); the
-- abbreviation rule takes entities of letters only. support = 'raw' when the raw caption
-- supports it, else 'synthetic' when only the synthetic caption does, else 'none'
-- (unsupported; the column hallucinated is support = 'none', the older name).
-- Python twin: curate.knowledge.normalize.support.
-- defaults: raw=raw, synthetic=synthetic
WITH refs AS (
    SELECT uid, caption_id AS ref_id, variant = $raw AS is_raw, text AS rtext, curate_norm(text) AS ntext,
           curate_norm(regexp_replace(text, 'u00[0-9a-fA-F]{2}', '''', 'g')) AS ntext_unescaped
    FROM knowledge_latest
    WHERE variant IN ($raw, $synthetic) AND status = 'ok'
),
ref_ents AS (
    SELECT DISTINCT caption_id AS ref_id, norm FROM caption_entities
    WHERE variant IN ($raw, $synthetic) AND knowledge AND norm <> ''
),
ents AS (
    SELECT DISTINCT e.caption_id, e.uid, e.source, e.variant, e.norm
    FROM caption_entities e JOIN knowledge_latest k USING (caption_id)
    WHERE e.knowledge AND e.norm <> '' AND k.status = 'ok' AND e.variant NOT IN ($raw, $synthetic)
      AND e.uid IN (SELECT uid FROM refs)
),
forms AS (
    SELECT *,
           CASE WHEN contains(norm, ' ') THEN replace(norm, ' ', '') END AS joined,
           CASE WHEN contains(norm, ' ') AND regexp_full_match(norm, '[a-z ]+') THEN upper(array_to_string(
               list_transform(string_split(norm, ' '), lambda w: w[1]), '')) END AS initials,
           curate_norm(regexp_replace(norm, 'u00[0-9a-f]{2}', '''', 'g')) AS unescaped
    FROM ents
),
pairs AS (
    SELECT f.caption_id, f.norm, r.is_raw,
           CASE WHEN curate_occurs(f.norm, r.ntext) THEN 1
                WHEN EXISTS (SELECT 1 FROM ref_ents x WHERE x.ref_id = r.ref_id AND curate_occurs(x.norm, f.norm)) THEN 2
                WHEN f.initials IS NOT NULL
                     AND regexp_matches(r.rtext, '(^|[^A-Za-z0-9])' || f.initials || '([^A-Za-z0-9]|$)') THEN 3
                WHEN f.joined IS NOT NULL AND curate_occurs(f.joined, r.ntext) THEN 4
                WHEN r.ntext_unescaped <> r.ntext AND curate_occurs(f.norm, r.ntext_unescaped) THEN 5
                WHEN f.unescaped <> f.norm AND (curate_occurs(f.unescaped, r.ntext) OR EXISTS (
                         SELECT 1 FROM ref_ents x WHERE x.ref_id = r.ref_id AND curate_occurs(x.norm, f.unescaped))) THEN 5
           END AS how
    FROM forms f JOIN refs r USING (uid)
),
judged AS (
    SELECT caption_id, norm, min(how) FILTER (WHERE is_raw) AS raw_how, min(how) FILTER (WHERE NOT is_raw) AS syn_how
    FROM pairs GROUP BY caption_id, norm
)
SELECT e.caption_id, e.uid, e.source, e.variant, e.norm,
       CASE WHEN j.raw_how IS NOT NULL THEN 'raw' WHEN j.syn_how IS NOT NULL THEN 'synthetic' ELSE 'none' END AS support,
       ['text', 'partial', 'abbreviation', 'hashtag', 'escaped unicode'][coalesce(j.raw_how, j.syn_how)] AS cause,
       j.raw_how IS NULL AND j.syn_how IS NULL AS hallucinated
FROM ents e JOIN judged j USING (caption_id, norm);

-- name: caption_hallucinations
-- Per caption (status ok): judged = the caption is neither reference and its sample has
-- a reference caption with status ok; entities = its distinct knowledge entities
-- (n_knowledge); by support (knowledge.unsupported): supported_raw, synthetic_only
-- (supported by the synthetic caption alone) and unsupported (by neither; hallucinated
-- is the same count under its older name; all 0 when not judged).
-- defaults: raw=raw, synthetic=synthetic
SELECT k.caption_id, k.uid, k.source, k.variant,
       k.variant NOT IN ($raw, $synthetic) AND k.uid IN (
           SELECT uid FROM knowledge_latest WHERE variant IN ($raw, $synthetic) AND status = 'ok') AS judged,
       k.n_knowledge AS entities,
       count(u.norm) AS judged_entities,
       count(u.norm) FILTER (WHERE u.support = 'raw') AS supported_raw,
       count(u.norm) FILTER (WHERE u.support = 'synthetic') AS synthetic_only,
       count(u.norm) FILTER (WHERE u.support = 'none') AS unsupported,
       unsupported AS hallucinated
FROM knowledge_latest k LEFT JOIN {{knowledge.unsupported}} u USING (caption_id)
WHERE k.status = 'ok'
GROUP BY k.caption_id, k.uid, k.source, k.variant, k.n_knowledge;

-- name: support
-- Where the knowledge entities of each non-reference variant come from, per source and
-- variant (samples with a raw or synthetic caption): entities judged; supported by the
-- raw caption; supported by the synthetic caption only (an entity the captioner may have
-- invented and the fusion copied); unsupported by either (not all inventions: see
-- docs/knowledge.md for the measured precision); the rates of the last two; the share of
-- captions with an unsupported entity; and how many supports came from the cheap causes
-- (abbreviation, hashtag, escaped unicode) rather than the text.
SELECT c.source, c.variant,
       count(*) AS captions,
       sum(c.judged_entities)::BIGINT AS entities,
       sum(c.supported_raw)::BIGINT AS by_raw,
       sum(c.synthetic_only)::BIGINT AS synthetic_only,
       sum(c.unsupported)::BIGINT AS unsupported,
       round(sum(c.synthetic_only) / nullif(sum(c.judged_entities), 0), 4) AS synthetic_only_rate,
       round(sum(c.unsupported) / nullif(sum(c.judged_entities), 0), 4) AS unsupported_rate,
       round(avg((c.unsupported > 0)::INT), 4) AS captions_unsupported,
       (SELECT count(*) FROM {{knowledge.unsupported}} u
        WHERE u.source = c.source AND u.variant = c.variant
          AND u.cause IN ('abbreviation', 'hashtag', 'escaped unicode')) AS cheap_causes
FROM {{knowledge.caption_hallucinations}} c
WHERE c.judged
GROUP BY c.source, c.variant
ORDER BY c.source, c.variant;

-- name: unsupported_spans
-- Every knowledge entity span of one variant with the given support (--param
-- variant=fused; support=none by default, or synthetic for those only the synthetic
-- caption backs), with its caption and the reference captions.
-- defaults: support=none
SELECT e.text AS entity, e.label, k.text AS caption,
       (SELECT string_agg(r.text, ' | ' ORDER BY r.variant) FROM knowledge_latest r
        WHERE r.uid = e.uid AND r.variant IN ($raw, $synthetic)) AS reference_captions
FROM caption_entities e
JOIN {{knowledge.unsupported}} u ON u.caption_id = e.caption_id AND u.norm = e.norm
JOIN knowledge_latest k ON k.caption_id = e.caption_id
WHERE e.variant = $variant AND e.knowledge AND u.support = $support
ORDER BY e.uid, e.start_char;

-- name: status
-- Captions per knowledge status (ok, empty, too long, error) and variant: every caption
-- the stage saw has a row, so this accounts for all of them.
SELECT variant, status, count(*) AS captions, any_value(detail) AS example_detail
FROM knowledge_latest
GROUP BY variant, status
ORDER BY variant, status;
