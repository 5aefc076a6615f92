"""Measuring caption dedup against brute force: planted near duplicates, short-caption
traps and an exact-Jaccard oracle. Used by ``benchmarks/bench_caption_dedup.py`` and
``tests/test_dedup_text.py``; not needed to run dedup.

* :func:`plant` copies real captions with one edit each (a word replaced or dropped,
  two words swapped, punctuation or case changed, tokens appended), so the copies range
  from identical normal forms to Jaccard well below the threshold.
* :data:`SHORT_TRAPS` are unrelated short captions (one or two words, numbers, emoji,
  other scripts) that naive shingling would give identical empty signatures.
* :func:`oracle_pairs` computes the exact Jaccard similarity of *every* pair of texts
  from the shingle strings (not their hashes) with a sparse matrix product, so it
  shares no code with the MinHash path beyond :func:`~curate.dedup.minhash.shingles_of`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from .minhash import shingles_of
from .normalize import normalize_text

EDITS = ("replace", "drop", "swap", "punctuation", "case", "append")
_APPENDS = ["free shipping", "| Stock Photo", "2019", "- Image 2 of 5", "(new)", "HD wallpaper", "on sale", "#art"]
_WORDS = ["red", "blue", "vintage", "large", "small", "photo", "women", "men", "new", "set", "black", "white"]

#: Short captions that must never be grouped with each other (different word sets).
#: "dress red" is the same word set as "red dress" and may be grouped with it.
SHORT_TRAPS = [
    "red", "blue", "dog", "cat", "sale", "2019", "2020", "image", "photo", "IMG 1234", "IMG 1235", "logo",
    "red dress", "blue dress", "red shoes", "dress", "shoes", "black cat", "black dog", "new york", "york",
    "东京", "東京タワー", "Москва", "Berlin", "😀 happy", "smile", "a", "the", "a dog", "the dog", "no", "yes",
]
SHORT_SAME = [("red dress", "dress red"), ("Red Dress!", "red dress")]


def perturb(text: str, rng: random.Random, edit: str) -> str:
    """``text`` with one edit of kind ``edit`` (one of :data:`EDITS`)."""
    words = text.split()
    if edit == "replace" and words:
        words[rng.randrange(len(words))] = rng.choice(_WORDS)
    elif edit == "drop" and len(words) > 1:
        del words[rng.randrange(len(words))]
    elif edit == "swap" and len(words) > 1:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif edit == "punctuation":
        return rng.choice(["{}.", "{}!", '"{}"', "{} -", "{},"]).format(text.replace(",", "").replace(".", " "))
    elif edit == "case":
        return rng.choice([text.upper(), text.lower(), text.title()])
    elif edit == "append":
        words.append(rng.choice(_APPENDS))
    return " ".join(words)


@dataclass
class Planted:
    texts: list[str]
    origin: list[int]  # index of the original each text was made from (itself for originals)
    edit: list[str]  # "original" or the edit kind


def plant(originals: list[str], n: int, seed: int = 0, min_words: int = 6) -> Planted:
    """The originals followed by ``n`` edited copies of random originals of at least
    ``min_words`` words."""
    rng = random.Random(seed)
    pool = [i for i, t in enumerate(originals) if t and len(t.split()) >= min_words]
    texts, origin, edit = list(originals), list(range(len(originals))), ["original"] * len(originals)
    for _ in range(n):
        i = rng.choice(pool)
        e = rng.choice(EDITS)
        texts.append(perturb(originals[i], rng, e))
        origin.append(i)
        edit.append(e)
    return Planted(texts, origin, edit)


def oracle_pairs(texts: list[str | None], shingle: int, threshold: float) -> dict[tuple[int, int], float]:
    """Every pair ``(i, j)``, ``i < j``, of texts with words whose shingle sets have exact
    Jaccard similarity at least ``threshold``, with that similarity (brute force)."""
    from scipy.sparse import csr_matrix

    vocab: dict[str, int] = {}
    rows, cols = [], []
    idx = []
    for i, t in enumerate(texts):
        norm = normalize_text(t) if t is not None else ""
        if not norm:
            continue
        idx.append(i)
        for s in set(shingles_of(norm, shingle)):
            rows.append(len(idx) - 1)
            cols.append(vocab.setdefault(s, len(vocab)))
    x = csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(idx), len(vocab)))
    size = np.asarray(x.sum(axis=1)).ravel()
    inter = (x @ x.T).tocoo()
    keep = inter.row < inter.col
    r, c, v = inter.row[keep], inter.col[keep], inter.data[keep]
    jac = v / (size[r] + size[c] - v)
    ok = jac >= threshold
    ids = np.asarray(idx)
    return {(int(a), int(b)): float(j) for a, b, j in zip(ids[r[ok]], ids[c[ok]], jac[ok])}


def group_pairs(groups_member_ids: list[int], group_ids: list[int]) -> set[tuple[int, int]]:
    """All pairs of members (integer keys) that share a group."""
    by: dict[int, list[int]] = {}
    for m, g in zip(groups_member_ids, group_ids):
        by.setdefault(g, []).append(m)
    out = set()
    for ms in by.values():
        ms.sort()
        for a in range(len(ms)):
            for b in range(a + 1, len(ms)):
                out.add((ms[a], ms[b]))
    return out


@dataclass
class PairScores:
    predicted: int
    true: int
    hits: int

    @property
    def precision(self) -> float:
        return self.hits / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.hits / self.true if self.true else 1.0


def score(predicted: set[tuple[int, int]], oracle: set[tuple[int, int]]) -> PairScores:
    return PairScores(len(predicted), len(oracle), len(predicted & oracle))
