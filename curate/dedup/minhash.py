"""Vectorised MinHash + LSH over word shingles, equal to datasketch's.

* **Shingles** (:func:`shingle_hashes`): the word n-grams (``n = shingle``) of the
  normal form, joined by one space. A caption with fewer than ``n`` words is *short*:
  its one shingle is its sorted set of words, joined by one space. So two short
  captions are similar only if they have the same words (Jaccard 1), and a short
  caption never matches a long one: an n-gram has ``n`` words, a short shingle fewer.
  Naive shingling gives short captions no shingles, hence the empty MinHash, which is
  equal for all of them and collapses unrelated texts (bigcode-dataset#35).
* **Hash** of a shingle: datasketch's default ``sha1_hash32`` (the first four bytes of
  SHA-1 of the UTF-8 shingle, little-endian).
* **Signatures** (:func:`signatures`): datasketch 2.0's default ``affine32`` scheme,
  computed for many captions at once with numpy: the hash is pre-mixed with the
  MurmurHash3 32-bit finalizer, then ``a_k * h + b_k mod 2^32`` for ``num_perm``
  permutations whose ``(a, b)`` come from ``MinHash(num_perm, seed).permutations``; the
  signature is the minimum over the caption's shingles. Equal, value for value, to
  ``MinHash(num_perm, seed)`` updated with each shingle's UTF-8 bytes (tested).
* **LSH** (:func:`band_keys`, :func:`candidate_pairs`): ``bands`` bands of ``rows``
  signature values; two captions are candidates if any band is equal. A band is
  reduced to a 64-bit key; a key collision between unequal bands only adds a
  candidate, which verification then rejects, so the candidates are a superset of
  ``MinHashLSH(params=(bands, rows))``'s.
* **Verification** (:func:`jaccard_pairs`): the exact Jaccard similarity of the two
  shingle-hash sets, so a reported pair is a true pair (up to 32-bit hash collisions
  between distinct shingles).

Arrays, not objects: a batch's shingle hashes are one ``uint32`` array with CSR offsets
(``indptr``), signatures an ``(n, num_perm)`` ``uint32`` matrix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_FMIX_M1 = np.uint32(0x85EBCA6B)
_FMIX_M2 = np.uint32(0xC2B2AE35)
#: shingles permuted at once (a num_perm x 8192 uint32 buffer: 4 MB at num_perm 128)
_CHUNK = 8192


@dataclass(frozen=True)
class Shingled:
    """Shingle-hash sets of ``n`` texts: ``data[indptr[i]:indptr[i+1]]`` are the sorted,
    distinct hashes of text ``i``; ``short[i]`` says whether the short-caption rule made them."""

    indptr: np.ndarray  # int64, n + 1
    data: np.ndarray  # uint32
    short: np.ndarray  # bool, n

    def __len__(self) -> int:
        return len(self.short)


def shingles_of(normal: str, n: int) -> list[str]:
    """The shingles of one normal form (non-empty), as strings (see the module docstring)."""
    toks = normal.split(" ")
    if len(toks) < n:
        return [" ".join(sorted(set(toks)))]
    if n == 1:
        return toks
    return [" ".join(g) for g in zip(*(toks[i:] for i in range(n)))]


def sha1_hash32_many(items: list[str]) -> np.ndarray:
    """datasketch's ``sha1_hash32`` of each string's UTF-8 bytes, as one ``uint32`` array."""
    sha1 = hashlib.sha1
    return np.frombuffer(b"".join([sha1(s.encode()).digest()[:4] for s in items]), dtype="<u4").astype(np.uint32)


def shingle_hashes(normals: list[str], n: int) -> Shingled:
    """Shingle-hash sets of non-empty normal forms."""
    counts = np.empty(len(normals), dtype=np.int64)
    short = np.empty(len(normals), dtype=bool)
    flat: list[str] = []
    for i, s in enumerate(normals):
        sh = shingles_of(s, n)
        counts[i] = len(sh)
        short[i] = len(sh) == 1 and s.count(" ") + 1 < n
        flat.extend(sh)
    h = sha1_hash32_many(flat)
    owner = np.repeat(np.arange(len(normals), dtype=np.uint64), counts)
    keys = np.unique((owner << np.uint64(32)) | h.astype(np.uint64))  # sorted by owner, then hash
    per = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=len(normals))
    indptr = np.zeros(len(normals) + 1, dtype=np.int64)
    np.cumsum(per, out=indptr[1:])
    return Shingled(indptr, (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32), short)


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's ``affine32`` permutation parameters ``(a, b)`` for ``(num_perm, seed)``."""
    from .._optional import require

    ds = require("datasketch", purpose="MinHash caption dedup")
    a, b = ds.MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch's pre-mix), on a ``uint32`` array."""
    h = h ^ (h >> np.uint32(16))
    h = h * _FMIX_M1
    h = h ^ (h >> np.uint32(13))
    h = h * _FMIX_M2
    return h ^ (h >> np.uint32(16))


