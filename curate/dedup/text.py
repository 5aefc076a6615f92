"""Caption dedup: exact duplicates on normalised text, then MinHash near duplicates.

A whole-corpus pass (not a per-batch stage). :func:`dedup_captions` reads the captions
of the store, :func:`find_duplicates` does the same for texts in memory; both run the
same steps:

1. **Normalise** every caption (:mod:`curate.dedup.normalize`). NULL captions and
   captions with no words after normalisation are *skipped*, each with its reason;
   every other caption is analysed.
2. **Exact**: captions of one scope with the same normal form (compared by a 64-bit
   hash of it) are one *text*; only one caption per text is shingled.
3. **Near**: the texts' shingle sets (:mod:`curate.dedup.minhash`), MinHash signatures,
   LSH candidates, then the exact Jaccard similarity of each candidate pair; pairs at or
   above ``threshold`` are joined. So are pairs one word apart: the longer normal form is
   the shorter with one word inserted, and the shorter has at least ``edit_min_words``
   words (default 4; 0 turns this off), which 3-word shingles at Jaccard 0.8 miss
   ("red nike running shoes for men" / "red running shoes for men": Jaccard 0.4).
   With ``grouping='center'`` (the default) each connected set is split around centres
   taken in keep order, so every member is a near duplicate (either rule) of its
   group's kept caption; ``grouping='components'`` keeps whole connected components
   (chains allowed, higher recall, lower precision). ``similarity`` says how similar
   (Jaccard) each member is to the kept one.
4. **Keep** one caption per group by ``keep``: ``min_id`` (smallest ``caption_id``, a content hash: deterministic, not input order),
   ``longest`` or ``shortest`` (characters of the stored text; ties by ``caption_id``).

A *scope* is what groups may not cross: each variant on its own (the default; ``scope``
is the variant name), or all selected variants together (``across_variants=True``;
``scope`` is ``'*'``).

Tables (created on first use, shared with image dedup later; see ``docs/dedup.md``):

* ``dedup_groups``: one row per member of a group of two or more: ``kind``
  (``'caption_text'``), ``scope``, ``group_id``, ``member_kind`` (which id
  ``member_id`` holds: ``'caption_id'`` here, ``'uid'`` for image dedup),
  ``member_id``, ``kept``, ``similarity`` (Jaccard of shingle sets to the kept member;
  1 for the same normal form), ``method`` (``'exact'``: same normal form as the kept
  member, the kept member included; ``'short'``: a short caption with the same words;
  ``'minhash'``: a near duplicate by Jaccard (or, with components, through a chain);
  ``'edit'``: one word apart from the kept member, Jaccard below the threshold),
  ``group_size``, ``config_hash``, ``run_id``.
* ``dedup_skipped``: the captions not analysed, with ``reason``.
* ``dedup_summary``: one row per scope and config: counts and repetition rates.

A run writes all its rows in **one transaction** after the computation, and first
deletes the rows of the same ``kind`` and ``config_hash``: rerunning a config
*replaces* its result (groups depend on the whole corpus, so new captions can change
them); a killed run leaves the previous result as it was. Each run has a ``runs`` row
(kind ``'dedup'``, stage :data:`STAGE`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, CurateError
from ..runs import Run, start_run
from ..store import Store
from .minhash import (
    Shingled,
    WordHashes,
    _pair_keys,
    band_keys,
    candidate_pairs,
    edit_pairs,
    is_pair,
    jaccard_pairs,
    lsh_params,
    shingle_hashes,
    signatures,
    sorted_unique,
    tokenize,
    word_hashes,
)
from .normalize import NO_WORDS, NULL_TEXT, as_large_string, normalize_array, string_buffers

log = logging.getLogger("curate.dedup")

KIND = "caption_text"
STAGE = "dedup.captions.v1"
ACROSS = "*"
KEEP_RULES = ("min_id", "longest", "shortest")
METHODS = ("exact", "short", "edit", "minhash")

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS dedup_groups (
    kind         VARCHAR NOT NULL,   -- what was deduplicated: 'caption_text' (image dedup: its own kind)
    scope        VARCHAR NOT NULL,   -- the variant, or '*' when groups may cross variants
    group_id     BIGINT NOT NULL,    -- 1, 2, ... within (kind, config_hash)
    member_kind  VARCHAR NOT NULL,   -- the id member_id holds: 'caption_id' (captions) or 'uid' (samples)
    member_id    UUID NOT NULL,
    kept         BOOLEAN NOT NULL,   -- exactly one kept member per group
    similarity   DOUBLE NOT NULL,    -- similarity to the kept member (text: Jaccard of shingle sets)
    method       VARCHAR NOT NULL,   -- how the member matches: 'exact', 'short', 'minhash'
    group_size   INTEGER NOT NULL,   -- members in the group
    config_hash  VARCHAR NOT NULL,
    run_id       BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS dedup_skipped (
    kind         VARCHAR NOT NULL,
    scope        VARCHAR NOT NULL,
    member_kind  VARCHAR NOT NULL,
    member_id    UUID NOT NULL,
    reason       VARCHAR NOT NULL,   -- a short fixed phrase: 'null text', 'no words after normalisation'
    config_hash  VARCHAR NOT NULL,
    run_id       BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS dedup_summary (
    kind         VARCHAR NOT NULL,
    scope        VARCHAR NOT NULL,
    items        BIGINT NOT NULL,    -- members read (captions of the scope)
    skipped      BIGINT NOT NULL,    -- not analysed (see dedup_skipped)
    distinct_items BIGINT NOT NULL,  -- distinct normal forms among the analysed
    exact_removed BIGINT NOT NULL,   -- analysed - distinct: duplicates of an identical normal form
    groups       BIGINT NOT NULL,    -- groups of two or more (exact, short and near together)
    members      BIGINT NOT NULL,    -- members of those groups
    removed      BIGINT NOT NULL,    -- members not kept
    exact_rate   DOUBLE,             -- exact_removed / (items - skipped)
    near_rate    DOUBLE,             -- removed / (items - skipped)
    threshold    DOUBLE NOT NULL,
    config_hash  VARCHAR NOT NULL,
    run_id       BIGINT NOT NULL
);
"""

