-- CLIP score queries over the stage clip.score.v1 (`curate embed`). They read the view
-- clip_scores_latest: the rows of the most recent configuration run of each model
-- (clip_scores itself holds every configuration). Scores are cosine similarities of
-- L2-normalised image and text embeddings; captions whose image failed have no score.

-- name: score_histogram
-- Histogram of CLIP scores per model and caption variant: `bins` equal-width bins
-- between the lowest and highest score of each model and variant.
-- defaults: bins=20
WITH s AS (
    SELECT model, variant, score,
           min(score) OVER (PARTITION BY model, variant) AS lo,
           max(score) OVER (PARTITION BY model, variant) AS hi
    FROM clip_scores_latest
    WHERE status = 'ok'
),
binned AS (
    SELECT model, variant, lo, hi,
           least(CAST(floor((score - lo) / nullif(hi - lo, 0) * CAST($bins AS INTEGER)) AS INTEGER),
                 CAST($bins AS INTEGER) - 1) AS bin
    FROM s
)
SELECT model, variant, coalesce(bin, 0) AS bin,
       round(any_value(lo) + coalesce(bin, 0) * (any_value(hi) - any_value(lo)) / CAST($bins AS INTEGER), 4) AS bin_from,
       round(any_value(lo) + (coalesce(bin, 0) + 1) * (any_value(hi) - any_value(lo)) / CAST($bins AS INTEGER), 4) AS bin_to,
       count(*) AS n
FROM binned
GROUP BY model, variant, bin
ORDER BY model, variant, bin;

-- name: by_variant
-- Score summary per model and caption variant: captions, scored captions, mean and
-- quantiles (p10, median, p90) of the score.
SELECT model, variant, count(*) AS captions, count(score) AS scored,
       round(avg(score), 4) AS mean,
       round(quantile_cont(score, 0.1), 4) AS p10,
       round(median(score), 4) AS median,
       round(quantile_cont(score, 0.9), 4) AS p90
FROM clip_scores_latest
GROUP BY model, variant
ORDER BY model, variant;

-- name: threshold_for_fraction
-- The score threshold that keeps the top `fraction` of the scored captions of each
-- model and variant (DataComp's "top 30%": fraction=0.3). As in DataComp's
-- baselines/apply_filter.py (get_threshold), the threshold is the n-th highest score
-- with n = floor(fraction * scored); a caption is kept when score >= threshold, so ties
-- at the threshold are all kept (`kept` counts them).
-- defaults: fraction=0.3
WITH ranked AS (
    SELECT model, variant, score,
           row_number() OVER (PARTITION BY model, variant ORDER BY score DESC) AS rank,
           count(*) OVER (PARTITION BY model, variant) AS scored
    FROM clip_scores_latest
    WHERE status = 'ok'
),
thresholds AS (
    SELECT model, variant, any_value(scored) AS scored,
           max(score) FILTER (rank = CAST(floor(CAST($fraction AS DOUBLE) * scored) AS BIGINT)) AS threshold
    FROM ranked
    GROUP BY model, variant
)
SELECT t.model, t.variant, CAST($fraction AS DOUBLE) AS fraction, t.scored, t.threshold,
       (SELECT count(*) FROM ranked r WHERE r.model = t.model AND r.variant = t.variant
                                        AND r.score >= t.threshold) AS kept
FROM thresholds t
ORDER BY t.model, t.variant;

-- name: status
-- Captions per model and status (ok, or why the image has no embedding: no image,
-- image not found, unreadable shard, undecodable), with one example detail.
SELECT model, status, count(*) AS captions, count(DISTINCT uid) AS samples, any_value(detail) AS example
FROM clip_scores_latest
GROUP BY model, status
ORDER BY model, captions DESC;
