-- The system of record: samples, caption variants, runs and rejects.
-- Rows in samples and captions are immutable once written; scorers write attribute
-- tables beside them (keyed by uid or caption_id), never these two.

CREATE SEQUENCE IF NOT EXISTS run_id_seq START 1;

CREATE TABLE runs (
    run_id       BIGINT PRIMARY KEY,
    kind         VARCHAR NOT NULL,          -- 'ingest' or 'stage'
    stage        VARCHAR NOT NULL,          -- registry name, e.g. text.caption_stats.v1 or ingest.capsfusion
    config       JSON NOT NULL,             -- the resolved configuration
    config_hash  VARCHAR NOT NULL,
    status       VARCHAR NOT NULL,          -- running | ok | failed | interrupted
    rows_in      BIGINT DEFAULT 0,
    rows_out     BIGINT DEFAULT 0,
    rows_rejected BIGINT DEFAULT 0,
    seconds      DOUBLE,
    started_at   TIMESTAMP NOT NULL,
    finished_at  TIMESTAMP,
    curate_version VARCHAR NOT NULL,
    message      VARCHAR
);

CREATE TABLE samples (
    uid          UUID NOT NULL,             -- stable id, see curate/ids.py
    source       VARCHAR NOT NULL,          -- the name given at ingest
    url          VARCHAR,
    image_shard  VARCHAR,                   -- img2dataset shard (tar or parquet) holding the image
    image_key    VARCHAR,                   -- img2dataset key inside the shard
    image_path   VARCHAR,                   -- a plain image file
    sha256       VARCHAR,
    width        INTEGER,
    height       INTEGER,
    extra        JSON,                      -- the source's other columns, kept as they came
    run_id       BIGINT NOT NULL            -- the ingest run that wrote it (runs.config has the input)
);

CREATE TABLE captions (
    caption_id   UUID NOT NULL,             -- md5 of (uid, variant, text), see curate/ids.py
    uid          UUID NOT NULL,
    variant      VARCHAR NOT NULL,          -- raw, synthetic, fused, rewrite, human, gbc_*, ... (open)
    text         VARCHAR NOT NULL,
    generator    VARCHAR,                   -- model or process that wrote it (alt-text, BLIP, LLM, ...)
    provenance   JSON,                      -- variant-specific facts: rewrite style, GBC vertex id, COCO id
    source       VARCHAR NOT NULL,
    run_id       BIGINT NOT NULL
);

CREATE TABLE rejects (
    run_id       BIGINT NOT NULL,
    source       VARCHAR NOT NULL,
    row_ref      VARCHAR,                   -- file:row, file:line or shard:key
    reason       VARCHAR NOT NULL,          -- a short fixed phrase (group by it)
    detail       VARCHAR,                   -- the specifics
    record       VARCHAR                    -- the offending record, truncated to 1000 characters
);

-- img2dataset outcomes for every input row, successes and failures alike.
CREATE TABLE downloads (
    uid          UUID NOT NULL,
    source       VARCHAR NOT NULL,
    url          VARCHAR,
    shard        VARCHAR,
    key          VARCHAR,
    status       VARCHAR,
    error_message VARCHAR,
    width        INTEGER,
    height       INTEGER,
    original_width INTEGER,
    original_height INTEGER,
    sha256       VARCHAR,
    exif         VARCHAR,
    run_id       BIGINT NOT NULL
);

CREATE TABLE download_shards (
    source       VARCHAR NOT NULL,
    shard        VARCHAR NOT NULL,
    stats        JSON,
    run_id       BIGINT NOT NULL
);
