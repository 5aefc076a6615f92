"""Caption text normalisation for dedup, in Python and as an SQL twin.

The normal form of a caption (:func:`normalize_text`) is

1. Unicode **NFKC** (compatibility forms folded: fullwidth letters, ligatures, ``①``);
2. **lower case** (``str.lower``, not ``casefold``: ``ß`` stays ``ß``, as in DuckDB);
3. every run of **punctuation, symbols, separators and control/format characters**
   (Unicode general categories ``P*``, ``S*``, ``Z*``, ``Cc``, ``Cf``, ``Co``, ``Cs``,
   so emoji, ``|``, ``©``, ``$``, NBSP, tabs and zero-width joiners too) becomes one
   space;
4. leading and trailing spaces removed.

Tokens are the space-separated words of the normal form. A caption whose normal form
is empty (empty, whitespace-, punctuation- or emoji-only) has no words and is not
analysed; dedup records it with the reason :data:`NO_WORDS`.

:data:`NORMALIZE_SQL` is the DuckDB twin. It agrees with the Python function except:

* DuckDB has ``nfc_normalize`` but no NFKC, so compatibility characters (fullwidth
  ``ＡＢＣ``, ligature ``ﬁ``, superscript ``²``, circled ``①``) are folded in Python
  and kept in SQL;
* ``lower`` differs on a few letters: Python lowers ``İ`` (U+0130) to ``i`` + U+0307,
  DuckDB to ``i``;
* the two Unicode databases (Python's ``unicodedata`` and DuckDB's RE2) can differ on
  characters assigned in recent Unicode versions.

:func:`normalize_array` is the same function over an Arrow array at once (numpy on the
UTF-8 bytes of the ASCII rows; NFKC and ``lower`` per row in C, then numpy on the code
points, for the others), equal to :func:`normalize_text` row by row (tested on real
captions and with generated text). The dedup pass uses it; the SQL form serves audits in plain SQL
(``sql/dedup/text.sql``). ``tests/test_dedup_text.py`` measures their agreement on real
captions.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Reason recorded for captions whose normal form is empty.
NO_WORDS = "no words after normalisation"
#: Reason recorded for NULL captions (the store forbids them; in-memory input may have them).
NULL_TEXT = "null text"

_STRIP_CATEGORIES = ("P", "S", "Z", "Cc", "Cf", "Co", "Cs")

#: ``text`` is substituted by the caller (a column name or expression). RE2's ``\s`` is
#: ASCII-only, so Unicode spaces are matched by ``\pZ`` and controls by ``\pC``.
NORMALIZE_SQL = r"trim(regexp_replace(lower(nfc_normalize({text})), '[\pP\pS\pZ\pC]+', ' ', 'g'))"


def normalize_sql(text_expr: str = "text") -> str:
    """The SQL twin of :func:`normalize_text` over ``text_expr``."""
    return NORMALIZE_SQL.format(text=text_expr)


_ASCII_STRIP = re.compile(r"[^a-z0-9]+")  # on lower-cased ASCII text: exactly the stripped categories


@lru_cache(maxsize=1)
def _strip_table() -> dict[int, str]:
    """``str.translate`` table: every code point of the stripped categories to a space.

    Built on first use (about 0.3 s, 150k entries); five times faster than one regex
    character class holding the same code points."""
    table = {}
    for cp in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(cp))
        if cat[0] in "PSZ" or cat in _STRIP_CATEGORIES[3:]:
            table[cp] = " "
    return table


def normalize_text(text: str) -> str:
    """The normal form of ``text`` (see the module docstring); ``''`` if it has no words."""
    t = unicodedata.normalize("NFKC", text).lower()
    if t.isascii():
        return _ASCII_STRIP.sub(" ", t).strip(" ")
    # after translate every separator is a plain space, so split() splits on exactly those
    return " ".join(t.translate(_strip_table()).split())


def normalize_many(texts: list[str | None]) -> list[str | None]:
    """:func:`normalize_text` over a list; ``None`` stays ``None``."""
    return [None if t is None else normalize_text(t) for t in texts]


@lru_cache(maxsize=1)
def _strip_mask() -> np.ndarray:
    """:func:`_strip_table` as a boolean array over all code points."""
    mask = np.zeros(sys.maxunicode + 1, dtype=bool)
    mask[np.fromiter(_strip_table(), dtype=np.int64)] = True
    return mask


def _ascii_lut() -> np.ndarray:
    """Byte -> normal-form byte for ASCII: ``A-Z`` lowered, ``a-z0-9`` kept, the rest a space."""
    lut = np.full(256, 32, dtype=np.uint8)
    for c in b"abcdefghijklmnopqrstuvwxyz0123456789":
        lut[c] = c
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        lut[c] = c + 32
    return lut


_LUT = _ascii_lut()


def _collapse(codes: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``codes[off[i]:off[i+1]]`` whose separators are already 32 (a space): every
    run of spaces becomes one, leading and trailing ones go. Returns the new codes and
    offsets (``off[0]`` must be 0)."""
    ns = codes != 32
    keep = np.empty_like(ns)
    keep[0:1] = False
    keep[1:] = ns[:-1]  # a space right after a word (the first space of a run) ...
    lens = np.diff(off)
    starts = off[:-1][lens > 0]
    keep[starts] = False  # ... of the same row
    keep |= ns
    cnt = np.zeros(len(lens), dtype=np.int64)
    if len(starts):  # (np.cumsum of a bool array into int64 is ten times slower)
        cnt[lens > 0] = np.add.reduceat(keep.view(np.uint8), starts, dtype=np.int64)
    out = codes[keep]
    last = np.cumsum(cnt) - 1
    trailing = (cnt > 0) & (out[np.maximum(last, 0)] == 32) if len(out) else np.zeros(len(cnt), dtype=bool)
    if trailing.any():  # a row ending in separators kept the first of its last run
        drop = np.ones(len(out), dtype=bool)
        drop[last[trailing]] = False
        out = out[drop]
        cnt = cnt - trailing
    new_off = np.zeros(len(cnt) + 1, dtype=np.int64)
    np.cumsum(cnt, out=new_off[1:])
    return out, new_off


