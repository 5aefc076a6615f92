-- Concept text frequency in the store, from the stage concepts.text_match.v1
-- (`curate concepts count --vocabulary NAME`). All queries read the latest run of each
-- vocabulary and mode (views concept_hits, concept_alias_hits and concept_text_latest);
-- mode is phrase, paper or nouns. A count is the number
-- of samples (distinct uid) with at least one caption of the variant naming the concept,
-- as in the paper's tables; concepts of the vocabulary that never occur count 0.

-- name: text_counts
-- Per concept of a vocabulary (zeros included), per source and variant: samples and
-- captions naming it (--param vocabulary=imagenet1k; mode=phrase or paper).
-- defaults: mode=phrase
WITH scopes AS (
    SELECT DISTINCT source, variant FROM concept_text_latest
    WHERE vocabulary = $vocabulary AND mode = $mode
),
vocab AS (SELECT DISTINCT concept FROM concepts WHERE vocabulary = $vocabulary),
hits AS (
    SELECT source, variant, concept, count(DISTINCT uid) AS samples, count(*) AS captions
    FROM concept_hits WHERE vocabulary = $vocabulary AND mode = $mode
    GROUP BY ALL
)
SELECT s.source, s.variant, v.concept,
       coalesce(h.samples, 0) AS samples, coalesce(h.captions, 0) AS captions
FROM scopes s CROSS JOIN vocab v
LEFT JOIN hits h ON h.source = s.source AND h.variant = s.variant AND h.concept = v.concept
ORDER BY s.source, s.variant, samples DESC, v.concept;

-- name: text_counts_total
-- Per concept of a vocabulary (zeros included): samples naming it in any caption variant,
-- over the whole store (--param vocabulary=imagenet1k).
-- defaults: mode=phrase
WITH vocab AS (SELECT DISTINCT concept FROM concepts WHERE vocabulary = $vocabulary),
hits AS (
    SELECT concept, count(DISTINCT uid) AS samples
    FROM concept_hits WHERE vocabulary = $vocabulary AND mode = $mode GROUP BY concept
)
SELECT v.concept, coalesce(h.samples, 0) AS samples
FROM vocab v LEFT JOIN hits h USING (concept)
ORDER BY samples DESC, v.concept;

-- name: text_summary
-- The long tail per source and variant: concepts in the vocabulary, share with zero
-- count, median and mean count, captions naming at least one concept
-- (--param vocabulary=imagenet1k).
-- defaults: mode=phrase
WITH named AS (
    SELECT source, variant, count(DISTINCT caption_id) AS n
    FROM concept_hits WHERE vocabulary = $vocabulary AND mode = $mode GROUP BY ALL
),
scopes AS (
    SELECT t.source, t.variant, count(*) AS captions, any_value(coalesce(n.n, 0)) AS captions_with_concept
    FROM concept_text_latest t LEFT JOIN named n USING (source, variant)
    WHERE t.vocabulary = $vocabulary AND t.mode = $mode
    GROUP BY ALL
),
vocab AS (SELECT DISTINCT concept FROM concepts WHERE vocabulary = $vocabulary),
hits AS (
    SELECT source, variant, concept, count(DISTINCT uid) AS samples
    FROM concept_hits WHERE vocabulary = $vocabulary AND mode = $mode GROUP BY ALL
),
counts AS (
    SELECT s.source, s.variant, v.concept, coalesce(h.samples, 0) AS samples
    FROM scopes s CROSS JOIN vocab v
    LEFT JOIN hits h ON h.source = s.source AND h.variant = s.variant AND h.concept = v.concept
)
SELECT c.source, c.variant, any_value(s.captions) AS captions,
       round(any_value(s.captions_with_concept) / any_value(s.captions), 4) AS captions_with_concept,
       count(*) AS concepts,
       round(avg((c.samples = 0)::INT), 4) AS zero_share,
       median(c.samples) AS median_count,
       round(avg(c.samples), 2) AS mean_count,
       max(c.samples) AS max_count
FROM counts c JOIN scopes s USING (source, variant)
GROUP BY c.source, c.variant
ORDER BY c.source, c.variant;

-- name: text_examples
-- Captions naming one concept (--param vocabulary=imagenet1k --param concept=beach).
-- defaults: mode=phrase
SELECT h.source, h.variant, c.text
FROM concept_hits h JOIN captions c USING (caption_id)
WHERE h.vocabulary = $vocabulary AND h.mode = $mode AND h.concept = $concept
ORDER BY h.source, h.variant, c.text;

-- name: text_status
-- Captions per status (ok, empty, too long, error) per vocabulary, mode and variant:
-- every caption the stage saw has a row.
SELECT vocabulary, mode, variant, status, count(*) AS captions
FROM concept_text_latest
GROUP BY ALL
ORDER BY vocabulary, mode, variant, status;

-- name: alias_counts
-- Per (concept, alias) of a vocabulary's latest count (the concept's own name is an
-- alias of itself): samples a caption of which the alias matched, and those only this
-- alias matched (what the alias adds to the concept's count). Aliases of the vocabulary
-- and those applied at count time (`curate concepts count --aliases wordnet|FILE.tsv`);
-- an alias that never matched is not listed (--param vocabulary=imagenet1k).
-- defaults: mode=phrase
WITH h AS (
    SELECT DISTINCT uid, concept, alias FROM concept_alias_hits WHERE vocabulary = $vocabulary AND mode = $mode
),
per_sample AS (SELECT uid, concept, count(*) AS n_aliases FROM h GROUP BY ALL),
totals AS (SELECT concept, count(*) AS concept_samples FROM per_sample GROUP BY concept)
SELECT h.concept, h.alias, h.alias = h.concept AS is_name, count(*) AS samples,
       count(*) FILTER (WHERE p.n_aliases = 1) AS only_this_alias, any_value(t.concept_samples) AS concept_samples
FROM h JOIN per_sample p USING (uid, concept) JOIN totals t USING (concept)
GROUP BY h.concept, h.alias
ORDER BY h.concept, is_name DESC, samples DESC, h.alias;
