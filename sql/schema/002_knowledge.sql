-- Knowledge scoring: the text normalisation behind entity retention and hallucination
-- (curate/knowledge/normalize.py documents it and holds the Python twin; they are
-- tested equal on real captions). The stage knowledge.spacy_ner.v1 creates its own
-- table (caption_knowledge) and views (caption_entities) when it first runs.

CREATE OR REPLACE MACRO curate_norm(t) AS trim(regexp_replace(
    regexp_replace(lower(strip_accents(t)), '[''’]s([^\pL\pN]|$)', '\1', 'g'),
    '[^\pL\pN]+', ' ', 'g'));

CREATE OR REPLACE MACRO curate_norm_entity(t) AS
    CASE WHEN starts_with(curate_norm(t), 'the ') AND length(curate_norm(t)) > 4
         THEN substr(curate_norm(t), 5) ELSE curate_norm(t) END;

-- Whether normalised phrase p occurs as whole words in normalised text t.
CREATE OR REPLACE MACRO curate_occurs(p, t) AS
    length(p) > 0 AND contains(' ' || t || ' ', ' ' || p || ' ');
