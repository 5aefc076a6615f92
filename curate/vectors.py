"""Embedding sets: L2-normalised float16 vectors in the store's ``vectors/`` folder.

Layout (clip-retrieval's, so FAISS and clip-retrieval tools can memory-map it)::

    vectors/<name>/meta.json                      model, dim, kind, variant, count, dtype, normalised, shards
    vectors/<name>/img_emb/img_emb_<i>.npy        float16 (rows, dim), L2-normalised  (text sets: text_emb/)
    vectors/<name>/metadata/metadata_<i>.parquet  one id column in the same row order

The id column is ``uid`` for image sets (``samples.uid``), ``caption_id`` for text sets
(``captions.caption_id``) and ``concept`` (free text) for concept sets, such as the text
embeddings of a tag vocabulary. Ids are written as canonical UUID strings; every set
is registered in the ``vector_sets`` table (created here, not by a migration).

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
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ConfigError, InputError, StoreError
from .store import Store

KINDS = ("image", "text", "concept")
ID_COLUMN = {"image": "uid", "text": "caption_id", "concept": "concept"}
EMB_DIR = {"image": "img_emb", "text": "text_emb", "concept": "text_emb"}
NORM_TOL = 1e-2
DEFAULT_SHARD_ROWS = 500_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

TABLE_SQL = """
CREATE TABLE IF NOT EXISTS vector_sets (
    name        VARCHAR NOT NULL,   -- folder under vectors/
    kind        VARCHAR NOT NULL,   -- image | text | concept
    id_column   VARCHAR NOT NULL,   -- uid | caption_id | concept
    model       VARCHAR,            -- embedding model, e.g. ViT-B-32/openai
    variant     VARCHAR,            -- caption variant embedded (text sets)
    dim         INTEGER NOT NULL,
    count       BIGINT NOT NULL,
    dtype       VARCHAR NOT NULL,   -- float16
    normalised  BOOLEAN NOT NULL,
    shards      INTEGER NOT NULL,
    source      VARCHAR,            -- where the vectors came from (importer and path)
    run_id      BIGINT NOT NULL,
    created_at  TIMESTAMP NOT NULL
)
"""


def ensure_table(store: Store) -> None:
    store.con.execute(TABLE_SQL)


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ConfigError(f"vector set name {name!r} must be 1-100 letters, digits, '_', '.' or '-' "
                          "(starting with a letter or digit)")
    return name


# -- reading -------------------------------------------------------------------------
@dataclass(frozen=True)
class VectorSet:
    """A registered embedding set. Rows are numbered 0..count-1 across shards in order."""

    name: str
    path: Path
    kind: str
    id_column: str
    dim: int
    count: int
    model: str | None
    variant: str | None
    shards: tuple[tuple[str, str, int], ...]  # (emb file, metadata file, rows), relative to path
    run_id: int
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([r for _, _, r in self.shards])]).astype(np.int64)

    def arrays(self) -> list[np.ndarray]:
        """The shards as read-only float16 memory maps."""
        out = []
        for emb, _, rows in self.shards:
            try:
                a = np.load(self.path / emb, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise StoreError(f"vector set {self.name}: cannot read {emb} ({e})") from None
            if a.shape != (rows, self.dim):
                raise StoreError(f"vector set {self.name}: {emb} has shape {a.shape}, meta.json says ({rows}, {self.dim})")
            out.append(a)
        return out

    def blocks(self, block_rows: int = 65_536, dtype: Any = np.float32) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` with each block converted to ``dtype`` (contiguous)."""
        start = 0
        for a in self.arrays():
            for i in range(0, a.shape[0], block_rows):
                b = np.ascontiguousarray(a[i:i + block_rows], dtype=dtype)
                yield start + i, b
            start += a.shape[0]

    def matrix(self, dtype: Any = np.float32) -> np.ndarray:
        """The whole set in memory (``count * dim * itemsize`` bytes)."""
        out = np.empty((self.count, self.dim), dtype=dtype)
        for s, b in self.blocks(dtype=dtype):
            out[s:s + len(b)] = b
        return out

    def rows(self, idx: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """Gather rows by global row number (any order)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.dim), dtype=dtype)
        offs = self.offsets
        shard = np.searchsorted(offs, idx, side="right") - 1
        for k, a in enumerate(self.arrays()):
            m = np.nonzero(shard == k)[0]
            if len(m):
                out[m] = a[idx[m] - offs[k]]
        return out

    def ids(self) -> pa.Array:
        """The ids (strings) in row order."""
        parts = [pq.read_table(self.path / meta, columns=[self.id_column]).column(0) for _, meta, _ in self.shards]
        return pa.chunked_array(parts).combine_chunks() if parts else pa.array([], pa.string())

    def metadata_glob(self) -> str:
        return str(self.path / "metadata" / "metadata_*.parquet")


def open_set(store: Store, name: str) -> VectorSet:
    """The registered set ``name``; :class:`ConfigError` listing the sets if unknown."""
    ensure_table(store) if not store.read_only else None
    rows = store.con.execute(
        "SELECT name, kind, id_column, dim, count, model, variant, run_id FROM vector_sets WHERE name = ?", [name]
    ).fetchall() if store.has_table("vector_sets") else []
    if not rows:
        have = list_sets(store)
        raise ConfigError(f"no vector set {name!r} in the store; sets: {', '.join(have) or 'none'} "
                          "(add one with `curate vectors import ...`)")
    name, kind, id_column, dim, count, model, variant, run_id = rows[0]
    path = store.path / "vectors" / name
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        shards = tuple((s["emb"], s["metadata"], int(s["rows"])) for s in meta["shards"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"vector set {name}: {path / 'meta.json'} is missing or corrupt ({e})") from None
    if sum(r for _, _, r in shards) != count:
        raise StoreError(f"vector set {name}: shards hold {sum(r for _, _, r in shards)} rows, the registry says {count}")
    return VectorSet(name, path, kind, id_column, int(dim), int(count), model, variant, shards, int(run_id), meta)


def list_sets(store: Store) -> list[str]:
    if not store.has_table("vector_sets"):
        return []
    return [r[0] for r in store.con.execute("SELECT name FROM vector_sets ORDER BY name").fetchall()]


def sets_table(store: Store) -> pa.Table:
    if not store.has_table("vector_sets"):
        ensure_table(store)
    return store.arrow("SELECT name, kind, id_column, model, variant, dim, count, dtype, normalised, shards, "
                       "source, run_id FROM vector_sets ORDER BY name")


# -- writing -------------------------------------------------------------------------
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
    from .similarity.runs import start_run

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
    root.mkdir(exist_ok=True)
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
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
            final = root / name
            trash = root / f".old-{name}-{uuid.uuid4().hex[:8]}"
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


def _write_files(tmp: Path, blocks: Iterable[Block], kind: str, id_col: str, dim: int | None, normalise: str,
                 on_bad: str, shard_rows: int, rej: _Rejects, name: str) -> tuple[dict, int, int]:
    emb_dir = EMB_DIR[kind]
    (tmp / emb_dir).mkdir(parents=True)
    (tmp / "metadata").mkdir()
    shards: list[dict] = []
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
        if v.shape[1] != dim:
            raise InputError(f"vector set {name}: wrong dimension: expected {dim}, got {v.shape[1]} "
                             f"(rows {n_in:,}..{n_in + len(v) - 1:,})")
        ids_ = _ids_array(block.ids, len(v), f"vector set {name}")
        refs = block.refs
        x = v.astype(np.float32)
        finite = np.isfinite(x).all(axis=1)
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
                rej.add(refs[j] if refs is not None else f"row {n_in + int(j)}",
                        "nan or inf" if not finite[j] else "zero vector", f"id {ids_[int(j)].as_py()}",
                        str(ids_[int(j)].as_py()))
        off = np.abs(norms - 1.0) > NORM_TOL
        off &= ~bad
        if off.any():
            if normalise == "error":
                j = int(np.nonzero(off)[0][0])
                raise InputError(f"vector set {name}: {int(off.sum()):,} vectors are not L2-normalised "
                                 f"(first: row {n_in + j}, norm {norms[j]:.4g}); normalise them or use normalise='auto'")
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
    open_set(store, name)
    store.con.execute("DELETE FROM vector_sets WHERE name = ?", [name])
    shutil.rmtree(store.path / "vectors" / name, ignore_errors=True)


# -- importers -----------------------------------------------------------------------
def _numbered(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    out = {}
    for p in folder.glob(f"{prefix}_*{suffix}"):
        m = re.fullmatch(rf"{re.escape(prefix)}_(\d+){re.escape(suffix)}", p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def _map_ids(store: Store, meta: pa.Table, kind: str, match: str, variant: str | None,
             caption_col: str | None) -> tuple[np.ndarray, pa.Array, list[tuple[int, str]]]:
    """Map metadata rows to store ids. Returns (row numbers kept, ids, [(row, reason)])."""
    n = meta.num_rows
    cols: dict[str, Any] = {"_row": pa.array(np.arange(n, dtype=np.int64))}
    cols["_key"] = meta.column(match).cast(pa.string())
    if kind == "text":
        cols["_text"] = meta.column(caption_col).cast(pa.string())
    cur = store.con.cursor()
    try:
        cur.register("_curate_vec_meta", pa.table(cols))
        if match == "uid":
            sample = ("SELECT m._row, s.uid, count(*) OVER (PARTITION BY m._row) AS n FROM _curate_vec_meta m "
                      "JOIN samples s ON s.uid = TRY_CAST(m._key AS UUID)")
        else:
            col = {"url": "url", "key": "image_key"}[match]
            sample = (f"SELECT m._row, s.uid, count(*) OVER (PARTITION BY m._row) AS n FROM _curate_vec_meta m "
                      f"JOIN samples s ON s.{col} = m._key")
        if kind == "image":
            sql = f"SELECT _row, uid::VARCHAR AS id, n FROM ({sample}) ORDER BY _row"
        else:
            sql = (f"WITH s AS ({sample}) SELECT s._row, c.caption_id::VARCHAR AS id, s.n * count(*) OVER "
                   f"(PARTITION BY s._row) AS n FROM s JOIN _curate_vec_meta m USING (_row) "
                   f"JOIN captions c ON c.uid = s.uid AND c.variant = $variant AND "
                   f"(m._text IS NULL OR c.text = m._text) ORDER BY s._row")
        rows = cur.execute(sql, {"variant": variant} if kind == "text" else None).fetchall()
    finally:
        cur.unregister("_curate_vec_meta")
        cur.close()
    found: dict[int, list[str]] = {}
    for r, i, _ in rows:
        found.setdefault(r, []).append(i)
    keep, ids, bad = [], [], []
    what = "sample" if kind == "image" else f"{variant} caption"
    for r in range(n):
        got = found.get(r)
        if not got:
            bad.append((r, f"no matching {what}"))
        elif len(set(got)) > 1:
            bad.append((r, f"ambiguous {match}"))
        else:
            keep.append(r)
            ids.append(got[0])
    return np.asarray(keep, dtype=np.int64), pa.array(ids, pa.string()), bad


def import_clip_retrieval(store: Store, name: str, folder: str | os.PathLike, *, kind: Literal["image", "text"] = "image",
                          match: Literal["auto", "uid", "url", "key"] = "auto", variant: str = "raw",
                          caption_col: str = "caption", model: str | None = None,
                          on_bad: Literal["error", "quarantine"] = "quarantine", replace: bool = False,
                          normalise: Literal["auto", "error"] = "auto",
                          shard_rows: int = DEFAULT_SHARD_ROWS) -> WriteResult:
    """Import a clip-retrieval embedding folder (``img_emb/img_emb_<i>.npy`` or
    ``text_emb/text_emb_<i>.npy`` with ``metadata/metadata_<i>.parquet``).

    Rows are mapped to store ids through a metadata column: ``uid`` (a store uid, or a
    32-hex DataComp uid), ``url`` (``samples.url``) or ``key`` (img2dataset's key,
    ``samples.image_key``); ``auto`` takes the first of these the metadata has. Text
    vectors become the ``caption_id`` of the sample's caption of ``variant`` whose text
    equals ``caption_col`` (or the only one of that variant when the column is absent).
    Rows that match nothing or more than one id are rejects (``no matching sample``,
    ``ambiguous url``, ...): quarantined by default, ``on_bad='error'`` to fail instead."""
    folder = Path(folder)
    sub = EMB_DIR[kind] if kind in EMB_DIR else None
    if sub is None or kind == "concept":
        raise ConfigError(f"kind must be image or text, got {kind!r}")
    embs = _numbered(folder / sub, sub, ".npy")
    metas = _numbered(folder / "metadata", "metadata", ".parquet")
    if not embs:
        raise InputError(f"{folder}: no {sub}/{sub}_<i>.npy files (a clip-retrieval embedding folder has "
                         f"img_emb/, text_emb/ and metadata/)")
    missing = sorted(set(embs) - set(metas))
    if missing:
        raise InputError(f"{folder}: {sub}_{missing[0]}.npy has no metadata/metadata_{missing[0]}.parquet")
    first_cols = pq.read_schema(metas[min(embs)]).names
    if match == "auto":
        match = next((c for c in ("uid", "url", "key") if c in first_cols), None)  # type: ignore[assignment]
        if match is None:
            raise InputError(f"{metas[min(embs)]}: no uid, url or key column to match samples by; "
                             f"columns: {', '.join(first_cols)}")
    if match not in ("uid", "url", "key"):
        raise ConfigError(f"match must be auto, uid, url or key, got {match!r}")
    for i in sorted(embs):  # validate every shard before any work
        try:
            shape = np.load(embs[i], mmap_mode="r").shape
        except (OSError, ValueError) as e:
            raise InputError(f"{embs[i]}: not a readable .npy file ({e})") from None
        rows = pq.read_metadata(metas[i]).num_rows
        if len(shape) != 2 or shape[0] != rows:
            raise InputError(f"{embs[i]} has shape {shape} but {metas[i].name} has {rows:,} rows; "
                             "they must be in the same row order, one row per vector")
        if match not in pq.read_schema(metas[i]).names:
            raise InputError(f"{metas[i]}: no {match!r} column to match samples by")
    pre_rejects: list[tuple[str, str, str, str]] = []

    def blocks() -> Iterator[Block]:
        for i in sorted(embs):
            cols = [match] + ([caption_col] if kind == "text" and caption_col in pq.read_schema(metas[i]).names else [])
            meta = pq.read_table(metas[i], columns=cols)
            if kind == "text" and caption_col not in meta.column_names:
                meta = meta.append_column(caption_col, pa.nulls(meta.num_rows, pa.string()))
            keep, ids, bad = _map_ids(store, meta, kind, match, variant, caption_col)
            for r, reason in bad:
                rec = str(meta.column(match)[r].as_py())
                if on_bad == "error":
                    raise InputError(f"{embs[i].name}:{r}: {reason} ({match} {rec!r}); "
                                     f"{len(bad):,} such rows in this shard; use on_bad='quarantine' to skip them")
                pre_rejects.append((f"{embs[i].name}:{r}", reason, f"{match} {rec}", rec))
            arr = np.load(embs[i], mmap_mode="r")
            for s in range(0, len(keep), 65_536):
                k = keep[s:s + 65_536]
                yield Block(np.asarray(arr[k]), ids.slice(s, len(k)), [f"{embs[i].name}:{r}" for r in k])

    return write_set(store, name, blocks(), rejects=pre_rejects, kind=kind, model=model,
                               variant=variant if kind == "text" else None, on_bad=on_bad, replace=replace,
                               normalise=normalise, shard_rows=shard_rows,
                               source=f"clip-retrieval:{folder}", stage="vectors.import_clip_retrieval.v1",
                               config={"folder": str(folder), "match": match, "caption_col": caption_col})


DATACOMP_KEYS = {"b32_img": ("image", "ViT-B-32/openai"), "b32_txt": ("text", "ViT-B-32/openai"),
                 "l14_img": ("image", "ViT-L-14/openai"), "l14_txt": ("text", "ViT-L-14/openai")}


def import_datacomp(store: Store, name: str, npz: str | os.PathLike, uids: str | os.PathLike, *,
                    key: str = "l14_img", variant: str = "raw", uid_col: str = "uid",
                    on_bad: Literal["error", "quarantine"] = "quarantine", replace: bool = False,
                    normalise: Literal["auto", "error"] = "auto", shard_rows: int = DEFAULT_SHARD_ROWS) -> WriteResult:
    """Import one array of a DataComp embedding ``.npz`` (keys ``b32_img``, ``b32_txt``,
    ``l14_img``, ``l14_txt``) whose rows follow the ``uid`` column of the parquet
    ``uids`` (DataComp's metadata shard). Image keys map to ``samples.uid`` (the 32-hex
    uid is the UUID); text keys to the sample's caption of ``variant`` (DataComp embeds
    the alt-text: ``raw``), which must be unique per sample. Unmatched rows are rejects."""
    npz, uids = Path(npz), Path(uids)
    if key not in DATACOMP_KEYS:
        raise ConfigError(f"key must be one of {', '.join(DATACOMP_KEYS)}, got {key!r}")
    kind, model = DATACOMP_KEYS[key]
    try:
        with np.load(npz) as z:
            if key not in z.files:
                raise InputError(f"{npz}: no array {key!r}; it has {', '.join(z.files)}")
            arr = z[key]
    except (OSError, ValueError) as e:
        raise InputError(f"{npz}: not a readable .npz file ({e})") from None
    try:
        meta = pq.read_table(uids, columns=[uid_col])
    except (OSError, pa.ArrowInvalid, KeyError) as e:
        raise InputError(f"{uids}: cannot read column {uid_col!r} ({str(e).splitlines()[0]})") from None
    if arr.ndim != 2 or arr.shape[0] != meta.num_rows:
        raise InputError(f"{npz}[{key}] has shape {arr.shape} but {uids.name} has {meta.num_rows:,} uids; "
                         "they must be in the same row order")
    meta = meta.rename_columns(["uid"])
    if kind == "text":
        meta = meta.append_column("caption", pa.nulls(meta.num_rows, pa.string()))
    keep, ids, bad = _map_ids(store, meta, kind, "uid", variant, "caption")
    pre = []
    for r, reason in bad:
        rec = str(meta.column("uid")[r].as_py())
        if on_bad == "error":
            raise InputError(f"{npz.name}[{key}]:{r}: {reason} (uid {rec!r}); {len(bad):,} such rows; "
                             "use on_bad='quarantine' to skip them")
        pre.append((f"{npz.name}[{key}]:{r}", reason.replace("ambiguous uid", "ambiguous caption"), f"uid {rec}", rec))
    blocks = [Block(arr[keep], ids, [f"{npz.name}[{key}]:{r}" for r in keep])]
    return write_set(store, name, blocks, rejects=pre, kind=kind, model=model,
                     variant=variant if kind == "text" else None, on_bad=on_bad, replace=replace,
                     normalise=normalise, shard_rows=shard_rows, source=f"datacomp:{npz}[{key}]",
                     stage="vectors.import_datacomp.v1", config={"npz": str(npz), "uids": str(uids), "key": key})


def export_datacomp(store: Store, out: str | os.PathLike, sets: dict[str, str]) -> tuple[Path, Path, int]:
    """Write vector sets as one DataComp embedding shard: ``out`` (an ``.npz`` with one
    float16 array per key of :data:`DATACOMP_KEYS`, e.g. ``{"l14_img": "clip.x.image",
    "l14_txt": "clip.x.text.raw"}``) and, beside it, ``out`` with suffix ``.parquet``
    holding the ``uid`` column (32 hex digits, DataComp's form), ``url`` and ``text`` in
    the same row order, which is what :func:`import_datacomp` and DataComp's tooling read.

    Rows are the samples every given set covers, in ascending uid. A text set maps each
    caption to its sample; a sample with several captions in one text set is an error
    (export a set of one variant). Returns (npz path, parquet path, rows)."""
    if not sets:
        raise ConfigError("export_datacomp needs at least one KEY=SET (keys: " + ", ".join(DATACOMP_KEYS) + ")")
    out = Path(out)
    if out.suffix.lower() != ".npz":
        raise ConfigError(f"{out.name}: a DataComp shard is an .npz file")
    meta_path = out.with_suffix(".parquet")
    per_key: dict[str, tuple[np.ndarray, pa.Array]] = {}
    texts: dict[str, str] = {}
    cur = store.con.cursor()
    try:
        for key, name in sets.items():
            if key not in DATACOMP_KEYS:
                raise ConfigError(f"key must be one of {', '.join(DATACOMP_KEYS)}, got {key!r}")
            vs = open_set(store, name)
            want = DATACOMP_KEYS[key][0]
            if vs.kind != want:
                raise ConfigError(f"{key} holds {want} vectors, but set {name!r} holds {vs.kind} vectors")
            ids = vs.ids()
            if vs.kind == "text":
                cur.register("_curate_vec_ids", pa.table({"caption_id": ids, "_row": np.arange(len(ids))}))
                rows = cur.sql("SELECT c.uid::VARCHAR, c.text FROM _curate_vec_ids i JOIN captions c "
                               "ON c.caption_id = i.caption_id::UUID ORDER BY i._row").fetchall()
                cur.unregister("_curate_vec_ids")
                if len(rows) != len(ids):
                    raise ConfigError(f"set {name!r}: {len(ids) - len(rows):,} caption ids are not in the store")
                uids = [r[0] for r in rows]
                if len(set(uids)) != len(uids):
                    raise ConfigError(f"set {name!r} has several captions of one sample; DataComp keeps one text "
                                      "per sample: export a set of one variant")
                texts.update({u: t for u, t in rows})
                ids = pa.array(uids)
            per_key[key] = (vs.matrix(np.float16), ids)
        common = set.intersection(*(set(ids.to_pylist()) for _, ids in per_key.values()))
        order = sorted(common, key=lambda u: uuid.UUID(u).int)
        if not order:
            raise ConfigError("the given sets share no sample")
        arrays = {}
        for key, (mat, ids) in per_key.items():
            pos = {u: i for i, u in enumerate(ids.to_pylist())}
            arrays[key] = mat[[pos[u] for u in order]]
        cur.register("_curate_uids", pa.table({"uid": order, "_row": np.arange(len(order))}))
        meta = cur.sql("SELECT replace(i.uid, '-', '') AS uid, s.url FROM _curate_uids i "
                       "LEFT JOIN samples s ON s.uid = i.uid::UUID ORDER BY i._row").to_arrow_table()
        cur.unregister("_curate_uids")
    finally:
        cur.close()
    if texts:
        meta = meta.append_column("text", pa.array([texts.get(u) for u in order], pa.string()))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    pq.write_table(meta, meta_path)
    return out, meta_path, len(order)


def export_clip_retrieval(store: Store, name: str, out: str | os.PathLike) -> Path:
    """Write the set as a clip-retrieval embedding folder: the float16 shards as they are,
    and ``metadata_<i>.parquet`` with the id column plus ``url`` and ``caption``
    (image sets: the sample's url and its smallest ``raw`` caption; text sets: the
    caption's text), so ``clip-retrieval index`` and :func:`import_clip_retrieval` read it."""
    vs = open_set(store, name)
    out = Path(out)
    sub = EMB_DIR[vs.kind]
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new folder")
    (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "metadata").mkdir(exist_ok=True)
    cur = store.con.cursor()
    try:
        for i, (emb, meta, _) in enumerate(vs.shards):
            shutil.copyfile(vs.path / emb, out / sub / f"{sub}_{i}.npy")
            ids = pq.read_table(vs.path / meta)
            cur.register("_curate_vec_ids", ids.append_column("_row", pa.array(np.arange(ids.num_rows))))
            if vs.kind == "image":
                sql = ("SELECT i.uid, s.url, (SELECT min(c.text) FROM captions c WHERE c.uid = s.uid AND "
                       "c.variant = 'raw') AS caption FROM _curate_vec_ids i LEFT JOIN samples s ON s.uid = i.uid::UUID "
                       "ORDER BY i._row")
            elif vs.kind == "text":
                sql = ("SELECT i.caption_id, c.uid::VARCHAR AS uid, s.url, c.text AS caption FROM _curate_vec_ids i "
                       "LEFT JOIN captions c ON c.caption_id = i.caption_id::UUID LEFT JOIN samples s ON s.uid = c.uid "
                       "ORDER BY i._row")
            else:
                sql = "SELECT concept, concept AS caption FROM _curate_vec_ids ORDER BY _row"
            tbl = cur.sql(sql).to_arrow_table()
            cur.unregister("_curate_vec_ids")
            pq.write_table(tbl, out / "metadata" / f"metadata_{i}.parquet")
    finally:
        cur.close()
    return out
