-- How a generated caption was made (issue 15's generation stages fill it; NULL for a
-- caption that was ingested): backend, model id and weights' revision or hash, prompt
-- template name and hash, the rendered prompt's hash, sampling parameters, seed, input
-- caption ids, tokens in and out, finish reason, latency. `provenance` keeps the facts of
-- where a caption came from (input record and column, rewrite style, GBC vertex);
-- `generation` the facts of how a model wrote it.
ALTER TABLE captions ADD COLUMN generation JSON;
