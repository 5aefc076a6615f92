"""Concept text frequency: which concepts of a vocabulary each caption names
(``concepts.text_match.v1``).

One row per caption and run configuration in ``caption_concepts``: the ``vocabulary``
and ``mode``, a ``status`` (``ok``, ``empty``, ``too long``, ``error``), the matched
``concepts`` (sorted, distinct) and ``n_concepts``. The view ``concept_hits`` has one row
per (caption, concept) of the latest configuration run of each vocabulary and mode, with
the caption's ``uid``, ``source`` and ``variant``; ``sql/concepts/text.sql`` counts them
(zeros included) per vocabulary, source and variant.

The vocabulary comes from the store's ``concepts`` table (``curate concepts vocab add``;
a bundled vocabulary is added on first use). Its content is part of the configuration
hash, so editing a vocabulary and counting again writes a new result beside the old one.
Lemmatisation and matching are described in :mod:`curate.concepts.lemma` and
:mod:`curate.concepts.match`; each distinct caption text of a batch is processed once,
and captions are fed in text order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa

from ..attributes import Attribute
from ..errors import ConfigError
from ..knowledge.ner import DEFAULT_MODEL
from .base import Stage

if TYPE_CHECKING:
    from ..store import Store

#: One row per (caption, concept) of concept_text_latest (the latest configuration run
#: per vocabulary and mode).
HITS_VIEW = """
CREATE OR REPLACE VIEW concept_hits AS
SELECT r.caption_id, r.uid, r.source, r.variant, r.vocabulary, r.mode, u.concept
FROM concept_text_latest r, unnest(r.concepts) AS u(concept)
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
    ])
    latest_view: ClassVar[str | None] = "concept_text_latest"
    latest_by: ClassVar[tuple[str, ...]] = ("vocabulary", "mode")
    views: ClassVar[tuple[str, ...]] = (HITS_VIEW,)
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
    #: "phrase": adjacent noun lemmas in order (default); "paper": every word's lemma among
    #: the caption's NOUN/PROPN lemmas (Udandarao et al. 2024)
    mode: Literal["phrase", "paper"] = "phrase"
    #: spaCy pipeline whose English lemma tables (and tagger, for "paper") are used
    model: str = DEFAULT_MODEL
    max_chars: int = 20_000
    #: filled from the store when the run starts (see ``prepare``): a hash of the
    #: vocabulary's (concept, alias) rows, and the rows themselves (not part of the config)
    vocab_hash: str = ""
    patterns: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.vocabulary:
            raise ValueError("vocabulary is required (a name from `curate concepts vocab list`)")
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, got {self.max_chars}")

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.pop("patterns")
        return cfg

    def preflight(self) -> None:
        from ..knowledge.ner import pipeline_components

        components = pipeline_components(self.model)
        if "lemmatizer" not in components:
            raise ConfigError(f"spaCy pipeline {self.model!r} has no 'lemmatizer' component")

    def prepare(self, store: Store) -> ConceptText:
        rows = _vocabulary_rows(store, self.vocabulary)
        digest = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]
        return dataclasses.replace(self, vocab_hash=digest, patterns=tuple((c, a) for c, a in rows))

    def setup(self) -> None:
        from ..concepts.lemma import NounLemmatizer, PosLemmatizer
        from ..concepts.match import BagMatcher, PhraseMatcher

        if not self.patterns:
            raise ConfigError(f"{self.registry_name()}: no concepts loaded; the runner calls prepare(store) first")
        lem: NounLemmatizer | PosLemmatizer
        matcher: PhraseMatcher | BagMatcher
        if self.mode == "phrase":
            noun = NounLemmatizer(self.model)
            lem, matcher = noun, PhraseMatcher((c, noun.lemmas(a)) for c, a in self.patterns)
        else:
            pos = PosLemmatizer(self.model)
            lem, matcher = pos, BagMatcher((c, pos.concept_words(a)) for c, a in self.patterns)
        object.__setattr__(self, "_lem", lem)
        object.__setattr__(self, "_matcher", matcher)

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        texts = batch.column("text").to_pylist()
        unique = list(dict.fromkeys(t for t in texts if t is not None and t.strip() and len(t) <= self.max_chars))
        lem, matcher = self._lem, self._matcher  # type: ignore[attr-defined]
        if self.mode == "phrase":
            found = dict(zip(unique, matcher.match(lem.many(unique))))
        else:
            found = dict(zip(unique, matcher.match(lem.noun_lemma_sets(unique))))
        status: list[str] = []
        concepts: list[list[str] | None] = []
        for t in texts:
            if t is None:
                status.append("error"); concepts.append(None)  # noqa: E702
            elif not t.strip():
                status.append("empty"); concepts.append([])  # noqa: E702
            elif len(t) > self.max_chars:
                status.append("too long"); concepts.append(None)  # noqa: E702
            else:
                status.append("ok"); concepts.append(found[t])  # noqa: E702
        n = batch.num_rows
        return pa.table({
            "caption_id": batch.column("caption_id"),
            "vocabulary": pa.array([self.vocabulary] * n, pa.string()),
            "mode": pa.array([self.mode] * n, pa.string()),
            "status": pa.array(status, pa.string()),
            "concepts": pa.array(concepts, pa.list_(pa.string())),
            "n_concepts": pa.array([None if c is None else len(c) for c in concepts], pa.int32()),
        })


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