_GROUPS_SCHEMA = pa.schema([
    ("scope", pa.string()), ("group_id", pa.int64()), ("member_id", pa.string()), ("kept", pa.bool_()),
    ("similarity", pa.float64()), ("method", pa.string()), ("group_size", pa.int32()),
])
_SKIPPED_SCHEMA = pa.schema([("scope", pa.string()), ("member_id", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class DedupConfig:
    """What a caption dedup run computes; its hash keys the rows it writes."""

    variant: tuple[str, ...] | None = None  # None: every variant
    across_variants: bool = False
    threshold: float = 0.8
    num_perm: int = 128
    shingle: int = 3
    keep: Literal["min_id", "longest", "shortest"] = "min_id"
    seed: int = 1
    bands: int | None = None  # None with rows None: lsh_params(threshold, num_perm)
    rows: int | None = None
    max_bucket: int = 1000
    grouping: Literal["center", "components"] = "center"
    edit_min_words: int = 4  # one word inserted/deleted is a duplicate when the shorter has this many words; 0: off

    def __post_init__(self) -> None:
        v: object = self.variant  # an untyped caller may pass one variant as a str
        if isinstance(v, str):
            object.__setattr__(self, "variant", (v,))
        elif self.variant is not None:
            object.__setattr__(self, "variant", tuple(sorted(set(self.variant))))
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 1 or self.shingle < 1 or self.max_bucket < 2:
            raise ConfigError(f"num_perm and shingle must be at least 1 and max_bucket at least 2; "
                              f"got {self.num_perm}, {self.shingle}, {self.max_bucket}")
        if isinstance(self.edit_min_words, bool) or not isinstance(self.edit_min_words, int) or self.edit_min_words < 0:
            raise ConfigError(f"edit_min_words must be a whole number >= 0 (0 turns the one-word edit rule off), "
                              f"got {self.edit_min_words!r}")
        if self.keep not in KEEP_RULES:
            raise ConfigError(f"keep must be one of {', '.join(KEEP_RULES)}, got {self.keep!r}")
        if self.grouping not in ("center", "components"):
            raise ConfigError(f"grouping must be 'center' or 'components', got {self.grouping!r}")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError("give both bands and rows, or neither (then they follow from threshold and num_perm)")
        if self.bands is not None and self.rows is not None and (self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm):
            raise ConfigError(f"bands x rows must be at most num_perm ({self.num_perm}); got {self.bands} x {self.rows}")

    def lsh(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return lsh_params(self.threshold, self.num_perm)

    def resolved(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bands"], d["rows"] = self.lsh()
        d["variant"] = list(self.variant) if self.variant is not None else None
        return d

    def config_hash(self) -> str:
        payload = json.dumps({"stage": STAGE, "config": self.resolved()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class ScopeStats:
    scope: str
    items: int = 0
    skipped: int = 0
    distinct_items: int = 0
    exact_removed: int = 0
    groups: int = 0
    members: int = 0
    removed: int = 0

    @property
    def analysed(self) -> int:
        return self.items - self.skipped

    @property
    def exact_rate(self) -> float | None:
        return self.exact_removed / self.analysed if self.analysed else None

    @property
    def near_rate(self) -> float | None:
        return self.removed / self.analysed if self.analysed else None


@dataclass
class DedupResult:
    """The outcome of a dedup pass. ``groups``/``skipped`` are Arrow tables (member ids as
    strings); ``scopes`` has the per-scope counts; ``run_id`` is None for in-memory runs."""

    config: DedupConfig
    groups: pa.Table
    skipped: pa.Table
    scopes: dict[str, ScopeStats]
    seconds: float
    candidates: int = 0
    verified: int = 0
    large_buckets: int = 0
    edit_pairs: int = 0
    run_id: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()

    def summary(self) -> str:
        items = sum(s.items for s in self.scopes.values())
        skipped = sum(s.skipped for s in self.scopes.values())
        groups = sum(s.groups for s in self.scopes.values())
        removed = sum(s.removed for s in self.scopes.values())
        exact = sum(s.exact_removed for s in self.scopes.values())
        analysed = items - skipped
        rate = f"{removed / analysed:.2%}" if analysed else "n/a"
        bands, rows = self.config.lsh()
        head = (f"{STAGE}: {items:,} captions ({skipped:,} skipped), {groups:,} duplicate groups, "
                f"{removed:,} duplicates ({exact:,} exact), repetition {rate}; threshold {self.config.threshold}, "
                f"{self.config.shingle}-word shingles, LSH {bands}x{rows}, {_edit_phrase(self.config)}, "
                f"keep {self.config.keep}; "
                f"{self.seconds:.1f}s" + (f", run {self.run_id}" if self.run_id is not None else ""))
        lines = [head]
        for s in self.scopes.values():
            er = f"{s.exact_rate:.2%}" if s.exact_rate is not None else "n/a"
            nr = f"{s.near_rate:.2%}" if s.near_rate is not None else "n/a"
            lines.append(f"  {s.scope}: {s.items:,} captions, {s.skipped:,} skipped, {s.groups:,} groups, "
                         f"exact {er}, exact+near {nr}")
        if self.large_buckets:
            lines.append(f"  note: {self.large_buckets} LSH buckets had over {self.config.max_bucket} members "
                         "and were compared with their first member only")
        return "\n".join(lines)


def _edit_phrase(config: DedupConfig) -> str:
    m = config.edit_min_words
    return f"one-word edits from {m} words" if m else "no one-word edit rule"


# -- the engine --------------------------------------------------------------------------
_OK, _NULL, _EMPTY = 0, 1, 2
_REASONS = {_NULL: NULL_TEXT, _EMPTY: NO_WORDS}


class _Pass1:
    """Per caption: key, scope, normal-form hash, length, status. Arrays only."""

    def __init__(self) -> None:
        self.keys: list[pa.Array] = []
        self.scope: list[np.ndarray] = []
        self.h: list[np.ndarray] = []
        self.nchars: list[np.ndarray] = []
        self.status: list[np.ndarray] = []
        self.scope_names: dict[str, int] = {}

    def add(self, keys: pa.Array, scopes: pa.Array | str, texts: pa.Array) -> None:
        """One batch: caption keys, their scopes (or one scope for all) and texts."""
        import polars as pl

        n = len(texts)
        texts = as_large_string(texts)
        norm = normalize_array(texts)
        st = np.zeros(n, dtype=np.int8)
        null = texts.is_null().to_numpy(zero_copy_only=False)
        st[null] = _NULL
        st[~null & (np.diff(string_buffers(norm)[0]) == 0)] = _EMPTY
        h = pl.Series(norm).hash(seed=0).to_numpy().copy()
        h[st != _OK] = 0
        nchars = pc.utf8_length(texts).fill_null(0).to_numpy().astype(np.int64)
        if isinstance(scopes, str):
            sc = np.full(n, self.scope_names.setdefault(scopes, len(self.scope_names)), dtype=np.int32)
        else:
            enc = pc.dictionary_encode(scopes)
            ids = np.array([self.scope_names.setdefault(v, len(self.scope_names)) for v in enc.dictionary.to_pylist()],
                           dtype=np.int32)
            sc = ids[enc.indices.to_numpy()] if len(ids) else np.empty(0, dtype=np.int32)
        self.keys.append(keys)
        self.scope.append(sc)
        self.h.append(h)
        self.nchars.append(nchars)
        self.status.append(st)

    def finish(self) -> _Rows:
        def cat(xs: list[np.ndarray], dt: type[np.generic]) -> np.ndarray:
            return np.concatenate(xs) if xs else np.empty(0, dtype=dt)

        keys = pa.chunked_array(self.keys, type=pa.string()) if self.keys else pa.chunked_array([], pa.string())
        return _Rows(keys, cat(self.scope, np.int32), cat(self.h, np.uint64), cat(self.nchars, np.int64),
                     cat(self.status, np.int8), [s for s, _ in sorted(self.scope_names.items(), key=lambda x: x[1])])


@dataclass
class _Rows:
    keys: pa.ChunkedArray
    scope: np.ndarray
    h: np.ndarray
    nchars: np.ndarray
    status: np.ndarray
    scope_names: list[str]

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``item`` per row (-1 if skipped), the representative row and scope of each item.

        Items are the distinct (scope, normal form) pairs (a normal form compared by its
        64-bit hash), numbered in (scope, hash) order; the representative is the item's
        first row."""
        ok = np.flatnonzero(self.status == _OK)
        item = np.full(len(self.status), -1, dtype=np.int64)
        if len(ok) == 0:
            e = np.empty(0, dtype=np.int64)
            return item, e, e.astype(np.int32)
        order = ok[np.lexsort((ok, self.h[ok], self.scope[ok]))]
        hs, ss = self.h[order], self.scope[order]
        new = np.ones(len(order), dtype=bool)
        new[1:] = (hs[1:] != hs[:-1]) | (ss[1:] != ss[:-1])
        ids = np.cumsum(new) - 1
        item[order] = ids
        reps = order[new]
        return item, reps, self.scope[reps]


class _Pass2:
    """Per item (distinct text), in item order: shingle sets, band keys, word hashes."""

    def __init__(self, config: DedupConfig, item_scope: np.ndarray) -> None:
        self.config = config
        self.item_scope = item_scope
        self.bands, self.rows = config.lsh()
        self.keys = np.empty((len(item_scope), self.bands), dtype=np.uint64)
        self.parts: list[Shingled] = []
        self.words: list[WordHashes] = []
        self.done = 0
        self.t_shingle = self.t_sign = 0.0

    def add(self, texts: pa.Array) -> None:
        t0 = time.perf_counter()
        tk = tokenize(normalize_array(texts))
        sh = shingle_hashes(tk, self.config.shingle)
        if self.config.edit_min_words:
            self.words.append(word_hashes(tk, self.config.edit_min_words))
        t1 = time.perf_counter()
        sig = signatures(sh, self.config.num_perm, self.config.seed)
        sl = slice(self.done, self.done + len(texts))
        self.keys[sl] = band_keys(sig, self.bands, self.rows, self.item_scope[sl])
        self.t_shingle += t1 - t0
        self.t_sign += time.perf_counter() - t1
        self.parts.append(sh)
        self.done += len(texts)

    def finish(self) -> tuple[Shingled, WordHashes]:
        if self.done != len(self.item_scope):
            raise CurateError(f"dedup read {self.done} distinct texts back, expected {len(self.item_scope)}")
        words = WordHashes.concat(self.words) if self.words else WordHashes(np.zeros(self.done + 1, dtype=np.int64),
                                                                           np.empty(0, dtype=np.uint64))
        if not self.parts:
            return Shingled(np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.uint32), np.empty(0, dtype=bool)), words
        indptr = [np.zeros(1, dtype=np.int64)]
        off = 0
        for p in self.parts:
            indptr.append(p.indptr[1:] + off)
            off += int(p.indptr[-1])
        return Shingled(np.concatenate(indptr), np.concatenate([p.data for p in self.parts]),
                        np.concatenate([p.short for p in self.parts])), words


def _group(config: DedupConfig, rows: _Rows, item: np.ndarray, item_scope: np.ndarray, sh: Shingled,
           words: WordHashes, keys: np.ndarray,
           timings: dict[str, float]) -> tuple[pa.Table, pa.Table, dict[str, ScopeStats], dict[str, int]]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_items = len(item_scope)
    t0 = time.perf_counter()
    ci, cj, large = candidate_pairs(keys, config.max_bucket)
    t1 = time.perf_counter()
    same = item_scope[ci] == item_scope[cj]
    ci, cj = ci[same], cj[same]
    jac = jaccard_pairs(sh, ci, cj)
    ok = jac >= config.threshold
    t2 = time.perf_counter()
    es, el = edit_pairs(words, config.edit_min_words, item_scope)
    edits = sorted_unique(_pair_keys(es, el, max(n_items, 1)))
    t_edit = time.perf_counter() - t2
    ei, ej = np.concatenate([ci[ok], es]), np.concatenate([cj[ok], el])
    if n_items:
        graph = coo_matrix((np.ones(len(ei), dtype=np.int8), (ei, ej)), shape=(n_items, n_items))
        _, comp = connected_components(graph, directed=False)
    else:
        comp = np.empty(0, dtype=np.int64)

    analysed = np.flatnonzero(item >= 0)
    row_comp = comp[item[analysed]]
    size = np.bincount(row_comp, minlength=n_items) if n_items else np.empty(0, dtype=np.int64)
    member_rows = analysed[size[row_comp] > 1]
    mcomp = comp[item[member_rows]]
    # keep rule: sort members by (component, primary key, caption key), first of each run is kept
    key_rank = _key_rank(rows.keys, member_rows)
    primary = {"min_id": np.zeros(len(member_rows), dtype=np.int64),
               "longest": -rows.nchars[member_rows], "shortest": rows.nchars[member_rows]}[config.keep]
    order = np.lexsort((key_rank, primary, mcomp))
    member_rows, mcomp, key_rank = member_rows[order], mcomp[order], key_rank[order]
    m_item = item[member_rows]
    if config.grouping == "components":
        first = np.ones(len(member_rows), dtype=bool)
        first[1:] = mcomp[1:] != mcomp[:-1]
        center = np.flatnonzero(first)[np.cumsum(first) - 1]
        sim = _similarity(sh, m_item, m_item[center], n_items)
    else:
        center, sim = _centers(sh, edits, m_item, mcomp, config.threshold, n_items)
        # a member left alone by the split is no longer a duplicate
        alone = np.bincount(center, minlength=len(center))[center] == 1
        keep_rows = ~alone
        remap = np.cumsum(keep_rows) - 1
        member_rows, key_rank, m_item = member_rows[keep_rows], key_rank[keep_rows], m_item[keep_rows]
        center, sim = remap[center[keep_rows]], sim[keep_rows]
        # members of one center together, the center first (centers precede their members)
        order = np.lexsort((np.arange(len(center)), center))
        member_rows, key_rank, m_item, center, sim = (member_rows[order], key_rank[order], m_item[order],
                                                      center[order], sim[order])
        inv = np.empty(len(order), dtype=np.int64)
        inv[order] = np.arange(len(order))
        center = inv[center]
    first = center == np.arange(len(center))
    run = np.cumsum(first) - 1
    kept_row = member_rows[center]
    kept_item = item[kept_row]
    similar = sim >= config.threshold
    edit = ~similar & is_pair(edits, max(n_items, 1), m_item, kept_item)
    method = np.where(m_item == kept_item, "exact", np.where(similar, np.where(sh.short[m_item], "short", "minhash"),
                                                             np.where(edit, "edit", "minhash")))
    # group ids: groups ordered by (scope name, kept caption key)
    g_scope = rows.scope[kept_row[first]]
    g_name_rank = np.argsort(np.argsort(np.array(rows.scope_names, dtype=object)))[g_scope] if len(g_scope) else g_scope
    g_order = np.lexsort((key_rank[first], g_name_rank))
    gid = np.empty(len(g_order), dtype=np.int64)
    gid[g_order] = np.arange(1, len(g_order) + 1)
    gsize = np.bincount(run)
    names = np.array(rows.scope_names, dtype=object)
    groups = pa.table({
        "scope": pa.array(names[rows.scope[member_rows]] if len(member_rows) else [], pa.string()),
        "group_id": pa.array(gid[run], pa.int64()),
        "member_id": rows.keys.take(pa.array(member_rows, pa.int64())).combine_chunks()
        if len(member_rows) else pa.array([], pa.string()),
        "kept": pa.array(first),
        "similarity": pa.array(sim),
        "method": pa.array(method.tolist() if len(m_item) else [], pa.string()),
        "group_size": pa.array(gsize[run].astype(np.int32)),
    }, schema=_GROUPS_SCHEMA)
    groups = groups.sort_by([("group_id", "ascending"), ("kept", "descending"), ("member_id", "ascending")])

    skipped_rows = np.flatnonzero(rows.status != _OK)
    skipped = pa.table({
        "scope": pa.array(names[rows.scope[skipped_rows]] if len(skipped_rows) else [], pa.string()),
        "member_id": rows.keys.take(pa.array(skipped_rows, pa.int64())).combine_chunks()
        if len(skipped_rows) else pa.array([], pa.string()),
        "reason": pa.array([_REASONS[int(s)] for s in rows.status[skipped_rows]], pa.string()),
    }, schema=_SKIPPED_SCHEMA)

    stats: dict[str, ScopeStats] = {}
    for sid, name in enumerate(rows.scope_names):
        s = ScopeStats(name)
        in_scope = rows.scope == sid
        s.items = int(in_scope.sum())
        s.skipped = int((in_scope & (rows.status != _OK)).sum())
        s.distinct_items = int((item_scope == sid).sum())
        s.exact_removed = s.analysed - s.distinct_items
        s.groups = int((g_scope == sid).sum())
        s.members = int((rows.scope[member_rows] == sid).sum())
        s.removed = s.members - s.groups
        stats[name] = s
    timings.update({"lsh_candidates": t1 - t0, "verify": t2 - t1, "edits": t_edit,
                    "groups": time.perf_counter() - t2 - t_edit})
    extra = {"candidates": int(len(ci)), "verified": int(ok.sum()), "large_buckets": int(large),
             "edit_pairs": int(len(es))}
    return groups, skipped, dict(sorted(stats.items())), extra


def _similarity(sh: Shingled, a: np.ndarray, b: np.ndarray, n_items: int) -> np.ndarray:
    """Jaccard similarity of items ``a[k]`` and ``b[k]`` (1 where they are the same item)."""
    sim = np.ones(len(a), dtype=np.float64)
    diff = a != b
    if diff.any():
        n = max(n_items, 1)
        lo, hi = np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])
        pk = sorted_unique(lo * n + hi)
        vals = jaccard_pairs(sh, pk // n, pk % n)
        sim[diff] = vals[np.searchsorted(pk, lo * n + hi)]
    return sim


def _centers(sh: Shingled, edits: np.ndarray, m_item: np.ndarray, mcomp: np.ndarray, threshold: float,
             n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Split each component into groups around centers: the first remaining member (in
    keep order) is a center; every remaining member of its component that is a near
    duplicate of it (at least ``threshold`` similar, or one of the ``edits`` pairs with it)
    joins it; repeat with the rest. Rows are sorted by component and keep order. Returns
    each row's center position and its similarity to it."""
    center = np.full(len(m_item), -1, dtype=np.int64)
    sim = np.ones(len(m_item), dtype=np.float64)
    remaining = np.arange(len(m_item))
    while len(remaining):
        rc = mcomp[remaining]
        first = np.ones(len(remaining), dtype=bool)
        first[1:] = rc[1:] != rc[:-1]
        cpos = remaining[np.flatnonzero(first)[np.cumsum(first) - 1]]
        s = _similarity(sh, m_item[remaining], m_item[cpos], n_items)
        join = (s >= threshold) | (remaining == cpos) | is_pair(edits, max(n_items, 1), m_item[remaining],
                                                                m_item[cpos])
        center[remaining[join]] = cpos[join]
        sim[remaining[join]] = s[join]
        remaining = remaining[~join]
    return center, sim


def _key_rank(keys: pa.ChunkedArray, rows: np.ndarray) -> np.ndarray:
    """Rank of each selected row's key in string order (the min_id keep rule's order)."""
    if len(rows) == 0:
        return np.empty(0, dtype=np.int64)
    import pyarrow.compute as pc

    sub = keys.take(pa.array(rows, pa.int64()))
    idx = pc.sort_indices(sub).to_numpy()
    rank = np.empty(len(rows), dtype=np.int64)
    rank[idx] = np.arange(len(rows))
    return rank


def _run(config: DedupConfig, batches: Iterable[tuple[pa.Array, pa.Array | str, pa.Array]],
         rep_texts: Callable[[_Rows, np.ndarray], Iterable[pa.Array]]) -> DedupResult:
    """The two passes. ``batches`` yields (keys, scopes or one scope, texts) as Arrow
    arrays; ``rep_texts(rows, reps)`` yields arrays of the representative texts in item order."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    p1 = _Pass1()
    for keys, scopes, texts in batches:
        p1.add(keys, scopes, texts)
    rows = p1.finish()
    item, reps, item_scope = rows.items()
    timings["normalise"] = time.perf_counter() - t0
    p2 = _Pass2(config, item_scope)
    for rep_batch in rep_texts(rows, reps):
        p2.add(rep_batch)
    sh, words = p2.finish()
    timings["shingles"], timings["signatures"] = p2.t_shingle, p2.t_sign
    groups, skipped, stats, extra = _group(config, rows, item, item_scope, sh, words, p2.keys, timings)
    return DedupResult(config, groups, skipped, stats, time.perf_counter() - t0, extra["candidates"],
                       extra["verified"], extra["large_buckets"], extra["edit_pairs"], timings=timings)


def find_duplicates(texts: list[str | None], *, keys: list[str] | None = None, scopes: list[str] | None = None,
                    batch_size: int = 50_000, **config: Any) -> DedupResult:
    """Dedup texts held in memory (``None`` allowed). ``keys`` name the members (default
    ``"0"``, ``"1"``, ...); ``scopes`` (default all ``"*"``) are what groups may not
    cross. ``config``: the :class:`DedupConfig` fields except ``variant``/``across_variants``."""
    cfg = DedupConfig(**config)
    n = len(texts)
    key_arr = pa.array(keys if keys is not None else [str(i) for i in range(n)], pa.string())
    scope_arr = pa.array(scopes, pa.string()) if scopes is not None else None
    if len(key_arr) != n or (scope_arr is not None and len(scope_arr) != n):
        raise ConfigError(f"keys and scopes must have one entry per text ({n})")
    text_arr = as_large_string(texts)

    def batches() -> Iterator[tuple[pa.Array, pa.Array | str, pa.Array]]:
        for s in range(0, n, batch_size):
            sc = ACROSS if scope_arr is None else scope_arr.slice(s, batch_size)
            yield key_arr.slice(s, batch_size), sc, text_arr.slice(s, batch_size)

    def rep_texts(rows: _Rows, reps: np.ndarray) -> Iterator[pa.Array]:
        for s in range(0, len(reps), batch_size):
            yield text_arr.take(pa.array(reps[s:s + batch_size], pa.int64()))

    return _run(cfg, batches(), rep_texts)


# -- the store -----------------------------------------------------------------------
def ensure_tables(store: Store) -> None:
    store.con.execute(TABLES_SQL)


def dedup_captions(store: Store, *, variant: str | Iterable[str] | None = None, across_variants: bool = False,
                   threshold: float = 0.8, num_perm: int = 128, shingle: int = 3,
                   keep: Literal["min_id", "longest", "shortest"] = "min_id", seed: int = 1,
                   bands: int | None = None, rows: int | None = None, max_bucket: int = 1000,
                   grouping: Literal["center", "components"] = "center", edit_min_words: int = 4,
                   batch_size: int = 50_000) -> DedupResult:
    """Find exact and near-duplicate captions of the store and write them (see the module
    docstring). ``variant``: one variant, several, or None for all."""
    if store.read_only:
        raise CurateError(f"store {store.path} is open read-only")
    cfg = DedupConfig(variant=(variant,) if isinstance(variant, str) else None if variant is None else tuple(variant),
                      across_variants=across_variants, threshold=threshold, num_perm=num_perm, shingle=shingle,
                      keep=keep, seed=seed, bands=bands, rows=rows, max_bucket=max_bucket,
                      grouping=grouping, edit_min_words=edit_min_words)
    con = store.con
    if cfg.variant is not None:
        have = {r[0] for r in con.execute("SELECT DISTINCT variant FROM captions").fetchall()}
        missing = [v for v in cfg.variant if v not in have]
        if missing:
            raise ConfigError(f"the store has no captions of variant(s) {', '.join(missing)}; "
                              f"variants: {', '.join(sorted(have)) or 'none'}")
    ensure_tables(store)
    where = "" if cfg.variant is None else "WHERE variant IN (SELECT unnest($variants))"
    params = {} if cfg.variant is None else {"variants": list(cfg.variant)}

    def batches() -> Iterator[tuple[pa.Array, pa.Array | str, pa.Array]]:
        cur = con.cursor()
        try:
            sql = f"SELECT caption_id::VARCHAR AS caption_id, variant, text FROM captions {where}"
            reader = cur.sql(sql, params=params or None).to_arrow_reader(batch_size)
            for b in reader:
                yield b.column(0), ACROSS if cfg.across_variants else b.column(1), b.column(2)
        finally:
            cur.close()

    def rep_texts(rs: _Rows, reps: np.ndarray) -> Iterator[pa.Array]:
        rep_keys = rs.keys.take(pa.array(reps, pa.int64()))
        cur = con.cursor()
        try:
            cur.register("_curate_dedup_reps", pa.table({"caption_id": rep_keys,
                                                        "item": pa.array(np.arange(len(reps)), pa.int64())}))
            reader = cur.sql("SELECT r.item, c.text FROM captions c JOIN _curate_dedup_reps r "
                             "ON c.caption_id = r.caption_id::UUID ORDER BY r.item").to_arrow_reader(batch_size)
            for b in reader:
                yield b.column(1)
        finally:
            cur.unregister("_curate_dedup_reps")
            cur.close()

    with start_run(store, "dedup", STAGE, cfg.resolved(), options={"batch_size": batch_size},
                   hash=cfg.config_hash()) as run:
        res = _run(cfg, batches(), rep_texts)
        res.run_id = run.id
        _write(run, res)
    return res


def _write(run: Run, res: DedupResult) -> None:
    """Replace this config's rows and finish the runs row, in one transaction."""
    summary = pa.table({
        "scope": [s.scope for s in res.scopes.values()],
        "items": pa.array([s.items for s in res.scopes.values()], pa.int64()),
        "skipped": pa.array([s.skipped for s in res.scopes.values()], pa.int64()),
        "distinct_items": pa.array([s.distinct_items for s in res.scopes.values()], pa.int64()),
        "exact_removed": pa.array([s.exact_removed for s in res.scopes.values()], pa.int64()),
        "groups": pa.array([s.groups for s in res.scopes.values()], pa.int64()),
        "members": pa.array([s.members for s in res.scopes.values()], pa.int64()),
        "removed": pa.array([s.removed for s in res.scopes.values()], pa.int64()),
        "exact_rate": pa.array([s.exact_rate for s in res.scopes.values()], pa.float64()),
        "near_rate": pa.array([s.near_rate for s in res.scopes.values()], pa.float64()),
    })
    h = run.hash
    meta = "$kind AS kind, $config_hash AS config_hash, $run_id AS run_id"
    p = {"kind": KIND, "config_hash": h, "run_id": run.id}
    with run.transaction() as w:
        try:
            for t in ("dedup_groups", "dedup_skipped", "dedup_summary"):
                w.execute(f"DELETE FROM {t} WHERE kind = $kind AND config_hash = $config_hash",
                          {"kind": KIND, "config_hash": h})
            w.register("_curate_dedup_groups", res.groups)
            w.register("_curate_dedup_skipped", res.skipped)
            w.register("_curate_dedup_summary", summary)
            w.execute(f"INSERT INTO dedup_groups BY NAME SELECT * REPLACE (member_id::UUID AS member_id), "
                      f"'caption_id' AS member_kind, {meta} FROM _curate_dedup_groups", p)
            w.execute(f"INSERT INTO dedup_skipped BY NAME SELECT * REPLACE (member_id::UUID AS member_id), "
                      f"'caption_id' AS member_kind, {meta} FROM _curate_dedup_skipped", p)
            w.execute(f"INSERT INTO dedup_summary BY NAME SELECT *, $threshold AS threshold, {meta} "
                      f"FROM _curate_dedup_summary", {**p, "threshold": res.config.threshold})
            items = sum(s.items for s in res.scopes.values())
            skipped = sum(s.skipped for s in res.scopes.values())
            res.seconds = run.seconds
            run.ok(w, rows_in=items, rows_out=res.groups.num_rows, rows_rejected=skipped, seconds=res.seconds)
        finally:
            for t in ("_curate_dedup_groups", "_curate_dedup_skipped", "_curate_dedup_summary"):
                try:
                    w.unregister(t)
                except Exception:  # noqa: BLE001 - not registered because an earlier step failed
                    pass


def repetition(store: Store) -> pa.Table:
    """Repetition rate per variant: the named query ``dedup.repetition``."""
    ensure_tables(store)
    return store.query("dedup.repetition").to_arrow_table()
