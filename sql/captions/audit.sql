-- name: counts
-- Samples and caption rows per source and caption variant, with the share of the
-- source's samples that carry the variant.
WITH per_variant AS (
    SELECT source, variant, count(*) AS captions, count(DISTINCT uid) AS samples_with_variant
    FROM captions
    GROUP BY source, variant
),
per_source AS (
    SELECT source, count(*) AS samples FROM samples GROUP BY source
)
SELECT v.source, v.variant, s.samples, v.captions, v.samples_with_variant,
       round(v.samples_with_variant / s.samples, 4) AS coverage
FROM per_variant v JOIN per_source s USING (source)
ORDER BY v.source, v.variant;

-- name: lengths
-- Caption length per source and variant, in words (whitespace-separated, as Python's
-- str.split) and characters: mean and quantiles. Reads the caption_stats attribute table written by the stage
-- text.caption_stats.v1 (run it first: `curate run pipelines/demo.toml`).
WITH s AS (
    SELECT c.source, c.variant, st.words, st.chars
    FROM captions c JOIN caption_stats st USING (caption_id)
    WHERE st.stage = 'text.caption_stats.v1'
)
SELECT source, variant,
       count(*) AS captions,
       round(avg(words), 2) AS mean_words,
       quantile_cont(words, 0.1) AS p10_words,
       median(words) AS median_words,
       quantile_cont(words, 0.9) AS p90_words,
       max(words) AS max_words,
       round(avg(chars), 1) AS mean_chars,
       median(chars) AS median_chars,
       quantile_cont(chars, 0.9) AS p90_chars,
       max(chars) AS max_chars
FROM s
GROUP BY source, variant
ORDER BY source, variant;

-- name: duplicate_summary
-- Exact duplicate captions per variant: how many caption rows share their text with
-- another caption of the same variant (text compared as stored; the caption-dedup
-- stage normalises case and punctuation).
WITH g AS (
    SELECT variant, text, count(*) AS n FROM captions GROUP BY variant, text
)
SELECT variant,
       sum(n) AS captions,
       count(*) AS distinct_texts,
       count(*) FILTER (WHERE n > 1) AS duplicated_texts,
       coalesce(sum(n) FILTER (WHERE n > 1), 0) AS rows_in_duplicate_groups,
       round(1 - count(*) / sum(n), 4) AS duplicate_rate
FROM g
GROUP BY variant
ORDER BY variant;

-- name: exact_duplicates
-- The most repeated caption texts of one variant, with how many samples carry each.
SELECT text, count(*) AS n, count(DISTINCT uid) AS samples, list(DISTINCT source) AS sources
FROM captions
WHERE variant = $variant
GROUP BY text
HAVING count(*) > 1
ORDER BY n DESC, text
LIMIT 100;

-- name: short
-- Captions with at most $max_words whitespace-separated words (empty ones are never
-- stored: ingest rejects them), per source and variant, with examples.
SELECT source, variant, count(*) AS captions, list(text ORDER BY text)[1:5] AS examples
FROM captions
WHERE len(string_split_regex(trim(text), '\s+')) <= $max_words
GROUP BY source, variant
ORDER BY captions DESC;

-- name: missing_variant
-- Samples that have no caption of variant $variant, per source.
SELECT s.source, count(*) AS samples_missing, any_value(s.uid) AS example_uid
FROM samples s
WHERE NOT EXISTS (SELECT 1 FROM captions c WHERE c.uid = s.uid AND c.variant = $variant)
GROUP BY s.source
ORDER BY s.source;
