"""Vectorised MinHash + LSH over word shingles, equal to datasketch's, and the one-word
edit rule.

* **Words** (:func:`tokenize`): the space-separated words of a batch of normal forms,
  found in numpy on the UTF-8 bytes of the whole batch and numbered by Arrow's
  ``dictionary_encode`` (exact: equal ids are equal words).
* **Shingles** (:func:`shingle_hashes`): the word n-grams (``n = shingle``) of the
  normal form, joined by one space. A caption with fewer than ``n`` words is *short*:
  its one shingle is its sorted set of words, joined by one space. So two short
  captions are similar only if they have the same words (Jaccard 1), and a short
  caption never matches a long one: an n-gram has ``n`` words, a short shingle fewer.
  Naive shingling gives short captions no shingles, hence the empty MinHash, which is
  equal for all of them and collapses unrelated texts (bigcode-dataset#35). An n-gram
  is a run of word ids; the batch's distinct runs are found on the ids, and only they
  are turned back into bytes and hashed.
* **Hash** of a shingle: datasketch's default ``sha1_hash32`` (the first four bytes of
  SHA-1 of the UTF-8 shingle, little-endian), once per distinct shingle of a batch.
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
* **One-word edits** (:func:`edit_pairs`): pairs whose word sequences differ by one
  inserted (or deleted) word, the shorter having at least ``min_words`` words. Every
  way of deleting one word from the longer caption is keyed (a polynomial hash of the
  word hashes, updated in O(1) per deleted word), the keys are looked up among the
  shorter captions' keys, and each match is verified on the word sequences, so a
  reported pair is a true pair (up to 64-bit collisions between distinct words).

Arrays, not objects: a batch's shingle hashes are one ``uint32`` array with CSR offsets
(``indptr``), signatures an ``(n, num_perm)`` ``uint32`` matrix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .normalize import as_large_string, string_buffers

_FMIX_M1 = np.uint32(0x85EBCA6B)
_FMIX_M2 = np.uint32(0xC2B2AE35)
#: shingles permuted at once for a long text (a num_perm x 8192 uint32 buffer: 4 MB at num_perm 128)
_CHUNK = 8192
#: texts with at most this many shingles are signed in blocks of similar length
_BLOCK_WIDTH = 64
#: cells (texts x width) of one block: a num_perm x (cells / width) accumulator stays in cache
_BLOCK_CELLS = 1 << 16


@dataclass(frozen=True)
class Shingled:
    """Shingle-hash sets of ``n`` texts: ``data[indptr[i]:indptr[i+1]]`` are the sorted,
    distinct hashes of text ``i``; ``short[i]`` says whether the short-caption rule made them."""

    indptr: np.ndarray  # int64, n + 1
    data: np.ndarray  # uint32
    short: np.ndarray  # bool, n

    def __len__(self) -> int:
        return len(self.short)


@dataclass(frozen=True)
class Tokens:
    """The words of ``n`` normal forms: word ``w`` of the batch is the bytes
    ``raw[start[w]:end[w]]``, text ``i`` has words ``woff[i]:woff[i+1]`` (at least one),
    ``wid[w]`` numbers the distinct words and ``vocab[wid[w]]`` is the word followed by a space."""

    raw: np.ndarray  # uint8, the normal forms' UTF-8 bytes, back to back
    woff: np.ndarray  # int64, n + 1
    start: np.ndarray  # int64, one per word
    end: np.ndarray  # int64
    wid: np.ndarray  # int64
    vocab: pa.LargeStringArray

    def __len__(self) -> int:
        return len(self.woff) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Words per text."""
        return np.diff(self.woff)

    def text(self, i: int) -> str:
        """Normal form ``i`` (a copy of its bytes, decoded)."""
        return self.raw[self.start[self.woff[i]]:self.end[self.woff[i + 1] - 1]].tobytes().decode()


@dataclass(frozen=True)
class WordHashes:
    """64-bit hashes of the words of ``n`` texts in CSR form: ``data[indptr[i]:indptr[i+1]]``
    (empty for a text the edit rule cannot use)."""

    indptr: np.ndarray  # int64, n + 1
    data: np.ndarray  # uint64

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @staticmethod
    def concat(parts: list[WordHashes]) -> WordHashes:
        indptr = [np.zeros(1, dtype=np.int64)]
        off = 0
        for p in parts:
            indptr.append(p.indptr[1:] + off)
            off += int(p.indptr[-1])
        data = np.concatenate([p.data for p in parts]) if parts else np.empty(0, dtype=np.uint64)
        return WordHashes(np.concatenate(indptr), data)


