"""Matching concept names against caption lemmas.

* **phrase** (the default): a concept (or one of its aliases) matches a caption when its
  noun lemmas occur in the caption's lemmas as adjacent whole words in the same order
  ("hot dog" matches "two hot dogs", not "a hot sunny day with a dog"). All patterns are
  found in one pass of a multi-pattern automaton (Aho-Corasick, polars
  ``str.extract_many`` with overlapping matches), so "hot dog" also counts "dog".
* **paper** (Udandarao et al. 2024, for comparison): a concept matches when every one of
  its word lemmas is among the caption's NOUN/PROPN lemmas, anywhere, in any order.

A caption counts once per concept however often the concept occurs in it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import polars as pl


class PhraseMatcher:
    def __init__(self, patterns: Iterable[tuple[str, str]]) -> None:
        """``patterns``: (concept, lemmatised alias) pairs; an alias may serve several
        concepts. Empty aliases are dropped (see ``empty``)."""
        by_pattern: dict[str, set[str]] = defaultdict(set)
        self.empty: list[str] = []
        for concept, lemmas in patterns:
            if lemmas.strip():
                by_pattern[f" {lemmas.strip()} "].add(concept)
            else:
                self.empty.append(concept)
        self.patterns = sorted(by_pattern)
        self._table = pl.DataFrame(
            [(p, c) for p in self.patterns for c in sorted(by_pattern[p])],
            schema={"pattern": pl.String, "concept": pl.String}, orient="row")

    def match(self, lemma_texts: Sequence[str]) -> list[list[str]]:
        """Concepts found in each lemma text (sorted, distinct), in input order."""
        n = len(lemma_texts)
        if not n or not self.patterns:
            return [[] for _ in range(n)]
        df = pl.DataFrame({"text": [f" {t} " for t in lemma_texts]}).with_row_index("row")
        hits = (
            df.select("row", pl.col("text").str.extract_many(self.patterns, overlapping=True).alias("pattern"))
            .explode("pattern")
            .drop_nulls("pattern")
            .join(self._table, on="pattern")
            .select("row", "concept")
            .unique()
            .group_by("row")
            .agg(pl.col("concept").sort())
        )
        out: list[list[str]] = [[] for _ in range(n)]
        for row, concepts in hits.iter_rows():
            out[row] = concepts
        return out


class BagMatcher:
    """The paper's AND over a concept's word lemmas, through an inverted index."""

    def __init__(self, patterns: Iterable[tuple[str, Sequence[str]]]) -> None:
        self.by_word: dict[str, list[tuple[str, frozenset[str]]]] = defaultdict(list)
        self.empty: list[str] = []
        for concept, words in patterns:
            ws = frozenset(w for w in words if w)
            if not ws:
                self.empty.append(concept)
                continue
            self.by_word[min(ws)].append((concept, ws))

    def match(self, lemma_sets: Sequence[set[str]]) -> list[list[str]]:
        out = []
        for lemmas in lemma_sets:
            found = set()
            for w in lemmas:
                for concept, ws in self.by_word.get(w, ()):
                    if ws <= lemmas:
                        found.add(concept)
            out.append(sorted(found))
        return out
