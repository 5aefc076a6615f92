-- name: vocabularies
-- Vocabularies in the concepts table: concepts, extra aliases (beyond the concept itself), the run that added them.
-- Add one with `curate concepts vocab add NAME SOURCE` (a bundled name or a TXT/CSV/TSV/JSON file).
SELECT
    vocabulary,
    count(DISTINCT concept) AS concepts,
    count(*) FILTER (WHERE alias <> concept) AS extra_aliases,
    max(added_run) AS added_run
FROM concepts
GROUP BY vocabulary
ORDER BY vocabulary;

-- name: vocabulary
-- The concepts of one vocabulary with their aliases (the concept itself first).
SELECT
    concept,
    list(alias ORDER BY alias = concept DESC, alias) AS aliases
FROM concepts
WHERE vocabulary = $name
GROUP BY concept
ORDER BY concept;

-- name: shared_aliases
-- Aliases that belong to more than one concept of a vocabulary (each such alias counts for all of them).
SELECT
    vocabulary,
    lower(alias) AS alias,
    list(DISTINCT concept ORDER BY concept) AS concepts
FROM concepts
GROUP BY vocabulary, lower(alias)
HAVING count(DISTINCT concept) > 1
ORDER BY vocabulary, alias;
