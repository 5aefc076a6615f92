"""Concept text frequency: which concepts of a vocabulary each caption names
(``concepts.text_match.v1``).

One row per caption and run configuration in ``caption_concepts``: the ``vocabulary``
and ``mode``, a ``status`` (``ok``, ``empty``, ``too long``, ``error``), the matched
``concepts`` (sorted, distinct), ``n_concepts``, the (concept, alias) pairs that matched
(``matched``) and, in mode ``paper``, the caption's index keys that are query words of
the vocabulary (``words``).

Modes (:mod:`curate.concepts.lemma`, :mod:`curate.concepts.match`):

* ``phrase`` (default): adjacent noun lemmas in order.
* ``paper``: the text search of Udandarao et al. 2024 as their code runs it. Query words
  are made per word (``golf-ball`` -> ``ball``), captions are indexed by the letters of
  their NOUN/PROPN lemmas, and **query words that no caption of the index has are
  dropped** from the AND. That last rule needs the whole index, so it is applied in
  SQL, not per caption: the index is every counted caption of one source and variant (a
  pretraining set, in the paper's terms), the concepts' query words are in
  ``concept_queries`` (written when the run is prepared), and the view
  ``concept_paper_hits`` joins them. In this mode ``concepts`` holds the concepts whose
  every query word the caption has (hits under any index); ``concept_hits`` adds those
  whose missing words no caption of the index has.
* ``nouns``: the strict AND of the earlier ``paper`` mode: every word of the concept,
  lemmatised in context and split at hyphens, among the caption's NOUN/PROPN lemmas.

Views: ``concept_alias_hits`` has one row per (caption, concept, alias) of the latest
configuration run of each vocabulary and mode, ``concept_hits`` one per (caption,
concept), both with the caption's ``uid``, ``source`` and ``variant``;
``sql/concepts/text.sql`` counts them (zeros included) per vocabulary, source and variant.

The vocabulary comes from the store's ``concepts`` table (``curate concepts vocab add``;
a bundled vocabulary is added on first use); ``aliases`` adds a synonym list at count
time (:mod:`curate.concepts.aliases`). The content of both is part of the configuration
hash, so editing either and counting again writes a new result beside the old one.
Each distinct caption text of a batch is processed once, and captions are fed in text
order.

**Config hashes.** ``aliases`` and ``alias_hash`` enter the configuration only when
aliases are given, so phrase-mode counts made before them keep their hash. Mode
``paper`` carries ``paper_rules = 2`` (its rules changed when it became faithful to the
paper's code): its earlier rows are not read, and ``curate concepts count --mode paper``
counts again (``--mode nouns`` is the earlier behaviour).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa

from ..attributes import Attribute
from ..concepts.match import MODES as MODES
from ..errors import ConfigError
from ..knowledge.ner import DEFAULT_MODEL
from .base import Stage

if TYPE_CHECKING:
    from ..store import Store

#: the version of mode paper's rules, in its configuration (see the module doc)
PAPER_RULES = 2

QUERIES_DDL = """CREATE TABLE IF NOT EXISTS concept_queries (
    vocabulary  VARCHAR NOT NULL,
    config_hash VARCHAR NOT NULL,   -- of the concepts.text_match.v1 run whose query words these are
    concept     VARCHAR NOT NULL,
    alias       VARCHAR NOT NULL,
    word        VARCHAR NOT NULL
)"""

MATCHED_TYPE = pa.list_(pa.struct([("concept", pa.string()), ("alias", pa.string())]))
#: columns added after the first release of the table (added to an older table by prepare)
ADDED_COLUMNS = {"words": "VARCHAR[]", "matched": "STRUCT(concept VARCHAR, alias VARCHAR)[]"}

#: mode paper: the drop rule over the index of each source and variant
PAPER_HITS_VIEW = """
CREATE OR REPLACE VIEW concept_paper_hits AS
WITH r AS (
    SELECT caption_id, uid, source, variant, vocabulary, config_hash, words
    FROM concept_text_latest WHERE mode = 'paper' AND words IS NOT NULL
),
cw AS (
    SELECT r.caption_id, r.uid, r.source, r.variant, r.vocabulary, r.config_hash, w.word
    FROM r, unnest(r.words) AS w(word)
),
idx AS (SELECT DISTINCT vocabulary, config_hash, source, variant, word FROM cw),
eff AS (   -- each concept's query words that the index has
    SELECT i.vocabulary, i.config_hash, i.source, i.variant, q.concept, q.alias, q.word
    FROM concept_queries q
    JOIN idx i ON i.vocabulary = q.vocabulary AND i.config_hash = q.config_hash AND i.word = q.word
),
need AS (SELECT vocabulary, config_hash, source, variant, concept, alias, count(*) AS n FROM eff GROUP BY ALL),
got AS (
    SELECT cw.caption_id, cw.uid, cw.source, cw.variant, cw.vocabulary, cw.config_hash, e.concept, e.alias,
           count(*) AS n
    FROM cw JOIN eff e ON e.vocabulary = cw.vocabulary AND e.config_hash = cw.config_hash
        AND e.source = cw.source AND e.variant = cw.variant AND e.word = cw.word
    GROUP BY ALL
)
SELECT g.caption_id, g.uid, g.source, g.variant, g.vocabulary, 'paper' AS mode, g.concept, g.alias
FROM got g JOIN need n USING (vocabulary, config_hash, source, variant, concept, alias)
WHERE g.n = n.n
"""

#: One row per (caption, concept, alias) of concept_text_latest (the latest configuration
#: run per vocabulary and mode); rows written before aliases were recorded count as the
#: concept's own name.
ALIAS_HITS_VIEW = """
CREATE OR REPLACE VIEW concept_alias_hits AS
SELECT r.caption_id, r.uid, r.source, r.variant, r.vocabulary, r.mode, u.m.concept AS concept, u.m.alias AS alias
FROM concept_text_latest r, unnest(r.matched) AS u(m)
WHERE r.mode <> 'paper'
UNION ALL
SELECT r.caption_id, r.uid, r.source, r.variant, r.vocabulary, r.mode, u.concept, u.concept AS alias
FROM concept_text_latest r, unnest(r.concepts) AS u(concept)
WHERE r.mode <> 'paper' AND r.matched IS NULL
UNION ALL
SELECT * FROM concept_paper_hits
"""

#: One row per (caption, concept) of concept_text_latest.
HITS_VIEW = """
CREATE OR REPLACE VIEW concept_hits AS
SELECT r.caption_id, r.uid, r.source, r.variant, r.vocabulary, r.mode, u.concept
FROM concept_text_latest r, unnest(r.concepts) AS u(concept)
WHERE r.mode <> 'paper'
UNION ALL
SELECT DISTINCT caption_id, uid, source, variant, vocabulary, mode, concept FROM concept_paper_hits
"""


@dataclasses.dataclass(frozen=True)
class ConceptText(Stage):
    name: ClassVar[str] = "concepts.text_match"
    version: ClassVar[int] = 1
    reads: ClassVar[tuple[str, ...]] = ("text",)
    input_order: ClassVar[str | None] = "text"
    output_table: ClassVar[str] = "caption_concepts"
    output_schema: ClassVar[pa.Schema] = pa.schema([
        ("vocabulary", pa.string()), ("mode", pa.string()), ("status", pa.string()),
        ("concepts", pa.list_(pa.string())), ("n_concepts", pa.int32()),
        ("words", pa.list_(pa.string())), ("matched", MATCHED_TYPE),
    ])
    latest_view: ClassVar[str | None] = "concept_text_latest"
    latest_by: ClassVar[tuple[str, ...]] = ("vocabulary", "mode")
    views: ClassVar[tuple[str, ...]] = (PAPER_HITS_VIEW, ALIAS_HITS_VIEW, HITS_VIEW)
    attributes: ClassVar[tuple[Attribute, ...]] = (
        Attribute("n_concepts", "caption", "number", "concepts of a vocabulary the caption names",
                  sql="SELECT caption_id, count(*) AS value FROM concept_hits WHERE vocabulary = $vocabulary "
                      "AND mode = $mode GROUP BY caption_id",
                  default=0, params=("vocabulary", "mode"), latest="concept_hits (latest run per vocabulary and mode)"),
        Attribute("concept", "caption", "str", "a concept the caption names (op = or in)",
                  sql="SELECT caption_id, concept AS value FROM concept_hits WHERE vocabulary = $vocabulary "
                      "AND mode = $mode",
                  params=("vocabulary", "mode"), latest="concept_hits (latest run per vocabulary and mode)"),
    )
    produced_by: ClassVar[str | None] = ("the stage concepts.text_match.v1 "
                                         "(curate concepts count --vocabulary NAME)")

    #: a vocabulary in the store's concepts table, or a bundled one
    vocabulary: str = ""
    #: "phrase": adjacent noun lemmas in order (default); "paper": the text search of
    #: Udandarao et al. 2024 as their code runs it; "nouns": every word's lemma (in
    #: context) among the caption's NOUN/PROPN lemmas, no word dropped
    mode: Literal["phrase", "paper", "nouns"] = "phrase"
    #: spaCy pipeline whose English lemma tables (and tagger, for "paper" and "nouns") are used
    model: str = DEFAULT_MODEL
    max_chars: int = 20_000
    #: a synonym list applied at count time: "wordnet", "wordnet:DIR" or a TSV file
    #: (concept<TAB>alias); see curate.concepts.aliases
    aliases: str = ""
    #: filled from the store when the run starts (see ``prepare``): a hash of the
    #: vocabulary's (concept, alias) rows and of the applied aliases, and the rows
    #: themselves (not part of the config)
    vocab_hash: str = ""
    alias_hash: str = ""
    patterns: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)
    #: mode paper: (concept, alias, query words) of every pattern
    queries: tuple[tuple[str, str, tuple[str, ...]], ...] = dataclasses.field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.vocabulary:
            raise ValueError("vocabulary is required (a name from `curate concepts vocab list`)")
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, got {self.max_chars}")

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.pop("patterns")
        cfg.pop("queries")
        if not self.aliases:
            cfg.pop("aliases")
            cfg.pop("alias_hash")
        if self.mode == "paper":
            cfg["paper_rules"] = PAPER_RULES
        return cfg

    def preflight(self) -> None:
        from ..knowledge.ner import pipeline_components

        components = pipeline_components(self.model)
        if "lemmatizer" not in components:
            raise ConfigError(f"spaCy pipeline {self.model!r} has no 'lemmatizer' component")

    def prepare(self, store: Store) -> ConceptText:
        rows = _vocabulary_rows(store, self.vocabulary)
        digest = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]
        patterns = [(c, a) for c, a in rows]
        alias_hash = ""
        if self.aliases:
            from ..concepts.aliases import load_aliases

            entries: dict[str, list[str]] = {}
            for c, a in rows:
                entries.setdefault(c, []).append(a)
            aset = load_aliases(self.aliases, [(c, tuple(a)) for c, a in entries.items()])
            alias_hash = aset.digest
            patterns += aset.rows
        stage = dataclasses.replace(self, vocab_hash=digest, alias_hash=alias_hash, patterns=tuple(patterns))
        _upgrade_table(store)
        store.con.execute(QUERIES_DDL)
        if self.mode == "paper":
            from ..concepts.lemma import PaperIndexer

            idx = PaperIndexer(self.model)
            queries = tuple((c, a, tuple(idx.query_words(a))) for c, a in patterns)
            stage = dataclasses.replace(stage, queries=queries)
            _write_queries(store, stage.vocabulary, stage.config_hash(), queries)
        return stage

    def setup(self) -> None:
        from ..concepts.lemma import NounLemmatizer, PaperIndexer, PosLemmatizer
        from ..concepts.match import BagMatcher, PhraseMatcher

        if not self.patterns:
            raise ConfigError(f"{self.registry_name()}: no concepts loaded; the runner calls prepare(store) first")
        lem: NounLemmatizer | PosLemmatizer | PaperIndexer
        matcher: PhraseMatcher | BagMatcher
        if self.mode == "phrase":
            noun = NounLemmatizer(self.model)
            lem, matcher = noun, PhraseMatcher((c, noun.lemmas(a), a) for c, a in self.patterns)
        elif self.mode == "nouns":
            pos = PosLemmatizer(self.model)
            lem, matcher = pos, BagMatcher((c, pos.concept_words(a), a) for c, a in self.patterns)
        else:
            if not self.queries:
                raise ConfigError(f"{self.registry_name()}: no query words; the runner calls prepare(store) first")
            lem, matcher = PaperIndexer(self.model), BagMatcher((c, ws, a) for c, a, ws in self.queries)
            object.__setattr__(self, "_query_words", frozenset(w for _, _, ws in self.queries for w in ws))
        object.__setattr__(self, "_lem", lem)
        object.__setattr__(self, "_matcher", matcher)

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        texts = batch.column("text").to_pylist()
        unique = list(dict.fromkeys(t for t in texts if t is not None and t.strip() and len(t) <= self.max_chars))
        lem, matcher = self._lem, self._matcher  # type: ignore[attr-defined]
        words: dict[str, list[str]] = {}
        if self.mode == "phrase":
            found = dict(zip(unique, matcher.match_aliases(lem.many(unique))))
        elif self.mode == "nouns":
            found = dict(zip(unique, matcher.match_aliases(lem.noun_lemma_sets(unique))))
        else:
            keys = lem.keys(unique)
            found = dict(zip(unique, matcher.match_aliases(keys)))
            qw = self._query_words  # type: ignore[attr-defined]
            words = {t: sorted(k & qw) for t, k in zip(unique, keys)}
        status: list[str] = []
        concepts: list[list[str] | None] = []
        matched: list[list[dict[str, str]] | None] = []
        word_col: list[list[str] | None] = []
        paper = self.mode == "paper"
        for t in texts:
            if t is None or (t.strip() and len(t) > self.max_chars):
                status.append("error" if t is None else "too long")
                concepts.append(None); matched.append(None); word_col.append(None)  # noqa: E702
            elif not t.strip():
                status.append("empty"); concepts.append([])  # noqa: E702
                matched.append(None if paper else []); word_col.append([] if paper else None)  # noqa: E702
            else:
                labels = found[t]
                status.append("ok")
                concepts.append(sorted({c for c, _ in labels}))
                matched.append(None if paper else [{"concept": c, "alias": a} for c, a in labels])
                word_col.append(words[t] if paper else None)
        n = batch.num_rows
        return pa.table({
            "caption_id": batch.column("caption_id"),
            "vocabulary": pa.array([self.vocabulary] * n, pa.string()),
            "mode": pa.array([self.mode] * n, pa.string()),
            "status": pa.array(status, pa.string()),
            "concepts": pa.array(concepts, pa.list_(pa.string())),
            "n_concepts": pa.array([None if c is None else len(c) for c in concepts], pa.int32()),
            "words": pa.array(word_col, pa.list_(pa.string())),
            "matched": pa.array(matched, MATCHED_TYPE),
        })


def _upgrade_table(store: Store) -> None:
    """Add the columns of :data:`ADDED_COLUMNS` to a ``caption_concepts`` made before them
    (their rows read as NULL: no recorded alias, no paper-mode words)."""
    have = store.columns("caption_concepts")
    for col, typ in ADDED_COLUMNS.items():
        if have and col not in have:
            store.con.execute(f"ALTER TABLE caption_concepts ADD COLUMN {col} {typ}")


def _write_queries(store: Store, vocabulary: str, config_hash: str,
                   queries: tuple[tuple[str, str, tuple[str, ...]], ...]) -> None:
    """The query words of a paper-mode configuration, once (they follow from its hash)."""
    con = store.con
    if con.execute("SELECT count(*) FROM concept_queries WHERE config_hash = ?", [config_hash]).fetchall()[0][0]:
        return
    rows = [(c, a, w) for c, a, ws in queries for w in ws]
    table = pa.table({"vocabulary": pa.array([vocabulary] * len(rows), pa.string()),
                      "config_hash": pa.array([config_hash] * len(rows), pa.string()),
                      "concept": pa.array([r[0] for r in rows], pa.string()),
                      "alias": pa.array([r[1] for r in rows], pa.string()),
                      "word": pa.array([r[2] for r in rows], pa.string())})
    con.begin()
    try:
        con.register("_curate_queries_in", table)
        con.execute("INSERT INTO concept_queries SELECT * FROM _curate_queries_in")
        con.commit()
    except BaseException:
        con.rollback()
        raise
    finally:
        con.unregister("_curate_queries_in")


def _vocabulary_rows(store: Store, name: str) -> list[list[str]]:
    """(concept, alias) rows of a vocabulary, adding a bundled one on first use."""
    def rows() -> list[list[str]]:
        if "concepts" not in store.tables():
            return []
        return [list(r) for r in store.con.execute(
            "SELECT concept, alias FROM concepts WHERE vocabulary = ? ORDER BY concept, alias", [name]).fetchall()]

    got = rows()
    if not got:
        from ..concepts import vocab

        if name in vocab.bundled_vocabularies():
            vocab.add_vocabulary(store, name, name)
            got = rows()
    if not got:
        raise ConfigError(f"vocabulary {name!r} is not in the store; add it with `curate concepts vocab add {name} FILE` "
                          "(`curate concepts vocab list` shows the bundled ones)")
    return got
