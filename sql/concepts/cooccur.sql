-- Concept co-occurrence: pairs of a vocabulary's concepts found together, from the
-- latest count of each vocabulary and mode (concept_hits) and, for matched pairs, the
-- image tags (concepts.image_tags). A pair is written once, concept_a < concept_b.
-- lift = count * n / (count_a * count_b), n being the captions (samples) counted: 1 when
-- the two occur independently, above 1 when they go together. `curate concepts cooccur`
-- prints the pairs and plots them.

-- name: cooccurrence
-- Pairs of concepts named in one caption (--param vocabulary=imagenet1k): captions and
-- samples with both, the captions naming each, and the lift over the captions counted.
-- defaults: mode=phrase, variant=
WITH h AS (
    SELECT DISTINCT caption_id, uid, concept FROM concept_hits
    WHERE vocabulary = $vocabulary AND mode = $mode AND ($variant = '' OR variant = $variant)
),
n AS (SELECT count(*) AS captions FROM concept_text_latest
      WHERE vocabulary = $vocabulary AND mode = $mode AND status = 'ok' AND ($variant = '' OR variant = $variant)),
per AS (SELECT concept, count(DISTINCT caption_id) AS captions FROM h GROUP BY concept),
pairs AS (
    SELECT a.concept AS concept_a, b.concept AS concept_b, count(DISTINCT a.caption_id) AS captions,
           count(DISTINCT a.uid) AS samples
    FROM h a JOIN h b ON a.caption_id = b.caption_id AND a.concept < b.concept
    GROUP BY ALL
)
SELECT p.concept_a, p.concept_b, p.captions, p.samples, pa.captions AS captions_a, pb.captions AS captions_b,
       round(p.captions * n.captions / (pa.captions * pb.captions), 3) AS lift
FROM pairs p JOIN per pa ON pa.concept = p.concept_a JOIN per pb ON pb.concept = p.concept_b CROSS JOIN n
ORDER BY p.captions DESC, p.concept_a, p.concept_b;

-- name: cooccurrence_matched
-- Pairs of concepts both matched in one sample: the image is tagged with each and a
-- caption names each (the paper's integrated count, per pair); samples with both, the
-- matched samples of each, and the lift over the samples with any matched concept.
-- defaults: k=5, min_score=0, mode=phrase, variant=
WITH m AS (SELECT uid, concept FROM {{concepts.matched_hits}}),
n AS (SELECT count(DISTINCT uid) AS samples FROM m),
per AS (SELECT concept, count(*) AS samples FROM m GROUP BY concept),
pairs AS (
    SELECT a.concept AS concept_a, b.concept AS concept_b, count(*) AS samples
    FROM m a JOIN m b ON a.uid = b.uid AND a.concept < b.concept
    GROUP BY ALL
)
SELECT p.concept_a, p.concept_b, p.samples, pa.samples AS samples_a, pb.samples AS samples_b,
       round(p.samples * n.samples / (pa.samples * pb.samples), 3) AS lift
FROM pairs p JOIN per pa ON pa.concept = p.concept_a JOIN per pb ON pb.concept = p.concept_b CROSS JOIN n
ORDER BY p.samples DESC, p.concept_a, p.concept_b;
