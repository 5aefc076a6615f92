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
  shares no code with the MinHash path beyond :func:`~curate.dedup.minhash.shingles_of`;
  with ``edit_min_words`` it adds the one-word-edit pairs, found from the word strings
  (every one-word deletion of every text, in a dict), not from hashes.
* :func:`plant_word_edits` is the evaluation set of the one-word edit rule: real
  captions, a copy of each of some of them with one word deleted or inserted (some
  upper-cased), and 2,000 unrelated two- and three-word captions (the real short
  captions, topped up with pairs like "satin black dress" / "satin dress" built from
  their words) that must stay apart. :func:`score_word_edits` scores a result on it.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

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


def oracle_pairs(texts: list[str | None], shingle: int, threshold: float,
                 edit_min_words: int = 0) -> dict[tuple[int, int], float]:
    """Every pair ``(i, j)``, ``i < j``, of texts with words whose shingle sets have exact
    Jaccard similarity at least ``threshold``, with that similarity (brute force). With
    ``edit_min_words``, also every pair whose normal forms differ by one inserted word,
    the shorter having at least that many words (with its Jaccard similarity)."""
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
    out = {(int(a), int(b)): float(j) for a, b, j in zip(ids[r[ok]], ids[c[ok]], jac[ok])}
    if edit_min_words:
        for (a, b) in _edit_oracle(texts, edit_min_words):
            if (a, b) not in out:
                sa = set(shingles_of(normalize_text(texts[a] or ""), shingle))
                sb = set(shingles_of(normalize_text(texts[b] or ""), shingle))
                out[(a, b)] = len(sa & sb) / len(sa | sb)
    return out


def _edit_oracle(texts: list[str | None], min_words: int) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, whose normal forms differ by one inserted word, the
    shorter having at least ``min_words`` words: every text's word tuple is looked up
    among every longer text's one-word deletions."""
    by_words: dict[tuple[str, ...], list[int]] = {}
    words = []
    for i, t in enumerate(texts):
        w = tuple(normalize_text(t).split()) if t is not None else ()
        words.append(w)
        if len(w) >= min_words:
            by_words.setdefault(w, []).append(i)
    out = set()
    for j, w in enumerate(words):
        if len(w) <= min_words:
            continue
        for k in range(len(w)):
            for i in by_words.get(w[:k] + w[k + 1:], ()):
                out.add((min(i, j), max(i, j)))
    return out


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


# -- the one-word edit evaluation set ---------------------------------------------------------
@dataclass
class WordEdits:
    """``texts`` = the originals, then one edited copy per planted pair, then the
    generated short captions. ``pairs`` are the planted (original, copy) pairs, ``edit``
    their kind (``delete``/``insert``) and ``upper`` whether the copy was upper-cased;
    ``traps`` index the 2,000 unrelated short captions (real ones among the originals,
    then the generated ones)."""

    texts: list[str]
    pairs: list[tuple[int, int]]
    edit: list[str]
    upper: list[bool]
    traps: list[int] = field(default_factory=list)


def vocabulary(texts: list[str], min_count: int = 3) -> list[str]:
    """Alphabetic words (3+ letters) of the normal forms seen at least ``min_count``
    times, most frequent first (ties alphabetical)."""
    c = Counter(w for t in texts for w in normalize_text(t).split() if len(w) >= 3 and w.isalpha() and w.isascii())
    return [w for w, k in sorted(c.items(), key=lambda x: (-x[1], x[0])) if k >= min_count]