def shingles_of(normal: str, n: int) -> list[str]:
    """The shingles of one normal form (non-empty), as strings (see the module docstring).
    The reference the vectorised :func:`shingle_hashes` is tested against."""
    toks = normal.split(" ")
    if len(toks) < n:
        return [" ".join(sorted(set(toks)))]
    if n == 1:
        return toks
    return [" ".join(g) for g in zip(*(toks[i:] for i in range(n)))]


def sha1_hash32_many(items: list[str]) -> np.ndarray:
    """datasketch's ``sha1_hash32`` of each string's UTF-8 bytes, as one ``uint32`` array."""
    return _sha1_32([s.encode() for s in items])


def _sha1_32(items: list[bytes]) -> np.ndarray:
    sha1 = hashlib.sha1
    return np.frombuffer(b"".join([sha1(b).digest()[:4] for b in items]), dtype="<u4").astype(np.uint32)


def tokenize(normals: pa.Array | pa.ChunkedArray | list[str]) -> Tokens:
    """The words of normal forms (:func:`~curate.dedup.normalize.normalize_text` output:
    single spaces, no space at either end), each with at least one word."""
    arr = as_large_string(normals)
    if arr.null_count:
        raise ValueError("tokenize needs normal forms, not nulls")
    off, raw = string_buffers(arr)
    n = len(arr)
    if n and (np.diff(off) == 0).any():
        raise ValueError("tokenize needs normal forms with at least one word")
    sp = np.flatnonzero(raw == 32)
    if len(sp) and ((np.diff(sp) == 1).any() or raw[off[:-1]].min() == 32 or raw[off[1:] - 1].min() == 32):
        raise ValueError("tokenize needs normal forms: single spaces, none at either end")
    first = np.zeros(len(raw), dtype=bool)
    first[off[:-1]] = True
    first[sp + 1] = True
    start = np.flatnonzero(first)
    last = np.zeros(len(raw) + 1, dtype=bool)
    last[sp] = True
    last[off[1:]] = True
    end = np.flatnonzero(last)
    nw = np.searchsorted(sp, off[1:]) - np.searchsorted(sp, off[:-1]) + 1
    woff = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(nw, out=woff[1:])
    # every word followed by one space (rows end without one): then each word is the run
    # from its start to the next word's start, and Arrow can number the distinct words
    spaced = np.insert(raw, off[1:], np.uint8(32))
    bounds = np.empty(len(start) + 1, dtype=np.int64)
    bounds[:-1] = start + np.repeat(np.arange(n, dtype=np.int64), nw)
    bounds[-1] = len(spaced)
    words = pa.LargeStringArray.from_buffers(len(start), pa.py_buffer(bounds), pa.py_buffer(spaced))
    enc = pc.dictionary_encode(words)
    wid = enc.indices.to_numpy().astype(np.int64)
    return Tokens(raw, woff, start, end, wid, cast(pa.LargeStringArray, enc.dictionary))


