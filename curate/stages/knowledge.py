"""Knowledge scoring: spaCy named entities in every caption (``knowledge.spacy_ner.v1``).

One row per caption in ``caption_knowledge``:

* ``entities``: every entity span spaCy found, as a list of
  ``{label, text, norm, start_char, end_char, knowledge}`` (offsets are characters of
  the caption; ``norm`` is :func:`curate.knowledge.normalize.normalize_entity`;
  ``knowledge`` says whether the label is a knowledge label). The view
  ``knowledge_latest`` joins the rows of the latest configuration run to their captions,
  and ``caption_entities`` has one row per entity of those.
* ``n_entities`` (all spans), ``n_knowledge`` (distinct normalised knowledge entities),
  ``n_numeric`` (spans with a numeric label, counted apart), ``words``
  (``len(text.split())``), ``density`` (``n_knowledge / words``) and ``score`` (the sum
  of ``label_weights`` over the distinct knowledge entities, 1.0 for a label not listed).
* ``status``: ``ok``; ``empty`` (no words: no entities, density NULL); ``too long``
  (more than ``max_chars`` characters: not parsed, counts NULL); ``error`` (spaCy
  failed on this text; ``detail`` says how). Every caption gets a row, so nothing is
  skipped silently.

Retention (strict and lenient) and entity support (raw, synthetic only, none) are SQL
over this table (``sql/knowledge/``), with their Python twins in
:mod:`curate.knowledge.normalize`.

Each distinct text of a batch is parsed once, and the runner feeds captions ordered by
text so repeated captions meet in the same batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pyarrow as pa

from ..attributes import Attribute
from ..knowledge.ner import DEFAULT_MODEL, CaseFix, check_pipeline, extract, load_ner
from ..knowledge.normalize import normalize_entity
from .base import Stage

KNOWLEDGE_LABELS = ("PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE")
NUMERIC_LABELS = ("DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL")

ENTITY_TYPE = pa.struct([("label", pa.string()), ("text", pa.string()), ("norm", pa.string()),
                         ("start_char", pa.int32()), ("end_char", pa.int32()), ("knowledge", pa.bool_())])

#: One row per entity span of knowledge_latest.
ENTITIES_VIEW = """
CREATE OR REPLACE VIEW caption_entities AS
SELECT k.caption_id, k.uid, k.source, k.variant,
       e.label, e.text, e.norm, e.start_char, e.end_char, e.knowledge
