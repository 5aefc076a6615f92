"""Reading embedding sets: the layout (kinds, id columns, folders), the ``vector_sets``
registry table, set names, :class:`VectorSet` (memory-mapped shards, block reads, row
gathers, ids), :func:`open_set` and listing. See :mod:`curate.vectors` for the layout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import names
from ..errors import ConfigError, StoreError
from ..store import Store

KINDS = ("image", "text", "concept")
ID_COLUMN = {"image": "uid", "text": "caption_id", "concept": "concept"}
EMB_DIR = {"image": "img_emb", "text": "text_emb", "concept": "text_emb"}

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
    return names.check_name("vector set", name)


def set_path(store: Store, name: str) -> Path:
    """The folder of set ``name``: ``vectors/<name>`` (the name checked, the path kept in
    the store by :func:`curate.names.under`)."""
    return names.under(store.path / "vectors", check_name(name))


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
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

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
    check_name(name)
    ensure_table(store) if not store.read_only else None
    rows = store.con.execute(
        "SELECT name, kind, id_column, dim, count, model, variant, run_id FROM vector_sets WHERE name = ?", [name]
    ).fetchall() if store.has_table("vector_sets") else []
    if not rows:
        have = list_sets(store)
        raise ConfigError(f"no vector set {name!r} in the store; sets: {', '.join(have) or 'none'} "
                          "(add one with `curate vectors import ...`)")
    name, kind, id_column, dim, count, model, variant, run_id = rows[0]
    path = set_path(store, name)
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
