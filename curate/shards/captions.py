"""Which caption a training step sees: seeded draws, and a ``.json`` layout that makes
open_clip's own sampler draw each sample's captions with the policy's probabilities.

A multi-caption policy (``laclip``, ``veclip``, ``ratio``) gives every sample its own
candidates and probabilities (the manifest's ``captions`` list): a LaCLIP sample with an
original and two rewrites draws each with 1/3, one with a single rewrite each with 1/2;
a VeCLIP sample lacking its enriched caption draws its alt-text with 1.

**What open_clip does with keys and probabilities.** open_clip main (2026-06, not in the
3.3.0 release) reads ``--json-text-key k1;k2;...`` with ``--json-text-key-probs w1 w2
...``: for every sample it draws a priority order of the keys with probabilities
proportional to the *global* weights and takes the first key the sample has
(``JsonCaptionExtractor`` / ``_weighted_order`` in ``src/open_clip_train/data.py``). One
weight per key for the whole data set cannot express per-sample probabilities, and the
skip over missing keys moves a missing key's mass to the keys after it: a VeCLIP 0.5/0.5
policy where 20% of the samples lack the enriched caption gives the keys the mean
probabilities 0.6/0.4 and trains at 0.68/0.32 instead of the policy's mean 0.6/0.4
(0.5/0.5 for every sample that has both); a LaCLIP sample with a third rewrite draws it
about 1% of the time instead of 1/3.

**The slot layout.** Every sample gets the same ``K`` keys ``c0 .. c{K-1}`` and fills
*all* of them, each candidate repeated in proportion to its probability
(:func:`slot_layout`); open_clip is given the ``K`` keys with equal weights
(:func:`open_clip_args`). With every key present and equal weights, the first key of the
drawn order is uniform over the ``K`` slots, so a caption filling ``n`` slots is drawn
with probability ``n / K``: the policy's own probability when ``p * K`` is a whole
number for every candidate. :func:`slot_count` picks the smallest such ``K`` for the
whole manifest (the least common multiple of the probabilities' denominators: 2 for
VeCLIP 0.5, 12 for LaCLIP samples with 2, 3 or 4 candidates), at most ``max_slots``;
past that, slots are apportioned by the largest remainder and the largest difference
``|n / K - p|`` is reported (under ``1 / K``).

**Pre-drawn captions.** open_clip 3.3.0 reads only a ``.txt`` member. :func:`draw`
picks one candidate per (sample, copy, epoch) from a seeded hash, so ``curate shards
--caption-epoch e`` writes the ``.txt`` of epoch ``e``; one shard folder per epoch gives
each sample a fresh draw every epoch, and within one folder the copies of a repeated
sample draw independently.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import NamedTuple

#: slot keys are ``c0 .. c{K-1}``
SLOT_PREFIX = "c"
#: the largest K :func:`slot_count` picks on its own: the LCM of 1..5 (up to five
#: candidates of equal probability, or any mix of halves, thirds, quarters and fifths)
MAX_SLOTS = 60
#: a probability is "exactly n/K" when it is within this of it (manifest probabilities
#: are doubles computed as share / sum(share))
EXACT_EPS = 1e-9
_U53 = float(1 << 53)


class Candidate(NamedTuple):
    """One caption a sample may be trained with (a tuple: cheap to build and to send to
    writer processes)."""

    variant: str
    text: str
    prob: float


def unit(*parts: object) -> float:
    """A number in [0, 1) from the parts (seed, uid, copy, ...): the top 53 bits of their
    BLAKE2b-64 digest. Stable across processes, platforms and Python versions."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / _U53


def pick(cands: Sequence[Candidate], u: float) -> int:
    """Index of the candidate ``u`` in [0, 1) falls on, by cumulative probability in
    list order (the inverse CDF; probabilities need not sum exactly to 1)."""
    total = sum(c.prob for c in cands)
    acc = 0.0
    target = u * total
    for i, c in enumerate(cands):
        acc += c.prob
        if target < acc:
            return i
    return max(i for i, c in enumerate(cands) if c.prob > 0)  # rounding at the top end


def draw(cands: Sequence[Candidate], seed: int, uid: str, copy: int, epoch: int) -> Candidate:
    """The caption of ``copy`` of sample ``uid`` in ``epoch``: a seeded draw by the
    candidates' probabilities, independent across copies and epochs."""
    if len(cands) == 1:
        return cands[0]
    return cands[pick(cands, unit(seed, "caption", uid, copy, epoch))]


def _denominator(p: float, max_slots: int) -> int | None:
    """The smallest K <= max_slots with p * K a whole number (within EXACT_EPS), if any."""
    f = Fraction(p).limit_denominator(max_slots)
    return f.denominator if abs(float(f) - p) <= EXACT_EPS else None


def slot_count(prob_vectors: Iterable[Sequence[float]], max_slots: int = MAX_SLOTS) -> tuple[int, bool]:
    """(K, exact): the smallest K with ``p * K`` whole for every probability of every
    vector, if it is at most ``max_slots`` (exact); else ``max_slots`` (not exact)."""
    k = 1
    for probs in prob_vectors:
        total = sum(probs)
        for p in probs:
            d = _denominator(p / total if total else 0.0, max_slots)
            if d is None:
                return max_slots, False
            k = math.lcm(k, d)
            if k > max_slots:
                return max_slots, False
    return k, True


def apportion(probs: Sequence[float], k: int) -> list[int]:
    """Whole slot counts summing to ``k``, ``floor(p * k)`` each, then one more to the
    largest fractional parts (ties to the earlier candidate): the largest-remainder rule
    the budget uses."""
    total = sum(probs) or 1.0
    exact = [p / total * k for p in probs]
    counts = [math.floor(x + EXACT_EPS) for x in exact]
    rest = k - sum(counts)
    order = sorted(range(len(probs)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:max(rest, 0)]:
        counts[i] += 1
    return counts


def slot_layout(cands: Sequence[Candidate], k: int) -> list[str]:
    """The ``k`` slot values of a sample: each candidate's text repeated by
    :func:`apportion`, in candidate order."""
    out: list[str] = []
    for c, n in zip(cands, apportion([c.prob for c in cands], k)):
        out.extend([c.text] * n)
    return out


def layout_error(cands: Sequence[Candidate], k: int) -> float:
    """The largest ``|n / k - p|`` of the layout: 0 when the layout is exact."""
    probs = [c.prob for c in cands]
    total = sum(probs) or 1.0
    return max(abs(n / k - p / total) for n, p in zip(apportion(probs, k), probs))


def slot_keys(k: int) -> list[str]:
    return [f"{SLOT_PREFIX}{i}" for i in range(k)]


def open_clip_args(k: int) -> list[str]:
    """open_clip main's arguments for the slot layout: every slot key, equal weights."""
    return ["--json-text-key", ";".join(slot_keys(k)), "--json-text-key-probs", *(["1"] * k)]


__all__ = ["MAX_SLOTS", "SLOT_PREFIX", "Candidate", "apportion", "draw", "layout_error", "open_clip_args", "pick",
           "slot_count", "slot_keys", "slot_layout", "unit"]