FROM knowledge_latest k, unnest(k.entities) AS u(e)
"""


@dataclasses.dataclass(frozen=True)
class KnowledgeNER(Stage):
    name: ClassVar[str] = "knowledge.spacy_ner"
    version: ClassVar[int] = 1
    reads: ClassVar[tuple[str, ...]] = ("text",)
    input_order: ClassVar[str | None] = "text"
    output_table: ClassVar[str] = "caption_knowledge"
    output_schema: ClassVar[pa.Schema] = pa.schema([
        ("status", pa.string()), ("detail", pa.string()), ("entities", pa.list_(ENTITY_TYPE)),
        ("n_entities", pa.int32()), ("n_knowledge", pa.int32()), ("n_numeric", pa.int32()),
        ("words", pa.int32()), ("density", pa.float64()), ("score", pa.float64()),
    ])
    #: knowledge_latest: the rows of the most recent configuration run (a store may hold
    #: several), with the caption's sample, source, variant and text
    latest_view: ClassVar[str | None] = "knowledge_latest"
    latest_columns: ClassVar[str] = "c.uid, c.source, c.variant, c.text, k.*"
    views: ClassVar[tuple[str, ...]] = (ENTITIES_VIEW,)
    attributes: ClassVar[tuple[Attribute, ...]] = (
        Attribute("n_knowledge", "caption", "number", "distinct knowledge entities of the caption",
                  column="n_knowledge", where="status = 'ok'"),
        Attribute("knowledge_density", "caption", "number", "knowledge entities per word",
                  column="density", where="status = 'ok'"),
        Attribute("knowledge_score", "caption", "number", "label-weighted knowledge entities",
                  column="score", where="status = 'ok'"),
        Attribute("retention", "caption", "number",
                  "share of the raw caption's knowledge entities the caption keeps, lenient rule: a partial "
                  "name counts (1 when raw has none)",
                  sql="SELECT caption_id, retention AS value FROM {{mix.caption_retention}}",
                  latest="knowledge_latest"),
        Attribute("retention_strict", "caption", "number",
                  "share of the raw caption's knowledge entities the caption keeps as whole names (1 when raw has none)",
                  sql="SELECT caption_id, retention_strict AS value FROM {{mix.caption_retention}}",
                  latest="knowledge_latest"),
        Attribute("retained", "caption", "number", "raw knowledge entities the caption keeps (lenient rule)",
                  sql="SELECT caption_id, retained AS value FROM {{mix.caption_retention}}", latest="knowledge_latest"),
        Attribute("retained_strict", "caption", "number", "raw knowledge entities the caption keeps as whole names",
                  sql="SELECT caption_id, retained_strict AS value FROM {{mix.caption_retention}}",
                  latest="knowledge_latest"),
        Attribute("unsupported", "caption", "number",
                  "knowledge entities supported by neither the raw nor the synthetic caption (knowledge.unsupported)",
                  sql="SELECT caption_id, unsupported AS value FROM {{mix.caption_hallucinations}}",
                  latest="knowledge_latest"),
        Attribute("synthetic_only", "caption", "number",
                  "knowledge entities only the synthetic caption supports (the captioner's, copied)",
                  sql="SELECT caption_id, synthetic_only AS value FROM {{mix.caption_hallucinations}}",
                  latest="knowledge_latest"),
    )
    produced_by: ClassVar[str | None] = "the stage knowledge.spacy_ner.v1 (curate knowledge score)"

    #: spaCy pipeline: an installed package name or a path.
    model: str = DEFAULT_MODEL
    knowledge_labels: tuple[str, ...] = KNOWLEDGE_LABELS
    numeric_labels: tuple[str, ...] = NUMERIC_LABELS
    #: label -> weight in ``score``; knowledge labels not listed weigh 1.0.
    label_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    #: "upper": title-case all-upper-case captions before NER; "upper_lower": also
    #: all-lower-case ones; "none": leave text alone (see benchmarks/RESULTS.md).
    case_fix: CaseFix = "upper"
    max_chars: int = 20_000
    #: thinc matrix products through numpy's BLAS (same entities, faster on most CPUs).
    numpy_gemm: bool = True
    spacy_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, got {self.max_chars}")
        overlap = set(self.knowledge_labels) & set(self.numeric_labels)
        if overlap:
            raise ValueError(f"labels {sorted(overlap)} are both knowledge and numeric labels")
        unknown = sorted(set(self.label_weights) - set(self.knowledge_labels))
        if unknown:
            raise ValueError(f"label_weights names labels that are not knowledge labels: {', '.join(unknown)}")

    def preflight(self) -> None:
        check_pipeline(self.model)

    def setup(self) -> None:
        object.__setattr__(self, "_nlp", load_ner(self.model, numpy_gemm=self.numpy_gemm))

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        from threadpoolctl import threadpool_limits

        texts = batch.column("text").to_pylist()
        unique = list(dict.fromkeys(t for t in texts if t is not None and t.strip() and len(t) <= self.max_chars))
        with threadpool_limits(1, user_api="blas"):
            found = dict(zip(unique, self._entities(unique)))
        rows = [self._row(t, found.get(t)) for t in texts]
        cols: dict[str, Any] = {"caption_id": batch.column("caption_id")}
        for f in self.output_schema:
            cols[f.name] = pa.array([r[f.name] for r in rows], f.type)
        return pa.table(cols)

    # -- helpers ---------------------------------------------------------------------
    def _entities(self, texts: list[str]) -> list[Any]:
        """Entities per text; a text spaCy fails on gets the exception instead."""
        nlp = self._nlp  # type: ignore[attr-defined]
        try:
            return list(extract(nlp, texts, case_fix=self.case_fix, batch_size=self.spacy_batch_size))
        except Exception:  # noqa: BLE001 - find the culprit(s): parse one by one, each error kept
            out: list[Any] = []
            for t in texts:
                try:
                    out.extend(extract(nlp, [t], case_fix=self.case_fix))
                except Exception as e:  # noqa: BLE001 - recorded in the row, never lost
                    out.append(e)
            return out

    def _row(self, text: str | None, ents: Any) -> dict[str, Any]:
        empty = {"entities": None, "n_entities": None, "n_knowledge": None, "n_numeric": None,
                 "words": None, "density": None, "score": None, "detail": None}
        if text is None:
            return {**empty, "status": "error", "detail": "caption text is NULL"}
        words = len(text.split())
        if words == 0:
            return {**empty, "status": "empty", "entities": [], "n_entities": 0, "n_knowledge": 0, "n_numeric": 0,
                    "words": 0, "score": 0.0}
        if len(text) > self.max_chars:
            return {**empty, "status": "too long", "words": words,
                    "detail": f"{len(text):,} characters > max_chars {self.max_chars:,}; not parsed"}
        if isinstance(ents, Exception):
            return {**empty, "status": "error", "words": words, "detail": f"{type(ents).__name__}: {ents}"[:500]}
        knowledge = set(self.knowledge_labels)
        numeric = set(self.numeric_labels)
        entities = []
        distinct: dict[str, str] = {}
        n_numeric = 0
        for label, etext, start, end in ents:
            norm = normalize_entity(etext)
            is_k = label in knowledge
            entities.append({"label": label, "text": etext, "norm": norm, "start_char": start, "end_char": end,
                             "knowledge": is_k})
            if is_k and norm:
                distinct.setdefault(norm, label)
            n_numeric += label in numeric
        score = float(sum(self.label_weights.get(lab, 1.0) for lab in distinct.values()))
        return {**empty, "status": "ok", "entities": entities, "n_entities": len(entities),
                "n_knowledge": len(distinct), "n_numeric": n_numeric, "words": words,
                "density": len(distinct) / words, "score": score}
