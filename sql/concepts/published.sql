-- name: published_summary
-- Zero-count share and median count per pretraining set and method over the paper's 17
-- zero-shot classification sets (3,168 distinct published concept strings): Udandarao et al.
-- 2024, imported by `curate concepts import-published`. median is interpolated (an even
-- number of concepts: YFCC15M's is 52.5); real-data.md prints it rounded half to even (52).
WITH classification(downstream) AS (
    SELECT unnest(['birdsnap', 'caltech101', 'caltech256', 'cifar10', 'cifar100', 'country211', 'cub',
                   'dtd', 'eurosat', 'fgvcaircraft', 'flowers102', 'food101', 'imagenet', 'oxfordpets',
                   'stanfordcars', 'sun397', 'ucf101'])
),
per_concept AS (   -- one count per distinct concept string: the first downstream set's, in file-name order
    SELECT pretrain, method, concept, arg_min(count, downstream || '_') AS count
    FROM published_concept_counts
    WHERE downstream IN (SELECT downstream FROM classification)
    GROUP BY pretrain, method, concept
)
SELECT
    pretrain,
    method,
    count(*) AS concepts,
    count(*) FILTER (WHERE count = 0) AS zero_count,
    round(100.0 * count(*) FILTER (WHERE count = 0) / count(*), 1) AS zero_pct,
    quantile_cont(count, 0.5) AS median,
    round(avg(count), 1) AS mean,
    max(count) AS max
FROM per_concept
GROUP BY pretrain, method
ORDER BY method, pretrain;

-- name: published_tables
-- The imported count tables: concepts and zero-count share per downstream set, pretraining set and method.
SELECT
    downstream,
    pretrain,
    method,
    count(*) AS concepts,
    round(100.0 * count(*) FILTER (WHERE count = 0) / count(*), 1) AS zero_pct,
    sum(count) AS total
FROM published_concept_counts
GROUP BY ALL
ORDER BY downstream, pretrain, method;

-- name: published_concept
-- Published counts of one concept across pretraining sets: text (lemmatized, lowercased),
-- image (RAM++ at 0.7) and integrated (text AND image at 0.7). The concept is matched
-- case-insensitively with `_` read as a space (the paper's own query normalisation).
-- defaults: concept=car
SELECT
    downstream,
    pretrain,
    any_value(concept) AS concept,
    max(count) FILTER (WHERE method = 'lemmatized') AS lemmatized,
    max(count) FILTER (WHERE method = 'lowercased') AS lowercased,
    max(count) FILTER (WHERE method = 'rampp0.7') AS rampp_07,
    max(count) FILTER (WHERE method = 'integrated_tlemmatized_i0.7') AS integrated_07
FROM published_concept_counts
WHERE lower(replace(concept, '_', ' ')) = lower(trim($concept))
GROUP BY downstream, pretrain
HAVING count(*) FILTER (WHERE method IN ('lemmatized', 'lowercased', 'rampp0.7', 'integrated_tlemmatized_i0.7')) > 0
ORDER BY downstream, lemmatized DESC NULLS LAST;

-- name: published_misalignment
-- Image-text misalignment degree per pretraining set (paper, Table 3), as a fraction and in percent.
SELECT
    pretrain,
    misaligned_samples,
    degree_conservative_size,
    round(100 * degree_conservative_size, 2) AS conservative_pct,
    round(100 * degree_extracted_size, 2) AS extracted_pct
FROM published_misalignment
ORDER BY pretrain;
