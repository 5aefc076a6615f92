"""Matching concept names against caption lemmas.

* **phrase** (the default): a concept (or one of its aliases) matches a caption when its
  noun lemmas occur in the caption's lemmas as adjacent whole words in the same order
  ("hot dog" matches "two hot dogs", not "a hot sunny day with a dog"). All patterns are
  found in one pass of a multi-pattern automaton (Aho-Corasick, polars
  ``str.extract_many`` with overlapping matches), so "hot dog" also counts "dog".
* **bag** (modes ``nouns`` and ``paper``): a concept matches when every one of its word
  lemmas is among the caption's NOUN/PROPN lemmas, anywhere, in any order. Mode
  ``paper`` also drops the words no caption of the index has (a whole-corpus rule, kept
  in SQL: :mod:`curate.stages.concepts`); this matcher is its per-caption part.

Both matchers report which alias of a concept matched (:meth:`PhraseMatcher.match_aliases`,
:meth:`BagMatcher.match_aliases`); a pattern is ``(concept, lemmas)`` or ``(concept,
lemmas, alias)``, the alias being the concept itself when not given. A caption counts
once per concept however often the concept occurs in it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TypeVar

import polars as pl

L = TypeVar("L")

#: the matching modes of concepts.text_match.v1 (curate.stages.concepts)
MODES = ("phrase", "paper", "nouns")


def _label(pattern: tuple[str, L] | tuple[str, L, str]) -> tuple[tuple[str, str], L]:
    if len(pattern) == 3:
        return (pattern[0], pattern[2]), pattern[1]
    return (pattern[0], pattern[0]), pattern[1]


def _concepts(labels: list[list[tuple[str, str]]]) -> list[list[str]]:
    return [sorted({c for c, _ in row}) for row in labels]


class PhraseMatcher:
    def __init__(self, patterns: Iterable[tuple[str, str] | tuple[str, str, str]]) -> None:
        """``patterns``: (concept, lemmatised alias[, alias]) triples; a lemmatised alias may
        serve several concepts and aliases. Empty ones are dropped (see ``empty``)."""
        by_pattern: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self.empty: list[str] = []
        for pattern in patterns:
            (concept, alias), lemmas = _label(pattern)
            if lemmas.strip():
                by_pattern[f" {lemmas.strip()} "].add((concept, alias))
            else:
                self.empty.append(concept)
        self.patterns = sorted(by_pattern)
        self._table = pl.DataFrame(
            [(p, c, a) for p in self.patterns for c, a in sorted(by_pattern[p])],
            schema={"pattern": pl.String, "concept": pl.String, "alias": pl.String}, orient="row")

    def match_aliases(self, lemma_texts: Sequence[str]) -> list[list[tuple[str, str]]]:
        """(concept, alias) pairs found in each lemma text (sorted, distinct), in input order."""
        n = len(lemma_texts)
        if not n or not self.patterns:
            return [[] for _ in range(n)]
        df = pl.DataFrame({"text": [f" {t} " for t in lemma_texts]}).with_row_index("row")
        hits = (
            df.select("row", pl.col("text").str.extract_many(self.patterns, overlapping=True).alias("pattern"))
            .explode("pattern")
            .drop_nulls("pattern")
            .join(self._table, on="pattern")
            .select("row", "concept", "alias")
            .unique()
            .sort("row", "concept", "alias")
            .group_by("row", maintain_order=True)
            .agg("concept", "alias")
        )
        out: list[list[tuple[str, str]]] = [[] for _ in range(n)]
        for row, concepts, aliases in hits.iter_rows():
            out[row] = list(zip(concepts, aliases))
        return out

    def match(self, lemma_texts: Sequence[str]) -> list[list[str]]:
        """Concepts found in each lemma text (sorted, distinct), in input order."""
        return _concepts(self.match_aliases(lemma_texts))


class BagMatcher:
    """An AND over a concept's word lemmas, through an inverted index."""

    def __init__(self, patterns: Iterable[tuple[str, Sequence[str]] | tuple[str, Sequence[str], str]]) -> None:
        self.by_word: dict[str, list[tuple[tuple[str, str], frozenset[str]]]] = defaultdict(list)
        self.empty: list[str] = []
        for pattern in patterns:
            label, words = _label(pattern)
            ws = frozenset(w for w in words if w)
            if not ws:
                self.empty.append(label[0])
                continue
            self.by_word[min(ws)].append((label, ws))

    def match_aliases(self, lemma_sets: Sequence[set[str]]) -> list[list[tuple[str, str]]]:
        out = []
        for lemmas in lemma_sets:
            found = set()
            for w in lemmas:
                for label, ws in self.by_word.get(w, ()):
                    if ws <= lemmas:
                        found.add(label)
            out.append(sorted(found))
        return out

    def match(self, lemma_sets: Sequence[set[str]]) -> list[list[str]]:
        return _concepts(self.match_aliases(lemma_sets))
