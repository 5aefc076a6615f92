-- name: tables
-- Rows per table of the store.
SELECT table_name, estimated_size AS rows, column_count
FROM duckdb_tables()
WHERE schema_name = 'main'
ORDER BY table_name;

-- name: runs
-- The latest 50 runs (ingests and stages), newest first.
SELECT run_id, kind, stage, status, rows_in, rows_out, rows_rejected, round(seconds, 2) AS seconds,
       started_at, message
FROM runs
ORDER BY run_id DESC
LIMIT 50;

-- name: rejects
-- Rejected rows per source and reason, with one example row reference.
SELECT source, reason, count(*) AS rows, min(row_ref) AS example, any_value(detail) AS detail
FROM rejects
GROUP BY source, reason
ORDER BY source, rows DESC;

-- name: sources
-- Per source: samples, captions, caption variants, and how many samples have an image.
SELECT s.source, count(*) AS samples,
       (SELECT count(*) FROM captions c WHERE c.source = s.source) AS captions,
       (SELECT list(DISTINCT variant ORDER BY variant) FROM captions c WHERE c.source = s.source) AS variants,
       count(*) FILTER (WHERE image_shard IS NOT NULL OR image_path IS NOT NULL) AS with_image
FROM samples s
GROUP BY s.source
ORDER BY s.source;
