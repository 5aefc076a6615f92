"""The knowledge guard: how much of the raw caption's knowledge a generated caption keeps.

A fused, rewritten or visual-enriched caption is compared with the raw alt-text it was
made from, by the same rules as ``knowledge.caption_retention`` (``curate.knowledge.normalize``):

* **strict**: a raw knowledge entity counts as kept when its whole normal form occurs in
  the output's normal text;
* **lenient**: also when one of the output's own knowledge entities occurs inside it (a
  partial name: "Obama" for "Barack Obama").

A raw caption without knowledge entities has nothing to lose: retention 1.0. The guard's
decision (accept, regenerate with a stricter template, flag, fall back to the raw caption)
is the stage's (``curate.stages.generate``); this module only measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..knowledge.normalize import kept, kept_strict, normalize_entity, normalize_text

#: the knowledge labels of ``knowledge.spacy_ner.v1`` (its default ``knowledge_labels``)
KNOWLEDGE_LABELS = ("PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE")


@dataclass(frozen=True)
class Retention:
    strict: float
    lenient: float
    raw_entities: int
    kept_strict: int
    kept_lenient: int

    def value(self, rule: str) -> float:
        return self.strict if rule == "strict" else self.lenient


def knowledge_entities(entities: Sequence[tuple[str, str, int, int]], labels: Sequence[str] = KNOWLEDGE_LABELS) -> list[str]:
    """Distinct normalised knowledge entities, in first-seen order."""
    wanted = set(labels)
    out = dict.fromkeys(n for label, text, *_ in entities if label in wanted and (n := normalize_entity(text)))
    return list(out)


def retention(raw_entities: Sequence[str], output_text: str, output_entities: Sequence[str]) -> Retention:
    """Retention of ``raw_entities`` (normalised knowledge entities) by an output caption."""
    if not raw_entities:
        return Retention(1.0, 1.0, 0, 0, 0)
    norm = normalize_text(output_text)
    n_strict = sum(kept_strict(e, norm) for e in raw_entities)
    n_lenient = sum(kept(e, norm, output_entities) for e in raw_entities)
    n = len(raw_entities)
    return Retention(n_strict / n, n_lenient / n, n, n_strict, n_lenient)


class EntityCache:
    """Knowledge entities per text with one spaCy pipeline, parsing each text once."""

    def __init__(self, nlp: Any, labels: Sequence[str] = KNOWLEDGE_LABELS) -> None:
        self.nlp = nlp
        self.labels = tuple(labels)
        self._seen: dict[str, list[str]] = {}

    def get(self, texts: Sequence[str]) -> list[list[str]]:
        from ..knowledge.ner import extract

        new = list(dict.fromkeys(t for t in texts if t not in self._seen))
        if new:
            for text, ents in zip(new, extract(self.nlp, new), strict=True):
                self._seen[text] = knowledge_entities(ents, self.labels)
        if len(self._seen) > 100_000:  # a long run: keep memory bounded, the batch's texts stay
            keep = {t: self._seen[t] for t in texts}
            self._seen = keep
        return [self._seen[t] for t in texts]