def _dense(key: np.ndarray, bound: int) -> tuple[np.ndarray, int]:
    """Dense ids ``0..k-1`` for the distinct values of a non-negative int64 array whose
    values are below ``bound``, and ``k``. By sorting: when value and position fit in 64
    bits, one plain sort of both packed together, else an argsort. (Arrow's
    ``dictionary_encode`` of integers is five times slower.)"""
    n = len(key)
    if n == 0:
        return key.astype(np.int64), 0
    pbits = max(1, (n - 1).bit_length())
    if (max(bound, 2) - 1).bit_length() + pbits <= 64:
        packed = np.sort((key.astype(np.uint64) << np.uint64(pbits)) | np.arange(n, dtype=np.uint64))
        order = (packed & np.uint64((1 << pbits) - 1)).astype(np.int64)
        s = packed >> np.uint64(pbits)
    else:
        order = np.argsort(key)
        s = key[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.cumsum(new) - 1
    return inv, int(np.count_nonzero(new))


def shingle_hashes(normals: pa.Array | pa.ChunkedArray | list[str] | Tokens, n: int) -> Shingled:
    """Shingle-hash sets of non-empty normal forms (or of their :class:`Tokens`)."""
    tk = normals if isinstance(normals, Tokens) else tokenize(normals)
    nt = len(tk)
    lengths = tk.lengths
    short = lengths < n
    v = len(tk.vocab)
    if n == 1:  # the shingles are the words
        words = [w[:-1] for w in tk.vocab.cast(pa.large_binary()).to_pylist()]
        owner = np.repeat(np.arange(nt, dtype=np.uint64), lengths)
        h = _sha1_32(words)[tk.wid] if len(words) else np.empty(0, dtype=np.uint32)
    else:
        cnt = np.where(short, 0, lengths - n + 1)
        sk = _ranges(tk.woff[:-1], cnt)  # first word of each n-gram
        key = tk.wid[sk]
        bound = max(v, 1)
        for t in range(1, n):
            if bound * v >= 1 << 62:
                key, bound = _dense(key, bound)
            key = key * v + tk.wid[sk + t]
            bound *= max(v, 1)
        inv, nu = _dense(key, bound)
        rep = np.empty(nu, dtype=np.int64)
        rep[inv] = sk  # any occurrence of a distinct n-gram has its bytes
        raw = tk.raw.tobytes()
        sha1 = hashlib.sha1
        digests = b"".join([sha1(raw[a:b]).digest()[:4]
                            for a, b in zip(tk.start[rep].tolist(), tk.end[rep + n - 1].tolist())])
        h = np.frombuffer(digests, dtype="<u4").astype(np.uint32)[inv]
        owner = np.repeat(np.arange(nt, dtype=np.uint64), cnt)
        rows = np.flatnonzero(short)
        if len(rows):  # short captions: the sorted set of their words (few, and short)
            hs = _sha1_32([" ".join(sorted(set(tk.text(int(r)).split(" ")))).encode() for r in rows])
            owner = np.concatenate([owner, rows.astype(np.uint64)])
            h = np.concatenate([h, hs])
    keys = sorted_unique((owner << np.uint64(32)) | h.astype(np.uint64))  # by text, then hash
    per = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=nt)
    indptr = np.zeros(nt + 1, dtype=np.int64)
    np.cumsum(per, out=indptr[1:])
    return Shingled(indptr, (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32), short)


