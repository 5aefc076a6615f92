-- name: duplicate_uids
-- Samples must be unique by uid (ingest anti-joins; no PRIMARY KEY, see ARCHITECTURE.md).
SELECT uid, count(*) AS n FROM samples GROUP BY uid HAVING count(*) > 1;

-- name: duplicate_caption_ids
-- Captions must be unique by caption_id.
SELECT caption_id, count(*) AS n FROM captions GROUP BY caption_id HAVING count(*) > 1;

-- name: orphan_captions
-- Every caption belongs to a sample.
SELECT c.caption_id, c.uid FROM captions c ANTI JOIN samples s USING (uid);

