"""Writing embedding sets: :func:`write_set` (validated, atomic), :class:`Block` for sets
larger than memory, :class:`WriteResult`, and :func:`drop_set`.

**Validation** (:func:`write_set`, so every importer and the CLIP stage get it):

* an empty set, a non-2-D array, a dimension other than the declared/first block's,
  duplicate ids, ids that are not UUIDs or not in the store: :class:`InputError`,
  nothing written;
* NaN or infinite values, all-zero vectors: ``on_bad="error"`` (default) raises naming
  the count and the first row; ``on_bad="quarantine"`` leaves those rows out and
  records each in ``rejects`` (``source = 'vectors:<name>'``, reason ``nan or inf`` /
  ``zero vector``) in the same transaction as the set;
* unnormalised rows (|norm - 1| > :data:`NORM_TOL`): ``normalise="auto"`` (default)
  divides them by their norm and reports how many in the result and the run's message;
  ``normalise="error"`` raises instead. Every row is divided by its float32 norm before
  the cast to float16, so stored norms are 1 to float16 precision (about 1e-3).

**Atomic.** Files are written to a temporary folder beside the set; the registry row,
rejects and the ``runs`` row (kind ``'vectors'``) are committed in one transaction and
the folder is renamed into place just before the commit. A failure leaves no folder and
no row; ``replace=True`` swaps a set atomically in the same way.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import names
from ..errors import ConfigError, InputError, StoreError
from ..store import Store
from .read import EMB_DIR, ID_COLUMN, KINDS, check_name, ensure_table, list_sets, open_set

NORM_TOL = 1e-2
DEFAULT_SHARD_ROWS = 500_000


@dataclass
class WriteResult:
    name: str
    kind: str
    dim: int
    count: int
    normalised: int
    rejected: dict[str, int]
    run_id: int
    seconds: float
    path: Path

    def summary(self) -> str:
        rej = sum(self.rejected.values())
        parts = [f"vector set {self.name!r}: {self.count:,} {self.kind} vectors of dim {self.dim} written "
                 f"(float16, L2-normalised)"]
        if self.normalised:
            parts.append(f"{self.normalised:,} rows had |norm - 1| > {NORM_TOL} and were normalised")
        if rej:
            reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.rejected.items()))
            parts.append(f"{rej:,} rows quarantined ({reasons}); see `curate sql --query store.rejects`")
        parts.append(f"{self.seconds:.1f}s, run {self.run_id}")
        return "; ".join(parts)


@dataclass
class Block:
    """A block of vectors with their ids, plus references for reject rows."""

    vectors: np.ndarray
    ids: Sequence[Any] | pa.Array
    refs: Sequence[str] | None = None  # e.g. 'img_emb_0.npy:17'


@dataclass
class _Rejects:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # row_ref, reason, detail, record

    def add(self, ref: str, reason: str, detail: str, record: str = "") -> None:
        self.rows.append((ref, reason, detail, record[:1000]))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, r, _, _ in self.rows:
            out[r] = out.get(r, 0) + 1
        return out


def _ids_array(ids: Sequence[Any] | pa.Array, n: int, what: str) -> pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        ids = pa.array([str(i) if isinstance(i, uuid.UUID) else i for i in ids])
    if len(ids) != n:
        raise InputError(f"{what}: {n:,} vectors but {len(ids):,} ids; they must be in the same order, one each")
    if not pa.types.is_string(ids.type) and not pa.types.is_large_string(ids.type):
        ids = ids.cast(pa.string())
    return ids


def write_set(store: Store, name: str, vectors: np.ndarray | Iterable[Block] | None = None,
              ids: Sequence[Any] | pa.Array | None = None, *, kind: Literal["image", "text", "concept"] = "image",
              model: str | None = None, variant: str | None = None, dim: int | None = None,
              normalise: Literal["auto", "error"] = "auto", on_bad: Literal["error", "quarantine"] = "error",
              replace: bool = False, shard_rows: int = DEFAULT_SHARD_ROWS, source: str | None = None,
              rejects: Iterable[tuple[str, str, str, str]] = (), stage: str = "vectors.write.v1",
              config: dict[str, Any] | None = None) -> WriteResult:
    """Validate and write an embedding set (see the module docstring for the rules).

    ``vectors`` is a float array ``(n, dim)`` with ``ids`` (n strings or UUIDs), or an
    iterable of :class:`Block` for sets larger than memory. ``rejects`` are reject rows
    found by an importer before this call (row_ref, reason, detail, record); they are
    written with the set; they are read after ``vectors`` is consumed, so an importer may
    append to a list while its blocks are read."""
    from ..runs import start_run

    check_name(name)
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if normalise not in ("auto", "error"):
        raise ConfigError(f"normalise must be 'auto' or 'error', got {normalise!r}")
    if on_bad not in ("error", "quarantine"):
        raise ConfigError(f"on_bad must be 'error' or 'quarantine', got {on_bad!r}")
    if shard_rows < 1:
        raise ConfigError(f"shard_rows must be at least 1, got {shard_rows}")
    if store.read_only:
        raise StoreError(f"store {store.path} is open read-only")
    ensure_table(store)
    exists = name in list_sets(store)
    if exists and not replace:
        raise ConfigError(f"vector set {name!r} exists; choose another name or pass replace=True (--replace)")
    if isinstance(vectors, np.ndarray):
        if ids is None:
            raise InputError(f"vector set {name}: ids are required, one per vector")
        blocks: Iterable[Block] = [Block(vectors, ids)]
    elif vectors is None:
        raise InputError(f"vector set {name}: no vectors given")
    else:
        blocks = vectors
    id_col = ID_COLUMN[kind]
    cfg = {"name": name, "kind": kind, "model": model, "variant": variant, "normalise": normalise,
           "on_bad": on_bad, "shard_rows": shard_rows, "source": source, **(config or {})}
    root = store.path / "vectors"
    final = names.under(root, name)
    root.mkdir(exist_ok=True)
    tmp = names.under(root, f".tmp-{name}-{uuid.uuid4().hex[:8]}")
    rej = _Rejects()
    with start_run(store, "vectors", stage, cfg) as run:
        try:
            meta, n_in, normalised = _write_files(tmp, blocks, kind, id_col, dim, normalise, on_bad, shard_rows,
                                                  rej, name)
            for r in rejects:  # an importer's rejects, collected while its blocks were read
                rej.add(*r)
            count = meta["count"]
            if count == 0:
                raise InputError(f"vector set {name}: no vectors to write (empty set"
                                 + (f"; all {n_in:,} rows were rejected" if n_in else "") + ")")
            _check_ids(store, tmp, id_col, name)
            meta.update({"name": name, "model": model, "variant": variant, "source": source, "run_id": run.id,
                         "layout": "clip-retrieval", "curate_stage": stage})
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            trash = names.under(root, f".old-{name}-{uuid.uuid4().hex[:8]}")
            with run.transaction() as w:
                if exists:
                    w.execute("DELETE FROM vector_sets WHERE name = ?", [name])
                w.execute(
                    "INSERT INTO vector_sets VALUES (?, ?, ?, ?, ?, ?, ?, 'float16', true, ?, ?, ?, now())",
                    [name, kind, id_col, model, variant, meta["dim"], count, len(meta["shards"]), source, run.id])
                if rej.rows:
                    w.executemany(
                        "INSERT INTO rejects (run_id, source, row_ref, reason, detail, record) VALUES (?, ?, ?, ?, ?, ?)",
                        [[run.id, f"vectors:{name}", *r] for r in rej.rows])
                msg = f"{normalised} rows normalised" if normalised else None
                run.commit_ok(w, n_in, count, len(rej.rows), msg)
                if final.exists():
                    final.rename(trash)
                try:
                    tmp.rename(final)
                except OSError:
                    if trash.exists():
                        trash.rename(final)
                    raise
            shutil.rmtree(trash, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return WriteResult(name, kind, meta["dim"], count, normalised, rej.counts(), run.id, run.seconds, final)


def canonical_uuids(ids: pa.Array) -> pa.Array:
    """UUID strings in one form, the canonical one (lower case, 8-4-4-4-12 with dashes),
    whatever form they came in (32 hex digits as DataComp writes them, upper case);
    values that are not UUIDs are left as they are for :func:`_check_ids` to report."""
    hexes = pc.replace_substring(pc.utf8_lower(ids), "-", "")
    ok = pc.match_substring_regex(hexes, "^[0-9a-f]{32}$")
    parts = [pc.utf8_slice_codeunits(hexes, a, b) for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))]
    return pc.if_else(ok, pc.binary_join_element_wise(*parts, "-"), ids)


def shard_width(n_shards: int) -> int:
    """Digits of a shard number, as clip-retrieval pads them (``int(log10(count)) + 1``):
    ``img_emb_00.npy`` ... ``img_emb_10.npy`` for 11 shards, so the names sort in row order."""
    return len(str(max(n_shards, 1)))


def _pad_shard_names(tmp: Path, shards: list[dict[str, Any]]) -> None:
    """Rename ``<dir>_<i>`` shards (written before their number was known) to padded names."""
    width = shard_width(len(shards))
    if width == 1:
        return
    for i, sh in enumerate(shards):
        for key in ("emb", "metadata"):
            old = sh[key]
            folder, _, fname = old.rpartition("/")
            stem, ext = fname.rsplit("_", 1)[0], fname.rsplit(".", 1)[1]
            new = f"{folder}/{stem}_{i:0{width}d}.{ext}"
            (tmp / old).rename(tmp / new)
            sh[key] = new


def _write_files(tmp: Path, blocks: Iterable[Block], kind: str, id_col: str, dim: int | None, normalise: str,
                 on_bad: str, shard_rows: int, rej: _Rejects, name: str) -> tuple[dict[str, Any], int, int]:
    emb_dir = EMB_DIR[kind]
    (tmp / emb_dir).mkdir(parents=True)
    (tmp / "metadata").mkdir()
    shards: list[dict[str, Any]] = []
    buf_v: list[np.ndarray] = []
    buf_i: list[pa.Array] = []
    buffered = 0
    n_in = normalised = 0

    def flush() -> None:
        nonlocal buf_v, buf_i, buffered
        if not buffered:
            return
        i = len(shards)
        emb, ids_ = np.concatenate(buf_v), pa.concat_arrays(buf_i)
        np.save(tmp / emb_dir / f"{emb_dir}_{i}.npy", emb)
        pq.write_table(pa.table({id_col: ids_}), tmp / "metadata" / f"metadata_{i}.parquet")
        shards.append({"emb": f"{emb_dir}/{emb_dir}_{i}.npy", "metadata": f"metadata/metadata_{i}.parquet",
                       "rows": int(len(emb))})
        buf_v, buf_i, buffered = [], [], 0

    for block in blocks:
        v = np.asarray(block.vectors)
        if v.ndim != 2:
            raise InputError(f"vector set {name}: vectors must be a 2-D array (rows, dim), got shape {v.shape}")
        if not np.issubdtype(v.dtype, np.floating):
            raise InputError(f"vector set {name}: vectors must be floating point, got {v.dtype}")
        if dim is None:
            dim = int(v.shape[1])
        refs = block.refs
        if v.shape[1] != dim:
            where = f"; first: {refs[0]}" if refs is not None and len(refs) else ""
            raise InputError(f"vector set {name}: wrong dimension: expected {dim}, got {v.shape[1]} "
                             f"(rows {n_in:,}..{n_in + len(v) - 1:,}{where}); every vector of a set has one dimension")
        ids_ = _ids_array(block.ids, len(v), f"vector set {name}")
        if id_col != "concept":
            ids_ = canonical_uuids(ids_)
        x = v.astype(np.float32)
        finite: npt.NDArray[np.bool_] = np.all(np.isfinite(x), axis=1)
        norms = np.linalg.norm(np.where(finite[:, None], x, 0), axis=1)
        zero = finite & (norms == 0)
        bad = ~finite | zero
        if bad.any():
            first = int(np.nonzero(bad)[0][0])
            ref = refs[first] if refs is not None else f"row {n_in + first}"
            if on_bad == "error":
                raise InputError(
                    f"vector set {name}: {int((~finite).sum()):,} vectors contain NaN or inf and {int(zero.sum()):,} "
                    f"are all zeros (first: {ref}, id {ids_[first].as_py()}); fix the input or pass "
                    "on_bad='quarantine' (--on-bad quarantine) to leave them out as rejects")
            for j in np.nonzero(bad)[0]:
                rej.add(refs[int(j)] if refs is not None else f"row {n_in + int(j)}",
                        "nan or inf" if not finite[j] else "zero vector", f"id {ids_[int(j)].as_py()}",
                        str(ids_[int(j)].as_py()))
        off = np.abs(norms - 1.0) > NORM_TOL
        off &= ~bad
        if off.any():
            if normalise == "error":
                row = int(np.nonzero(off)[0][0])
                raise InputError(f"vector set {name}: {int(off.sum()):,} vectors are not L2-normalised "
                                 f"(first: row {n_in + row}, norm {norms[row]:.4g}); normalise them or use normalise='auto'")
            normalised += int(off.sum())
        n_in += len(v)
        keep = ~bad
        if not keep.all():
            x, norms, ids_ = x[keep], norms[keep], ids_.filter(pa.array(keep))
        x /= norms[:, None]
        x16 = x.astype(np.float16)
        pos = 0
        while pos < len(x16):
            take = min(shard_rows - buffered, len(x16) - pos)
            buf_v.append(x16[pos:pos + take])
            buf_i.append(ids_.slice(pos, take))
            buffered += take
            pos += take
            if buffered >= shard_rows:
                flush()
    flush()
    _pad_shard_names(tmp, shards)
    count = sum(s["rows"] for s in shards)
    meta = {"kind": kind, "id_column": id_col, "dim": dim, "count": count, "dtype": "float16",
            "normalised": True, "shards": shards}
    return meta, n_in, normalised


def _check_ids(store: Store, tmp: Path, id_col: str, name: str) -> None:
    """Duplicate ids, non-UUID ids and ids unknown to the store fail the write."""
    glob = str(tmp / "metadata" / "metadata_*.parquet")
    cur = store.con.cursor()
    try:
        col = f'"{id_col}"'
        dup = cur.execute(f"SELECT {col}, count(*) FROM read_parquet(?) GROUP BY 1 HAVING count(*) > 1 "
                          f"ORDER BY 2 DESC, 1 LIMIT 1", [glob]).fetchall()
        if dup:
            n = cur.execute(f"SELECT count(*) FROM (SELECT {col} FROM read_parquet(?) GROUP BY 1 HAVING count(*) > 1)",
                            [glob]).fetchall()[0][0]
            raise InputError(f"vector set {name}: {n:,} duplicate ids (e.g. {dup[0][0]!r} {dup[0][1]} times); "
                             "each id may have one vector")
        if id_col == "concept":
            return
        notuuid = cur.execute(f"SELECT {col} FROM read_parquet(?) WHERE TRY_CAST({col} AS UUID) IS NULL LIMIT 1",
                              [glob]).fetchall()
        if notuuid:
            raise InputError(f"vector set {name}: id {notuuid[0][0]!r} is not a UUID ({id_col} values are UUIDs)")
        table = "samples" if id_col == "uid" else "captions"
        missing = cur.execute(
            f"SELECT count(*), min({col}) FROM read_parquet(?) p ANTI JOIN {table} t ON t.{id_col} = p.{col}::UUID",
            [glob]).fetchall()[0]
        if missing[0]:
            raise InputError(f"vector set {name}: {missing[0]:,} ids are not in {table}.{id_col} (e.g. {missing[1]}); "
                             "ingest the samples first, or import through an importer that quarantines them")
    finally:
        cur.close()


def drop_set(store: Store, name: str) -> None:
    """Remove a set's registry row and folder (the row first, in a transaction)."""
    path = open_set(store, name).path
    store.con.execute("DELETE FROM vector_sets WHERE name = ?", [name])
    shutil.rmtree(path, ignore_errors=True)