def as_large_string(texts: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> pa.LargeStringArray:
    """``texts`` as one ``large_string`` array (int64 offsets)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.large_string())
    if not isinstance(texts, pa.Array):
        try:
            texts = pa.array(texts, pa.large_string())
        except UnicodeEncodeError:  # lone surrogates (Python strings only) become '?': a separator too
            texts = pa.array([None if t is None else t.encode("utf-8", "replace").decode() for t in texts],
                             pa.large_string())
    if texts.type != pa.large_string():
        texts = texts.cast(pa.large_string())
    return texts



def string_buffers(arr: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (rebased to 0) and UTF-8 bytes of a ``large_string`` array (null rows read
    as whatever bytes their slots hold, normally none)."""
    off = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
    data = arr.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, dtype=np.uint8)
    return off - off[0], raw[off[0]:off[-1]]


def normalize_array(texts: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> pa.LargeStringArray:
    """:func:`normalize_text` of every element at once, as a ``large_string`` array; nulls
    stay null. ASCII rows (most captions) are normalised in numpy on their bytes; the
    others get NFKC and ``lower`` row by row, then the separator runs in numpy."""
    arr = as_large_string(texts)
    n = len(arr)
    if n == 0:
        return pa.array([], pa.large_string())
    valid = arr.is_valid()
    filled = arr.fill_null("") if arr.null_count else arr
    asc = pc.string_is_ascii(filled).to_numpy(zero_copy_only=False)
    pos_a = np.flatnonzero(asc)
    pos_u = np.flatnonzero(~asc)
    parts: list[pa.Array] = []
    if len(pos_a):
        sub = filled if len(pos_u) == 0 else filled.take(pa.array(pos_a))
        off, raw = string_buffers(sub)
        out, new_off = _collapse(_LUT[raw], off) if len(raw) else (raw, np.zeros(len(pos_a) + 1, dtype=np.int64))
        parts.append(pa.LargeStringArray.from_buffers(len(pos_a), pa.py_buffer(new_off), pa.py_buffer(out)))
    if len(pos_u):
        rows = filled.take(pa.array(pos_u)).to_pylist()
        nfkc = unicodedata.normalize
        low = [nfkc("NFKC", t).lower() for t in rows]
        cps = np.frombuffer("".join(low).encode("utf-32-le"), dtype=np.uint32)
        off = np.zeros(len(low) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, low), dtype=np.int64, count=len(low)), out=off[1:])
        codes = np.where(_strip_mask()[cps], np.uint32(32), cps)
        out, new_off = _collapse(codes, off)
        joined = out.tobytes().decode("utf-32-le")
        parts.append(pa.array([joined[a:b] for a, b in zip(new_off[:-1].tolist(), new_off[1:].tolist())],
                              pa.large_string()))
    if len(parts) == 1:
        res = parts[0]
    else:
        order = np.empty(n, dtype=np.int64)
        order[np.concatenate([pos_a, pos_u])] = np.arange(n)
        res = pa.concat_arrays(parts).take(pa.array(order))
    if arr.null_count:
        res = pc.if_else(valid, res, pa.scalar(None, pa.large_string()))
    return res