def signatures(sh: Shingled, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """``(len(sh), num_perm)`` uint32 MinHash signatures; every set must be non-empty.

    Works through the shingles in chunks of :data:`_CHUNK` columns of one reused
    ``(num_perm, chunk)`` buffer (fresh large temporaries cost more in page faults than
    the arithmetic); a text longer than a chunk is reduced across chunks."""
    a, b = permutations(num_perm, seed)
    a, b = a[:, None], b[:, None]
    n = len(sh)
    out = np.empty((n, num_perm), dtype=np.uint32)
    if n == 0:
        return out
    if np.any(np.diff(sh.indptr) == 0):
        raise ValueError("signatures need at least one shingle per text")
    hv = fmix32(sh.data)
    indptr = sh.indptr
    buf = np.empty((num_perm, _CHUNK), dtype=np.uint32)

    def permuted(lo: int, hi: int) -> np.ndarray:
        v = buf[:, : hi - lo]
        np.multiply(a, hv[None, lo:hi], out=v)  # uint32 arithmetic wraps: mod 2^32
        np.add(v, b, out=v)
        return v

    start = 0
    while start < n:
        end = int(np.searchsorted(indptr, indptr[start] + _CHUNK, side="right")) - 1
        end = min(max(end, start + 1), n)
        lo, hi = int(indptr[start]), int(indptr[end])
        if hi - lo > _CHUNK:  # one text longer than a chunk: accumulate its minimum
            m = np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
            for s in range(lo, hi, _CHUNK):
                np.minimum(m, permuted(s, min(s + _CHUNK, hi)).min(axis=1), out=m)
            out[start] = m
        else:
            out[start:end] = np.minimum.reduceat(permuted(lo, hi), indptr[start:end] - lo, axis=1).T
        start = end
    return out


def lsh_params(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """``(bands, rows)`` with the most rows per band (fewest false candidates) such that a
    pair of Jaccard exactly ``threshold`` becomes a candidate with probability at least
    ``recall`` (``1 - (1 - t^rows)^bands``). Pairs above the threshold do better."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold ** rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


_BAND_MUL = np.uint64(0x9E3779B97F4A7C15)
_SCOPE_MUL = np.uint64(0xD6E8FEB86659FD93)


def band_keys(sig: np.ndarray, bands: int, rows: int, scope: np.ndarray | None = None) -> np.ndarray:
    """``(n, bands)`` uint64 keys: band ``k`` of a signature (and its scope) reduced to 64 bits.

    Equal bands give equal keys; unequal bands collide with probability about 2^-64."""
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {sig.shape[1]}")
    n = sig.shape[0]
    out = np.empty((n, bands), dtype=np.uint64)
    base = np.zeros(n, dtype=np.uint64) if scope is None else (scope.astype(np.uint64) + np.uint64(1)) * _SCOPE_MUL
    for k in range(bands):
        h = base ^ np.uint64(k + 1)
        for j in range(k * rows, (k + 1) * rows):
            h = (h ^ sig[:, j].astype(np.uint64)) * _BAND_MUL
            h ^= h >> np.uint64(29)
        out[:, k] = h
    return out


def candidate_pairs(keys: np.ndarray, max_bucket: int = 1000) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs ``(i, j)``, ``i < j``, sharing a key in any band, each once.

    A bucket with more than ``max_bucket`` members contributes only the pairs of its first
    member with the others (a star) instead of all pairs; the third value counts such
    buckets. Returns ``(i, j, large_buckets)``."""
    n = keys.shape[0]
    found: list[np.ndarray] = []
    large = 0
    for k in range(keys.shape[1]):
        order = np.argsort(keys[:, k], kind="stable")
        ks = keys[order, k]
        if n < 2:
            break
        new = np.empty(n, dtype=bool)
        new[0] = True
        np.not_equal(ks[1:], ks[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        sizes = np.diff(np.append(starts, n))
        run = np.repeat(np.arange(len(starts)), sizes)
        size_of = sizes[run]
        small = (size_of > 1) & (size_of <= max_bucket)
        if small.any():
            pos = order[small]
            rid = run[small]
            for d in range(1, int(size_of[small].max())):
                same = rid[d:] == rid[:-d]
                if not same.any():
                    break
                found.append(_pair_keys(pos[:-d][same], pos[d:][same], n))
        big = np.flatnonzero(sizes > max_bucket)
        large += len(big)
        for r in big:
            members = order[starts[r]:starts[r] + sizes[r]]
            found.append(_pair_keys(np.full(len(members) - 1, members[0]), members[1:], n))
    if not found:
        e = np.empty(0, dtype=np.int64)
        return e, e, large
    u = np.unique(np.concatenate(found))
    return u // n, u % n, large


def _pair_keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    lo = np.minimum(i, j).astype(np.int64)
    hi = np.maximum(i, j).astype(np.int64)
    return lo * n + hi


def jaccard_pairs(sh: Shingled, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """Exact Jaccard similarity of the shingle-hash sets of texts ``i[p]`` and ``j[p]``."""
    out = np.empty(len(i), dtype=np.float64)
    if len(i) == 0:
        return out
    li = sh.indptr[i + 1] - sh.indptr[i]
    lj = sh.indptr[j + 1] - sh.indptr[j]
    cost = np.cumsum(li + lj)
    start = 0
    while start < len(i):
        base = cost[start - 1] if start else 0
        end = max(int(np.searchsorted(cost, base + chunk, side="right")), start + 1)
        sl = slice(start, end)
        pid = np.arange(end - start, dtype=np.uint64)
        va = sh.data[_ranges(sh.indptr[i[sl]], li[sl])].astype(np.uint64)
        vb = sh.data[_ranges(sh.indptr[j[sl]], lj[sl])].astype(np.uint64)
        ka = (np.repeat(pid, li[sl]) << np.uint64(32)) | va
        kb = (np.repeat(pid, lj[sl]) << np.uint64(32)) | vb
        both = np.sort(np.concatenate([ka, kb]))
        dup = both[1:][both[1:] == both[:-1]]
        inter = np.bincount((dup >> np.uint64(32)).astype(np.int64), minlength=end - start)
        out[sl] = inter / (li[sl] + lj[sl] - inter)
        start = end
    return out


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of ``range(s, s + l)`` for each pair, vectorised."""
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.cumsum(lens) - lens
    return np.repeat(starts - offsets, lens) + np.arange(total)