def word_hashes(tk: Tokens, min_words: int = 1) -> WordHashes:
    """64-bit hashes of each text's words (empty for texts of fewer than ``min_words``)."""
    from polars import Series

    dh = Series(tk.vocab).hash(seed=0).to_numpy() if len(tk.vocab) else np.empty(0, dtype=np.uint64)
    lengths = tk.lengths
    use = lengths >= min_words
    if use.all():
        return WordHashes(tk.woff.copy(), dh[tk.wid].astype(np.uint64))
    cnt = np.where(use, lengths, 0)
    indptr = np.zeros(len(tk) + 1, dtype=np.int64)
    np.cumsum(cnt, out=indptr[1:])
    return WordHashes(indptr, dh[tk.wid[_ranges(tk.woff[:-1], cnt)]].astype(np.uint64))


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique`` of a 1-d integer array by sorting. (numpy 2.4's hash-based
    ``np.unique`` takes seconds on a million 64-bit keys that a sort handles in 15 ms.)"""
    if len(x) < 2:
        return np.sort(x)
    s = np.sort(x)
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


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

    Texts of up to :data:`_BLOCK_WIDTH` shingles (nearly all captions) are taken in
    blocks of similar length, sorted by length: a block is a ``(width, texts)`` matrix
    of hashes (a text shorter than the width repeats its last shingle, which leaves its
    minimum unchanged), and the signature is an element-wise minimum over the width,
    each step one ``(num_perm, texts)`` multiply-add in cache. Longer texts are permuted
    in chunks of :data:`_CHUNK` shingles and reduced with ``np.minimum.reduceat``."""
    a, b = permutations(num_perm, seed)
    a, b = a[:, None], b[:, None]
    n = len(sh)
    out = np.empty((n, num_perm), dtype=np.uint32)
    if n == 0:
        return out
    lengths = np.diff(sh.indptr)
    if np.any(lengths == 0):
        raise ValueError("signatures need at least one shingle per text")
    hv = fmix32(sh.data)
    order = np.argsort(lengths, kind="stable")
    n_block = int(np.searchsorted(lengths[order], _BLOCK_WIDTH, side="right"))
    i = 0
    while i < n_block:
        width = int(lengths[order[i]])
        j = min(n_block, i + max(1, _BLOCK_CELLS // width))
        while j - i > 1 and int(lengths[order[j - 1]]) * (j - i) > 2 * _BLOCK_CELLS:
            j = i + (j - i) // 2
        rows = order[i:j]
        starts, last = sh.indptr[rows], lengths[rows] - 1
        acc = np.full((num_perm, len(rows)), np.iinfo(np.uint32).max, dtype=np.uint32)
        tmp = np.empty_like(acc)
        for t in range(int(lengths[rows[-1]])):
            np.multiply(a, hv[starts + np.minimum(t, last)][None, :], out=tmp)  # uint32 wraps: mod 2^32
            np.add(tmp, b, out=tmp)
            np.minimum(acc, tmp, out=acc)
        out[rows] = acc.T
        i = j
    if n_block < n:
        _signatures_long(hv, sh.indptr, np.sort(order[n_block:]), a, b, out)
    return out


def _signatures_long(hv: np.ndarray, indptr: np.ndarray, rows: np.ndarray, a: np.ndarray, b: np.ndarray,
                     out: np.ndarray) -> None:
    """Signatures of long texts ``rows`` (sorted) into ``out``: their shingles in chunks
    of one reused ``(num_perm, _CHUNK)`` buffer (fresh large temporaries cost more in page
    faults than the arithmetic); a text longer than a chunk is reduced across chunks."""
    buf = np.empty((a.shape[0], _CHUNK), dtype=np.uint32)

    def permuted(idx: np.ndarray) -> np.ndarray:
        v = buf[:, : len(idx)]
        np.multiply(a, hv[idx][None, :], out=v)
        np.add(v, b, out=v)
        return v

    lengths = indptr[rows + 1] - indptr[rows]
    csum = np.cumsum(lengths)
    s = 0
    while s < len(rows):
        base = csum[s - 1] if s else 0
        e = min(max(int(np.searchsorted(csum, base + _CHUNK, side="right")), s + 1), len(rows))
        if lengths[s:e].sum() > _CHUNK:  # one text longer than a chunk: accumulate its minimum
            lo, hi = int(indptr[rows[s]]), int(indptr[rows[s] + 1])
            m = np.full(a.shape[0], np.iinfo(np.uint32).max, dtype=np.uint32)
            for c in range(lo, hi, _CHUNK):
                np.minimum(m, permuted(np.arange(c, min(c + _CHUNK, hi))).min(axis=1), out=m)
            out[rows[s]] = m
        else:
            seg = np.zeros(e - s, dtype=np.int64)
            np.cumsum(lengths[s:e - 1], out=seg[1:])
            out[rows[s:e]] = np.minimum.reduceat(permuted(_ranges(indptr[rows[s:e]], lengths[s:e])), seg, axis=1).T
        s = e


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
    base = np.zeros(n, dtype=np.uint64) if scope is None else (scope.astype(np.uint64) + np.uint64(1)) * _SCOPE_MUL
    h = base[:, None] ^ np.arange(1, bands + 1, dtype=np.uint64)[None, :]
    by_band = sig[:, :bands * rows].reshape(n, bands, rows)
    for j in range(rows):
        h ^= by_band[:, :, j]
        h *= _BAND_MUL
        h ^= h >> np.uint64(29)
    return h


def candidate_pairs(keys: np.ndarray, max_bucket: int = 1000) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs ``(i, j)``, ``i < j``, sharing a key in any band, each once.

    A bucket with more than ``max_bucket`` members contributes only the pairs of its first
    member with the others (a star) instead of all pairs; the third value counts such
    buckets. Returns ``(i, j, large_buckets)``.

    Per band, the key's high bits and the text's index share one uint64, so one plain
    sort groups the texts by key (an argsort is five times slower). The key keeps
    ``64 - bits(n)`` bits: a collision of those between unequal bands (about ``n^2 / 2^45``
    pairs per band at ten million texts) only adds a candidate that verification rejects."""
    n = keys.shape[0]
    e = np.empty(0, dtype=np.int64)
    if n < 2:
        return e, e, 0
    ibits = max(1, int(n - 1).bit_length())
    imask = np.uint64((1 << ibits) - 1)
    hmask = ~imask
    idx = np.arange(n, dtype=np.uint64)
    found: list[np.ndarray] = []
    large = 0
    for k in range(keys.shape[1]):
        s = np.sort((keys[:, k] & hmask) | idx)
        hk = s & hmask
        dup = np.zeros(n, dtype=bool)
        eq = hk[1:] == hk[:-1]
        dup[1:] = eq
        dup[:-1] |= eq
        if not dup.any():
            continue
        s, hk = s[dup], hk[dup]
        member = (s & imask).astype(np.int64)
        new = np.ones(len(s), dtype=bool)
        new[1:] = hk[1:] != hk[:-1]
        starts = np.flatnonzero(new)
        sizes = np.diff(np.append(starts, len(s)))
        big = sizes > max_bucket
        if big.any():
            large += int(big.sum())
            for r in np.flatnonzero(big):
                m = member[starts[r]:starts[r] + sizes[r]]
                found.append(_pair_keys(np.full(len(m) - 1, m[0]), m[1:], n))
            member, sizes = member[~np.repeat(big, sizes)], sizes[~big]
        if len(member):
            # every member pairs with the members after it in its bucket
            bucket_end = np.repeat(np.cumsum(sizes), sizes)
            pos = np.arange(len(member))
            after = bucket_end - pos - 1
            found.append(_pair_keys(np.repeat(member, after), member[_ranges(pos + 1, after)], n))
    if not found:
        return e, e, large
    u = sorted_unique(np.concatenate(found))
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
        # ka and kb are each sorted (pairs in order, a set's hashes sorted): a stable sort
        # (timsort) of the two runs is one merge
        both = np.sort(np.concatenate([ka, kb]), kind="stable")
        dup = both[1:][both[1:] == both[:-1]]
        inter = np.bincount((dup >> np.uint64(32)).astype(np.int64), minlength=end - start)
        out[sl] = inter / (li[sl] + lj[sl] - inter)
        start = end
    return out


# -- one-word edits --------------------------------------------------------------------
#: the polynomial base (odd, so invertible mod 2^64), its inverse, and the length and scope mixers
_Q = 0x9E3779B97F4A7C15
_QINV = pow(_Q, -1, 1 << 64)
_LEN_MUL = np.uint64(0xBF58476D1CE4E5B9)
_EDIT_SCOPE_MUL = np.uint64(0x94D049BB133111EB)
#: words keyed at once (bounds the temporaries: about 60 bytes per word)
_EDIT_CHUNK = 1 << 20


def _powers(m: int) -> np.ndarray:
    p = np.empty(max(m, 1), dtype=np.uint64)
    p[0] = 1
    p[1:] = np.uint64(_Q)
    return np.cumprod(p, dtype=np.uint64)  # wraps: mod 2^64


def _row_chunks(indptr: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive row ranges holding about :data:`_EDIT_CHUNK` words each."""
    n = len(indptr) - 1
    out, s = [], 0
    while s < n:
        e = int(np.searchsorted(indptr, indptr[s] + _EDIT_CHUNK, side="right")) - 1
        e = min(max(e, s + 1), n)
        out.append((s, e))
        s = e
    return out


def _edit_keys(w: WordHashes, lo: int, hi: int, pw: np.ndarray,
               scope: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For texts ``lo:hi``: each text's key, and for each of its words the key of the
    text with that word deleted (with the text's index). A key is
    ``sum_j h_j Q^j + length * L + scope * S mod 2^64`` over the word hashes ``h_j``;
    deleting word ``i`` keeps the prefix and divides the rest by ``Q``."""
    ip = w.indptr[lo:hi + 1]
    lengths = np.diff(ip)
    data = w.data[ip[0]:ip[-1]]
    base = ip[:-1] - ip[0]
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(base, lengths)
    term = data * pw[pos]
    cs = np.zeros(len(data) + 1, dtype=np.uint64)
    np.cumsum(term, out=cs[1:])
    full = cs[base + lengths] - cs[base]
    extra = lengths.astype(np.uint64) * _LEN_MUL
    if scope is not None:
        extra += (scope[lo:hi].astype(np.uint64) + np.uint64(1)) * _EDIT_SCOPE_MUL
    row = np.repeat(np.arange(lo, hi, dtype=np.int64), lengths)
    pre = cs[:-1] - np.repeat(cs[base], lengths)  # the words before word i
    rest = np.repeat(full, lengths) - pre - term  # the words after it, still times Q^(i+1)
    deleted = pre + rest * np.uint64(_QINV) + np.repeat(extra - _LEN_MUL, lengths)
    return full + extra, deleted, row


def edit_pairs(w: WordHashes, min_words: int, scope: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(s, l)`` of texts where ``l`` is ``s`` with one word inserted (anywhere) and
    ``s`` has at least ``min_words`` words; with ``scope``, both of one scope. Each pair
    once, sorted; verified on the word hashes (:func:`one_word_apart`).

    The texts' keys are sorted; each deletion key is first tested against a bitmap of the
    keys' top bits (most match nothing), and only the survivors are searched."""
    e = np.empty(0, dtype=np.int64)
    lengths = np.diff(w.indptr)
    if min_words < 1 or len(w) < 2 or not (lengths > min_words).any():
        return e, e
    n = len(w)
    pw = _powers(int(lengths.max()) + 1)
    chunks = _row_chunks(w.indptr)
    keyed = [_edit_keys(w, lo, hi, pw, scope) for lo, hi in chunks[:1]]  # one chunk (the usual case): key it once
    full = np.concatenate([keyed[0][0]] + [_edit_keys(w, lo, hi, pw, scope)[0] for lo, hi in chunks[1:]])
    cand = np.flatnonzero(lengths >= min_words)
    order = cand[np.argsort(full[cand], kind="stable")]
    fk = full[order]
    bits = min(26, max(10, (64 * len(fk)).bit_length()))
    shift = np.uint64(64 - bits)
    seen = np.zeros(1 << bits, dtype=bool)
    seen[fk >> shift] = True
    found = []
    for c, (lo, hi) in enumerate(chunks):
        if not (lengths[lo:hi] > min_words).any():
            continue
        _, deleted, row = keyed[0] if c == 0 else _edit_keys(w, lo, hi, pw, scope)
        ok = seen[deleted >> shift]
        ok &= lengths[row] > min_words
        deleted, row = deleted[ok], row[ok]
        a = np.searchsorted(fk, deleted, side="left")
        cnt = np.searchsorted(fk, deleted, side="right") - a
        if cnt.any():
            found.append(order[_ranges(a, cnt)] * n + np.repeat(row, cnt))
    if not found:
        return e, e
    u = sorted_unique(np.concatenate(found))
    s, lg = u // n, u % n
    keep = one_word_apart(w, s, lg)
    if scope is not None:
        keep &= scope[s] == scope[lg]
    return s[keep], lg[keep]


def one_word_apart(w: WordHashes, s: np.ndarray, lg: np.ndarray) -> np.ndarray:
    """Whether text ``lg[p]`` is text ``s[p]`` with one word inserted, on the word hashes.

    With ``b`` the longer: ``b`` minus word ``p`` equals ``a`` iff ``a[:p] == b[:p]`` and
    ``a[p:] == b[p+1:]``; so some ``p`` exists iff (the first ``k`` with ``a[k] != b[k]``)
    >= (one past the last ``k`` with ``a[k] != b[k+1]``)."""
    ls = w.indptr[s + 1] - w.indptr[s]
    ok = (w.indptr[lg + 1] - w.indptr[lg] == ls + 1) & (ls > 0)
    out = np.zeros(len(s), dtype=bool)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return out
    la = ls[idx]
    ia = _ranges(w.indptr[s[idx]], la)
    ib = _ranges(w.indptr[lg[idx]], la)
    xa = w.data[ia]
    k = np.arange(len(ia)) - np.repeat(np.cumsum(la) - la, la)
    seg = np.cumsum(la) - la
    first_pre = np.minimum.reduceat(np.where(xa != w.data[ib], k, np.repeat(la, la)), seg)
    past_suf = np.maximum.reduceat(np.where(xa != w.data[ib + 1], k + 1, 0), seg)
    out[idx] = past_suf <= first_pre
    return out


def is_pair(pairs: np.ndarray, n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether each ``(a[k], b[k])`` (either order) is among ``pairs``, the sorted keys
    ``lo * n + hi`` of a pair set."""
    if len(pairs) == 0 or len(a) == 0:
        return np.zeros(len(a), dtype=bool)
    q = _pair_keys(a, b, n)
    at = np.minimum(np.searchsorted(pairs, q), len(pairs) - 1)
    return cast(np.ndarray, pairs[at] == q)


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of ``range(s, s + l)`` for each pair, vectorised."""
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.cumsum(lens) - lens
    return np.repeat(starts - offsets, lens) + np.arange(total)
