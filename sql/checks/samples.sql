-- name: duplicate_urls
-- A url has one sample per source: two uids for one url of a source are one image stored
-- twice (e.g. its uid written in another form and hashed as a foreign id). One row per
-- such (source, url), with how many samples it has; the same url in two sources is fine.
SELECT source, url, count(DISTINCT uid) AS samples
FROM samples
WHERE url IS NOT NULL
GROUP BY source, url
HAVING count(DISTINCT uid) > 1
ORDER BY samples DESC, source, url;
