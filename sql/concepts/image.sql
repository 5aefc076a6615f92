-- Image and matched concept frequency (Udandarao et al. 2024, section 2), from the
-- zero-shot tags in concept_tags (`curate concepts image-count` or `curate similarity
-- tag`) and the text hits in concept_hits (`curate concepts count`). An image has a
-- concept when the concept is among its top $k tags of the latest tagging run of
-- ($iset, $cset) with a score of at least $min_score. $variant '' means captions of any
-- variant.

-- name: image_tags
-- (uid, concept) of every tagged image: the image side of the image and matched counts.
-- defaults: k=5, min_score=0
SELECT DISTINCT t.uid, t.concept FROM concept_tags t
WHERE t.set_name = $iset AND t.concept_set = $cset AND t.rank <= $k::INTEGER AND t.score >= $min_score::DOUBLE
  AND t.config_hash = (SELECT arg_max(config_hash, run_id) FROM concept_tags
                       WHERE set_name = $iset AND concept_set = $cset)
ORDER BY t.uid, t.concept;

-- name: matched_hits
-- (uid, concept) of every sample whose image is tagged with the concept and one of whose
-- captions (of $variant) names it: the paper's "integrated" frequency, per sample.
-- defaults: k=5, min_score=0, mode=phrase, variant=
SELECT DISTINCT i.uid, i.concept
FROM {{concepts.image_tags}} i
SEMI JOIN concept_hits h ON h.uid = i.uid AND h.concept = i.concept
    AND h.vocabulary = $vocabulary AND h.mode = $mode AND ($variant = '' OR h.variant = $variant)
ORDER BY i.uid, i.concept;

-- name: image_counts
-- Per concept of $vocabulary (zeros included): samples whose captions name it (text),
-- images tagged with it (image), and both at once (matched).
-- defaults: k=5, min_score=0, mode=phrase, variant=
WITH vocab AS (SELECT DISTINCT concept FROM concepts WHERE vocabulary = $vocabulary),
txt AS (SELECT concept, count(DISTINCT uid) AS n FROM concept_hits
        WHERE vocabulary = $vocabulary AND mode = $mode AND ($variant = '' OR variant = $variant)
        GROUP BY concept),
img AS (SELECT concept, count(*) AS n FROM {{concepts.image_tags}} GROUP BY concept),
mat AS (SELECT concept, count(*) AS n FROM {{concepts.matched_hits}} GROUP BY concept)
SELECT v.concept, coalesce(txt.n, 0)::BIGINT AS text, coalesce(img.n, 0)::BIGINT AS image,
       coalesce(mat.n, 0)::BIGINT AS matched
FROM vocab v LEFT JOIN txt USING (concept) LEFT JOIN img USING (concept) LEFT JOIN mat USING (concept)
ORDER BY matched DESC, image DESC, text DESC, v.concept;

-- name: misalignment
-- The image-text misalignment degree (paper, Table 3; src/misalignment_degree_quantification.py):
-- a sample is misaligned when its image has a concept and its captions name one, but none
-- of the image's concepts is named. degree_extracted divides by the larger of the samples
-- with an image concept and those with a text concept (the paper's "extracted dataset
-- size"), degree_conservative by all samples (its "fixed conservative dataset size", the
-- figure of Table 3), share_of_both by the samples with both.
-- defaults: k=5, min_score=0, mode=phrase, variant=
WITH img AS (SELECT * FROM {{concepts.image_tags}}),
txt AS (SELECT DISTINCT uid, concept FROM concept_hits
        WHERE vocabulary = $vocabulary AND mode = $mode AND ($variant = '' OR variant = $variant)),
both_ AS (SELECT uid FROM img INTERSECT SELECT uid FROM txt),
met AS (SELECT DISTINCT uid FROM img SEMI JOIN txt USING (uid, concept)),
n AS (SELECT (SELECT count(*) FROM samples) AS samples,
             (SELECT count(DISTINCT uid) FROM img) AS samples_image,
             (SELECT count(DISTINCT uid) FROM txt) AS samples_text,
             (SELECT count(*) FROM both_) AS samples_both,
             (SELECT count(*) FROM both_ ANTI JOIN met USING (uid)) AS misaligned)
SELECT samples, samples_image, samples_text, samples_both, misaligned,
       misaligned / nullif(greatest(samples_image, samples_text), 0) AS degree_extracted,
       misaligned / nullif(samples, 0) AS degree_conservative,
       misaligned / nullif(samples_both, 0) AS share_of_both
FROM n;
