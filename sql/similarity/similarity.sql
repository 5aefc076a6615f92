-- name: vector_sets
-- The registered embedding sets (curate vectors list): kind, model, dimension, rows.
SELECT name, kind, id_column, model, variant, dim, count, shards, source, run_id, created_at
FROM vector_sets
ORDER BY name;

-- name: groups_summary
-- Duplicate groups of images and caption embeddings per kind (image_semantic,
-- image_near, image_exact, text_*), scope and config, from the latest run of each
-- config: groups, members, duplicates (members not kept), mean and lowest similarity
-- to the kept member, largest group. Caption dedup's kinds are in dedup.repetition.
WITH latest AS (
    SELECT kind, config_hash, max(run_id) AS run_id
    FROM dedup_groups WHERE member_kind = 'uid' OR kind LIKE 'text\_%' ESCAPE '\'
    GROUP BY ALL
)
SELECT g.kind, g.scope, count(*) FILTER (WHERE g.kept) AS groups, count(*) AS members,
       count(*) FILTER (WHERE NOT g.kept) AS duplicates,
       round(avg(g.similarity) FILTER (WHERE NOT g.kept), 4) AS mean_similarity,
       round(min(g.similarity), 4) AS min_similarity, max(g.group_size) AS largest,
       any_value(r.config ->> '$.config.keep') AS keep, g.config_hash, g.run_id
FROM dedup_groups g JOIN latest l USING (kind, config_hash, run_id) JOIN runs r USING (run_id)
GROUP BY g.kind, g.scope, g.config_hash, g.run_id
ORDER BY g.kind, g.scope, g.run_id;

-- name: groups
-- The largest groups of kind $kind (image_semantic, image_near, image_exact) in its
-- latest run: the kept uid and url, members, lowest similarity, other urls.
WITH latest AS (SELECT max(run_id) AS run_id FROM dedup_groups WHERE kind = $kind),
m AS (
    SELECT g.group_id, g.group_size, g.kept, g.similarity, g.member_id, s.url
    FROM dedup_groups g JOIN latest l USING (run_id) LEFT JOIN samples s ON s.uid = g.member_id
    WHERE g.kind = $kind
)
SELECT group_id, any_value(group_size) AS members,
       any_value(member_id) FILTER (WHERE kept) AS kept_uid,
       any_value(url) FILTER (WHERE kept) AS kept_url,
       round(min(similarity), 4) AS min_similarity,
       list(url ORDER BY similarity DESC, member_id) FILTER (WHERE NOT kept)[1:3] AS other_urls
FROM m
GROUP BY group_id
ORDER BY members DESC, group_id
LIMIT 100;

-- name: merged_captions
-- Caption-aware merge preview: per variant, the captions of non-kept duplicates (latest
-- run of kind $kind) that would join their kept sample; already_on_kept: those whose text
-- the kept sample has in the variant or in its merged variant (variant || $suffix, from an
-- earlier merge); new_for_kept: exactly what `curate similarity merge-captions --suffix
-- $suffix` adds (a text several duplicates of one kept sample share joins it once). From
-- the duplicate_captions view; captions itself is never changed.
-- defaults: kind=image_semantic, suffix=_dup
WITH latest AS (SELECT max(run_id) AS run_id FROM dedup_groups WHERE kind = $kind),
d AS (
    SELECT d.*, d.already_on_kept OR EXISTS (
               SELECT 1 FROM captions o WHERE o.uid = d.kept_uid AND o.variant = d.variant || $suffix AND o.text = d.text
           ) AS on_kept
    FROM duplicate_captions d JOIN latest USING (run_id)
    WHERE d.kind = $kind
)
SELECT variant, count(*) AS captions, count(DISTINCT duplicate_uid) AS duplicate_samples,
       count(DISTINCT kept_uid) AS kept_samples, count(*) FILTER (WHERE on_kept) AS already_on_kept,
       count(DISTINCT [kept_uid::VARCHAR, text]) FILTER (WHERE NOT on_kept) AS new_for_kept
FROM d
GROUP BY variant
ORDER BY captions DESC, variant;

-- name: placeholders
-- Placeholder images from the latest `curate similarity exact` run: one sha256 behind
-- many distinct URLs (a host's "image unavailable" picture), with samples, URLs, hosts.
SELECT sha256, samples, urls, hosts, top_host, example_url, run_id
FROM image_placeholders
WHERE run_id = (SELECT max(run_id) FROM image_placeholders)
ORDER BY samples DESC, sha256;

-- name: sha256_repeats
-- Exact image repetition straight from samples.sha256 (no run needed): samples with a
-- hash, distinct hashes, samples whose bytes another sample has, the most shared hash.
SELECT count(sha256) AS samples_with_sha256, count(DISTINCT sha256) AS distinct_sha256,
       count(sha256) - count(DISTINCT sha256) AS repeats,
       (SELECT max(n) FROM (SELECT count(*) AS n FROM samples WHERE sha256 IS NOT NULL GROUP BY sha256)) AS most_shared
FROM samples;

-- name: tags_per_concept
-- Zero-shot tags of the latest tagging run: per concept, images tagged at rank 1 and in
-- the top k, and the mean score at rank 1.
WITH latest AS (SELECT max(run_id) AS run_id FROM concept_tags)
SELECT concept, count(*) FILTER (WHERE rank = 1) AS top1_images, count(*) AS topk_images,
       round(avg(score) FILTER (WHERE rank = 1), 4) AS mean_top1_score
FROM concept_tags JOIN latest USING (run_id)
GROUP BY concept
ORDER BY top1_images DESC, topk_images DESC, concept
LIMIT 100;

-- name: target_summary
-- Target-distribution filter runs: clusters, clusters chosen by the reference set,
-- samples selected and their share.
SELECT set_name, reference_set, run_id, count(DISTINCT cluster) AS clusters,
       count(DISTINCT cluster) FILTER (WHERE selected) AS clusters_selected,
       count(*) AS samples, count(*) FILTER (WHERE selected) AS selected,
       round(count(*) FILTER (WHERE selected) / count(*), 4) AS selected_share
FROM target_selection
GROUP BY ALL
ORDER BY run_id DESC;