def plant_word_edits(originals: list[str], n_pairs: int = 2000, n_short: int = 2000, seed: int = 0,
                     min_words: int = 4, upper_share: float = 0.25) -> WordEdits:
    """The one-word edit evaluation set (see the module docstring).

    * ``n_pairs`` distinct originals, each copied once with one edit, half deletions
      (of a whitespace token that is exactly one normal-form word, from captions of at
      least ``min_words + 1`` words) and half insertions (a word of the corpus's own
      :func:`vocabulary`, anywhere, into captions of at least ``min_words`` words), so
      the copy's normal form is the original's with one word deleted or inserted; a
      share ``upper_share`` of the copies is upper-cased.
    * ``n_short`` unrelated short captions: the originals whose normal form has two or
      three words (one per word set), then generated ones up to ``n_short``, in pairs
      ``modifier1 modifier2 head`` / ``modifier1 head`` (one word deleted, so the rule's
      minimum length is what keeps them apart), from the first and last words of the
      real short captions. No two of them, and none with an original, share a word set.
    """
    rng = random.Random(seed)
    norms = [normalize_text(t) for t in originals]
    vocab = vocabulary(originals)[:3000]
    seen_norm: set[str] = set()
    pool_del, pool_ins = [], []
    for i, (t, nf) in enumerate(zip(originals, norms)):
        if not nf or nf in seen_norm:
            continue
        seen_norm.add(nf)
        k = len(nf.split())
        if k >= min_words + 1 and any(_one_word(tok) for tok in t.split()):
            pool_del.append(i)
        if k >= min_words:
            pool_ins.append(i)
    rng.shuffle(pool_del)
    rng.shuffle(pool_ins)
    texts = list(originals)
    pairs: list[tuple[int, int]] = []
    edit: list[str] = []
    upper: list[bool] = []
    used: set[int] = set()
    want = {"delete": n_pairs // 2, "insert": n_pairs - n_pairs // 2}
    for kind, pool in (("delete", pool_del), ("insert", pool_ins)):
        made = 0
        for i in pool:
            if made == want[kind]:
                break
            if i in used:
                continue
            toks = originals[i].split()
            if kind == "delete":
                k = rng.choice([p for p, tok in enumerate(toks) if _one_word(tok)])
                copy = toks[:k] + toks[k + 1:]
            else:
                word = rng.choice(vocab)
                k = rng.randrange(len(toks) + 1)
                copy = toks[:k] + [word] + toks[k:]
            up = rng.random() < upper_share
            text = " ".join(copy)
            if not normalize_text(text):
                continue
            used.add(i)
            pairs.append((i, len(texts)))
            texts.append(text.upper() if up else text)
            edit.append(kind)
            upper.append(up)
            made += 1
    # short captions
    word_sets = {frozenset(nf.split()) for nf in norms if nf}
    traps: list[int] = []
    trap_sets: set[frozenset[str]] = set()
    real_short = [i for i, nf in enumerate(norms) if nf and 2 <= len(nf.split()) <= 3]
    for i in real_short:
        ws = frozenset(norms[i].split())
        if ws not in trap_sets and len(trap_sets) < n_short:
            trap_sets.add(ws)
            traps.append(i)
    heads = sorted({norms[i].split()[-1] for i in real_short if norms[i].split()[-1].isalpha()})
    mods = sorted({norms[i].split()[0] for i in real_short if norms[i].split()[0].isalpha()})
    tries = 0
    while len(traps) < n_short and tries < 100 * n_short:
        tries += 1
        m1, m2, h = rng.choice(mods), rng.choice(mods), rng.choice(heads)
        three, two = frozenset((m1, m2, h)), frozenset((m1, h))
        if len({m1, m2, h}) < 3 or three in word_sets or two in word_sets or three in trap_sets or two in trap_sets:
            continue
        for ws, text in ((three, f"{m1} {m2} {h}"), (two, f"{m1} {h}")):
            trap_sets.add(ws)
            traps.append(len(texts))
            texts.append(text)
    if len(traps) > n_short:  # the last pair's two-word caption
        traps.pop()
        texts.pop()
    return WordEdits(texts, pairs, edit, upper, traps)


def _one_word(token: str) -> bool:
    """A whitespace token whose normal form is exactly one word."""
    nf = normalize_text(token)
    return bool(nf) and " " not in nf


@dataclass
class EditScores:
    planted: int  # planted pairs
    planted_found: int  # of them in one group
    predicted: int  # pairs in groups
    true_predicted: int  # of them planted, or duplicates by the oracle (Jaccard >= threshold, same normal form)
    trap_pairs: int  # predicted pairs joining a short caption with a different word set
    by_edit: dict[str, tuple[int, int]]  # kind -> (found, planted)
    false_examples: list[tuple[str, str]]

    @property
    def recall(self) -> float:
        return self.planted_found / self.planted if self.planted else 1.0

    @property
    def precision(self) -> float:
        return self.true_predicted / self.predicted if self.predicted else 1.0


def score_word_edits(ev: WordEdits, member_ids: list[int], group_ids: list[int],
                     oracle: set[tuple[int, int]]) -> EditScores:
    """Planted-pair recall and pair precision of groups on :func:`plant_word_edits`'s set.
    A predicted pair is true if it is planted or in ``oracle`` (the pairs that were
    duplicates before the edit rule: ``oracle_pairs(texts, shingle, threshold)``)."""
    pred = group_pairs(member_ids, group_ids)
    planted = set(ev.pairs)
    found = planted & pred
    kinds = dict(zip(ev.pairs, ev.edit))
    by_edit = {k: (sum(1 for p in found if kinds[p] == k), sum(1 for p in planted if kinds[p] == k))
               for k in ("delete", "insert")}
    true = planted | oracle
    trap = set(ev.traps)
    norms: dict[int, frozenset[str]] = {}

    def words(i: int) -> frozenset[str]:
        if i not in norms:
            norms[i] = frozenset(normalize_text(ev.texts[i]).split())
        return norms[i]

    bad_trap = sum(1 for a, b in pred if (a in trap or b in trap) and words(a) != words(b))
    false = sorted(pred - true)
    return EditScores(len(planted), len(found), len(pred), len(pred & true), bad_trap, by_edit,
                      [(ev.texts[a], ev.texts[b]) for a, b in false[:20]])
