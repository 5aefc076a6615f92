-- name: exact_groups
-- Exact duplicates of variant $variant on normalised text, computed in SQL: the most
-- repeated normal forms, with how many captions and distinct stored texts each has.
-- The normal form is the SQL twin of curate.dedup.normalize (NFC, lower case,
-- punctuation/symbols/spaces/controls to one space, trimmed); unlike the Python form it
-- does not fold NFKC compatibility characters (fullwidth letters, ligatures).
-- Captions with no words after normalisation are left out.
WITH n AS (
    SELECT uid, text,
           trim(regexp_replace(lower(nfc_normalize(text)), '[\pP\pS\pZ\pC]+', ' ', 'g')) AS norm
    FROM captions
    WHERE variant = $variant
)
SELECT norm, count(*) AS captions, count(DISTINCT text) AS distinct_texts, count(DISTINCT uid) AS samples,
       list(DISTINCT text ORDER BY text)[1:3] AS examples
FROM n
WHERE norm <> ''
GROUP BY norm
HAVING count(*) > 1
ORDER BY captions DESC, norm
LIMIT 100;

-- name: exact_groups_across
-- Normal forms (SQL twin, as in dedup.exact_groups) shared by captions of two or more
-- variants: the same text written as raw alt-text and as a synthetic caption, say.
WITH n AS (
    SELECT variant, text,
           trim(regexp_replace(lower(nfc_normalize(text)), '[\pP\pS\pZ\pC]+', ' ', 'g')) AS norm
    FROM captions
)
SELECT norm, count(*) AS captions, count(DISTINCT variant) AS variants,
       list(DISTINCT variant ORDER BY variant) AS variant_list, min(text) AS example
FROM n
WHERE norm <> ''
GROUP BY norm
HAVING count(DISTINCT variant) > 1
ORDER BY captions DESC, norm
LIMIT 100;

-- name: normal_forms
-- Every caption with its SQL normal form (NFC, lower case, punctuation and symbols as
-- spaces; the SQL twin of curate/dedup/normalize.py, which says where the two differ).
-- The exact-repetition and distinct-count queries read it.
SELECT variant, text,
       trim(regexp_replace(lower(nfc_normalize(text)), '[\pP\pS\pZ\pC]+', ' ', 'g')) AS norm
FROM captions;

-- name: exact_repetition
-- Exact repetition per variant in plain SQL (no dedup run needed): captions, distinct
-- stored texts, distinct normal forms (SQL twin), and the share of captions that repeat
-- an earlier one exactly: 1 - distinct / analysed. Captions with no words after
-- normalisation are counted in no_words and left out of the rates.
SELECT variant,
       count(*) AS captions,
       count(*) FILTER (WHERE norm = '') AS no_words,
       count(DISTINCT text) AS distinct_texts,
       count(DISTINCT norm) FILTER (WHERE norm <> '') AS distinct_normalised,
       round(1 - count(DISTINCT text) / count(*), 4) AS raw_rate,
       round(1 - (count(DISTINCT norm) FILTER (WHERE norm <> ''))
                 / nullif(count(*) FILTER (WHERE norm <> ''), 0), 4) AS exact_rate
FROM {{dedup.normal_forms}} n
GROUP BY variant
ORDER BY variant;

-- name: distinct
-- Distinct captions per variant in plain SQL: exact counts and DuckDB's HyperLogLog
-- estimate (approx_count_distinct), of the stored text and of its SQL normal form (NFC,
-- lower case, punctuation and symbols as spaces; see curate/dedup/normalize.py).
-- `curate dedup distinct` is the datasketch-compatible HyperLogLog of the Python
-- normal form (NFKC) with a chosen precision, and is the one to trust: DuckDB's estimate
-- is coarser (6.9% high at 9,939 distinct texts in the test corpus, where curate's p = 14
-- sketch is within 0.8%); this query is what any DuckDB client gets without curate.
SELECT variant,
       count(*) AS captions,
       count(DISTINCT text) AS distinct_text,
       approx_count_distinct(text) AS approx_distinct_text,
       count(DISTINCT norm) FILTER (WHERE norm <> '') AS distinct_normalised,
       approx_count_distinct(norm) FILTER (WHERE norm <> '') AS approx_distinct_normalised
FROM {{dedup.normal_forms}} n
GROUP BY variant
ORDER BY variant;

-- name: repetition
-- Repetition rate per variant from the latest caption dedup run covering it
-- (`curate dedup captions`): the share of analysed captions that duplicate another
-- caption of the scope exactly (same normal form) and exactly-or-nearly (a non-kept
-- member of a duplicate group at the run's threshold). scope '*' is a run across variants.
WITH latest AS (
    SELECT s.scope, max(s.run_id) AS run_id
    FROM dedup_summary s JOIN runs r USING (run_id)
    WHERE s.kind = 'caption_text' AND r.status = 'ok'
    GROUP BY s.scope
)
SELECT s.scope, s.items AS captions, s.skipped, s.distinct_items AS distinct_normalised,
       s.exact_removed, round(s.exact_rate, 4) AS exact_rate,
       s.groups, s.removed, round(s.near_rate, 4) AS near_rate,
       s.threshold, s.run_id
FROM dedup_summary s JOIN latest l USING (scope, run_id)
WHERE s.kind = 'caption_text'
ORDER BY s.scope = '*', s.scope;

-- name: groups
-- The largest duplicate groups of scope $scope (a variant, or '*') in the latest caption
-- dedup run covering it: the kept caption, the methods that joined members, the lowest
-- similarity to the kept member, and other member texts.
WITH latest AS (
    SELECT max(run_id) AS run_id FROM dedup_summary WHERE kind = 'caption_text' AND scope = $scope
),
m AS (
    SELECT g.group_id, g.group_size, g.kept, g.similarity, g.method, c.text
    FROM dedup_groups g
    JOIN latest l ON g.run_id = l.run_id
    JOIN captions c ON c.caption_id = g.member_id
    WHERE g.kind = 'caption_text' AND g.member_kind = 'caption_id' AND g.scope = $scope
)
SELECT group_id, any_value(group_size) AS members,
       any_value(text) FILTER (WHERE kept) AS kept_text,
       list(DISTINCT method ORDER BY method) AS methods,
       round(min(similarity), 3) AS min_similarity,
       list(text ORDER BY similarity DESC, text) FILTER (WHERE NOT kept)[1:3] AS other_texts
FROM m
GROUP BY group_id
ORDER BY members DESC, group_id
LIMIT 100;

-- name: members
-- Every member of group $group_id of dedup run $run_id, with its caption text, variant,
-- similarity to the kept member and how it was matched.
SELECT g.group_id, g.kept, round(g.similarity, 4) AS similarity, g.method, c.variant, c.text, g.member_id
FROM dedup_groups g JOIN captions c ON c.caption_id = g.member_id
WHERE g.kind = 'caption_text' AND g.member_kind = 'caption_id'
  AND g.run_id = $run_id AND g.group_id = $group_id
ORDER BY g.kept DESC, g.similarity DESC, c.text;
