"""The FAISS layer: indexes over an embedding set, k-NN and range search, exact re-ranking.

* **Indexes from a factory string** (``Flat``, ``IVF1024,Flat``, ``HNSW32``,
  ``IVF1024,PQ64``, ...), inner-product metric (the vectors are L2-normalised, so
  scores are cosine similarities). Training uses a seeded sample of the set; vectors
  are added block-wise from the memory-mapped float16 shards (converted to float32 a
  block at a time), so an index is built without the set in memory. FAISS ids are the
  set's row numbers.
* **Device.** ``device="auto"`` uses the GPU when ``faiss.get_num_gpus() > 0``, else
  the CPU; ``float16=True`` stores GPU flat/IVF data in float16. HNSW has no GPU
  version and stays on the CPU. GPU k-NN is limited to k <= :data:`GPU_MAX_K` (2048):
  a larger k is served by the CPU copy of the index. The CPU path is the one tested.
* **Files.** ``indexes/<name>/index.faiss`` plus ``settings.json`` (factory, set, the
  set's run id, dim, count, nprobe, efSearch, training rows, seed, faiss version); an
  index is refused when its set has been rewritten since (stale) or the file is corrupt.
* **Exact scores and ties.** FAISS computes float32 scores whose last bits depend on
  the kernel, so every result is re-scored: ``similarity(q, x) = sum(float64(q) *
  float64(x))`` over the stored float16 values (:func:`exact_scores`), then ordered by
  score descending and row ascending. k-NN asks FAISS for ``k + margin`` candidates so
  that ties at the k-th place resolve to the lowest rows; range search asks for
  ``threshold - 1e-4`` and keeps scores ``> threshold`` (HNSW: k-NN with doubling k
  down to the radius instead of FAISS's range search, which aborted the process at 1M
  vectors in faiss-cpu 1.15.1). For Flat (and IVF with nprobe =
  nlist, HNSW at a high efSearch) the result therefore equals brute force exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import progress
from .._optional import require
from ..errors import ConfigError, InputError, StoreError
from ..store import Store
from ..vectors import VectorSet, check_name, open_set

GPU_MAX_K = 2048
RANGE_MARGIN = 1e-4
TIE_MARGIN = 8
INDEX_STAGE = "similarity.index.v1"


def faiss_module() -> ModuleType:
    return require("faiss", purpose="the FAISS similarity layer (curate vectors/similarity)")


def gpu_count() -> int:
    faiss = faiss_module()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``gpu`` when FAISS sees a GPU, else ``cpu``."""
    if device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"device must be auto, cpu or gpu, got {device!r}")
    n = gpu_count()
    if device == "auto":
        return "gpu" if n > 0 else "cpu"
    if device == "gpu" and n == 0:
        raise ConfigError("device 'gpu' was asked for but FAISS sees no GPU (install faiss-gpu: "
                          "pip install 'curate[gpu]', or use --device cpu)")
    return device


def exact_scores(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Row-wise ``sum(float64(q) * float64(x))``: the one definition of a similarity score.
    Identical vectors give identical scores (same products, same summation order)."""
    q, x = np.asarray(q), np.asarray(x)
    if q.dtype == np.float64 or x.dtype == np.float64:
        return np.einsum("ij,ij->i", np.asarray(q, np.float64), np.asarray(x, np.float64))
    # casting inside einsum: the same float64 products and sums, without float64 copies
    return np.einsum("ij,ij->i", q, x, dtype=np.float64, casting="safe")


@dataclass
class IndexSettings:
    name: str
    factory: str
    set_name: str
    set_run_id: int
    dim: int
    count: int
    metric: str = "inner_product"
    nprobe: int | None = None
    ef_search: int | None = None
    train_rows: int = 0
    seed: int = 1
    float16: bool = False
    faiss_version: str = ""


class Index:
    """An index over one vector set, with exact re-ranking (see the module docstring)."""

    def __init__(self, index: Any, settings: IndexSettings, vs: VectorSet, device: str = "cpu", float16: bool = False):
        self.cpu_index = index
        self.settings = settings
        self.vs = vs
        self.device = device
        self._gpu = None
        if device == "gpu" and not settings.factory.upper().startswith("HNSW"):
            self._gpu = _to_gpu(index, float16)
        self.apply_params()

    def apply_params(self) -> None:
        faiss = faiss_module()
        for idx in (self.cpu_index, self._gpu):
            if idx is None:
                continue
            ps = faiss.GpuParameterSpace() if idx is self._gpu else faiss.ParameterSpace()
            if self.settings.nprobe is not None and _has_ivf(self.cpu_index):
                ps.set_index_parameter(idx, "nprobe", int(self.settings.nprobe))
            if self.settings.ef_search is not None and idx is self.cpu_index and _has_hnsw(self.cpu_index):
                ps.set_index_parameter(idx, "efSearch", int(self.settings.ef_search))

    @property
    def ntotal(self) -> int:
        return int(self.cpu_index.ntotal)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._gpu is not None and k <= GPU_MAX_K:
            return self._gpu.search(q, k)
        return self.cpu_index.search(q, k)

    def knn(self, queries: np.ndarray, k: int, *, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows per query: ``(scores float64 (nq, k), rows int64 (nq, k))``,
        ordered by exact score descending then row ascending; -1 / -inf pad when the set
        has fewer than k rows (or an approximate index found fewer)."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        queries = _check_queries(queries, self.settings.dim)
        kk = min(self.ntotal, k + min(k, TIE_MARGIN))
        out_s = np.full((len(queries), k), -np.inf)
        out_r = np.full((len(queries), k), -1, dtype=np.int64)
        for s in range(0, len(queries), batch):
            q = queries[s:s + batch]
            _, rows = self._search(q, kk)
            sc = self._rescore(q, rows)
            order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), -sc), axis=-1)[:, :k]
            m = min(k, kk)
            out_s[s:s + len(q), :m] = np.take_along_axis(sc, order, 1)[:, :m]
            out_r[s:s + len(q), :m] = np.take_along_axis(rows, order, 1)[:, :m]
        out_r[~np.isfinite(out_s)] = -1
        return out_s, out_r

    def range(self, queries: np.ndarray, threshold: float, *, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Pairs with exact score ``> threshold``: yields ``(query_index, rows, scores)``
        per batch of queries, sorted by query then score descending then row."""
        queries = _check_queries(queries, self.settings.dim)
        idx = self._gpu if self._gpu is not None else self.cpu_index
        hnsw = _has_hnsw(self.cpu_index)
        for s in range(0, len(queries), batch):
            q = queries[s:s + batch]
            if hnsw:
                qi, rows = self._range_by_knn(q, float(threshold) - RANGE_MARGIN)
                qi = qi + s
            else:
                try:
                    lims, _, rows = idx.range_search(q, float(threshold) - RANGE_MARGIN)
                except RuntimeError:
                    if idx is self.cpu_index:
                        raise
                    # a GPU index that has no range search: the CPU index answers, for
                    # this batch and the rest (the results are the same; only slower)
                    idx = self.cpu_index
                    lims, _, rows = idx.range_search(q, float(threshold) - RANGE_MARGIN)
                qi = np.repeat(np.arange(len(q), dtype=np.int64), np.diff(lims).astype(np.int64)) + s
            rows = rows.astype(np.int64)
            if len(rows):
                sc = exact_scores(queries[qi], self.vs.rows(rows))
            else:
                sc = np.empty(0)
            keep = sc > threshold
            qi, rows, sc = qi[keep], rows[keep], sc[keep]
            order = np.lexsort((rows, -sc, qi))
            yield qi[order], rows[order], sc[order]

    def _range_by_knn(self, q: np.ndarray, radius: float, k0: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Range search as k-NN with doubling k, for HNSW: faiss-cpu 1.15.1's
        ``IndexHNSW.range_search`` aborted the process (an uncaught FaissException in
        ``RangeSearchResult::do_allocation``) on 1M vectors with 2,000 queries."""
        out_q, out_r = [], []
        todo = np.arange(len(q))
        k = min(k0, self.ntotal)
        while len(todo):
            d, rows = self.cpu_index.search(q[todo], k)
            hit = (d > radius) & (rows >= 0)
            full = hit[:, -1] & (k < self.ntotal)
            done = ~full
            qq = np.repeat(todo[done], k).reshape(-1, k)[hit[done]]
            out_q.append(qq)
            out_r.append(rows[done][hit[done]])
            todo = todo[full]
            k = min(2 * k, self.ntotal)
        return np.concatenate(out_q).astype(np.int64), np.concatenate(out_r)

    def _rescore(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        nq, kk = rows.shape
        flat = rows.reshape(-1)
        valid = flat >= 0
        sc = np.full(flat.shape, -np.inf)
        if valid.any():
            qrep = np.repeat(np.arange(nq), kk)[valid]
            sc[valid] = exact_scores(q[qrep], self.vs.rows(flat[valid]))
        return sc.reshape(nq, kk)


def _check_queries(q: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(q)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise InputError(f"queries must have shape (n, {dim}), got {q.shape} (wrong dimension)")
    q = np.ascontiguousarray(q, dtype=np.float32)
    if not np.isfinite(q).all():
        raise InputError("queries contain NaN or inf")
    return q


def _has_ivf(index: Any) -> bool:
    faiss = faiss_module()
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def _has_hnsw(index: Any) -> bool:
    faiss = faiss_module()
    return isinstance(faiss.downcast_index(index), (faiss.IndexHNSW,)) or hasattr(faiss.downcast_index(index), "hnsw")


def _to_gpu(index: Any, float16: bool) -> Any:  # pragma: no cover - needs a GPU
    faiss = faiss_module()
    res = faiss.StandardGpuResources()
    co = faiss.GpuClonerOptions()
    co.useFloat16 = bool(float16)
    return faiss.index_cpu_to_gpu(res, 0, index, co)


def default_index_name(set_name: str, factory: str) -> str:
    return check_name(f"{set_name}.{re.sub(r'[^A-Za-z0-9]+', '_', factory).strip('_').lower()}")


def build_index(vs: VectorSet, factory: str = "Flat", *, name: str | None = None, nprobe: int | None = None,
                ef_search: int | None = None, train_rows: int | None = None, seed: int = 1,
                block_rows: int = 65_536, device: str = "auto", float16: bool = False) -> Index:
    """Build an index over ``vs`` (in memory; :func:`save_index` writes it)."""
    faiss = faiss_module()
    device = resolve_device(device)
    try:
        index = faiss.index_factory(vs.dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ConfigError(f"bad FAISS factory string {factory!r}: {_faiss_msg(e)} "
                          "(examples: Flat, IVF1024,Flat, HNSW32, IVF1024,PQ64)") from None
    ntrain = 0
    if not index.is_trained:
        nlist = _nlist(index)
        ntrain = min(vs.count, train_rows or max(100_000, 64 * nlist))
        if vs.count < nlist:
            raise InputError(f"{factory} needs at least {nlist:,} vectors to train its {nlist:,} lists; "
                             f"set {vs.name} has {vs.count:,} (fewer points than clusters)")
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(vs.count, ntrain, replace=False))
        x = vs.rows(sample)
        try:
            _train(index, x, device, float16)
        except RuntimeError as e:
            raise InputError(f"training {factory} on {ntrain:,} vectors failed: {_faiss_msg(e)}") from None
    for _, b in progress.blocks(vs.blocks(block_rows), vs.count, f"add to {factory}"):
        index.add(b)
    if ef_search is not None and not _has_hnsw(index):
        raise ConfigError(f"ef_search applies to HNSW indexes, not {factory}")
    if nprobe is not None and not _has_ivf(index):
        raise ConfigError(f"nprobe applies to IVF indexes, not {factory}")
    settings = IndexSettings(name=name or default_index_name(vs.name, factory), factory=factory, set_name=vs.name,
                             set_run_id=vs.run_id, dim=vs.dim, count=vs.count, nprobe=nprobe, ef_search=ef_search,
                             train_rows=ntrain, seed=seed, float16=float16, faiss_version=faiss.__version__)
    return Index(index, settings, vs, device, float16)


def _train(index: Any, x: np.ndarray, device: str, float16: bool) -> None:
    if device == "gpu":  # pragma: no cover - needs a GPU
        faiss = faiss_module()
        ivf = faiss.extract_index_ivf(index) if _has_ivf(index) else None
        if ivf is not None:
            q = _to_gpu(faiss.IndexFlatIP(ivf.d), float16)
            ivf.clustering_index = q
    index.train(x)


def _nlist(index: Any) -> int:
    faiss = faiss_module()
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return 1


def _faiss_msg(e: BaseException) -> str:
    text = str(e)
    m = re.search(r"Error: '([^']*)' failed", text) or re.search(r"Error in [^\n]*: ([^\n]+)", text)
    if m:
        return m.group(1)
    return " ".join(text.split())[:200]


def save_index(store: Store, index: Index) -> Path:
    """Write ``indexes/<name>/index.faiss`` and ``settings.json`` (atomically: a temporary
    folder renamed into place)."""
    faiss = faiss_module()
    root = store.path / "indexes"
    root.mkdir(exist_ok=True)
    name = check_name(index.settings.name)
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        faiss.write_index(index.cpu_index, str(tmp / "index.faiss"))
        (tmp / "settings.json").write_text(json.dumps(asdict(index.settings), indent=2), encoding="utf-8")
        final = root / name
        if final.exists():
            old = root / f".old-{name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / name


def load_index(store: Store, name: str, *, device: str = "auto", nprobe: int | None = None,
               ef_search: int | None = None) -> Index:
    """Load a saved index; :class:`StoreError` when it is missing, corrupt or stale."""
    faiss = faiss_module()
    folder = store.path / "indexes" / check_name(name)
    try:
        raw = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
        settings = IndexSettings(**raw)
    except FileNotFoundError:
        have = sorted(p.name for p in (store.path / "indexes").iterdir() if p.is_dir() and not p.name.startswith("."))
        raise StoreError(f"no index {name!r} in {store.path / 'indexes'}; indexes: {', '.join(have) or 'none'}") from None
    except (ValueError, TypeError) as e:
        raise StoreError(f"index {name}: settings.json is corrupt ({e})") from None
    try:
        idx = faiss.read_index(str(folder / "index.faiss"))
    except RuntimeError as e:
        raise StoreError(f"index {name}: {folder / 'index.faiss'} is corrupt or unreadable ({_faiss_msg(e)}); "
                         "rebuild it with `curate similarity index`") from None
    vs = open_set(store, settings.set_name)
    if vs.run_id != settings.set_run_id or idx.ntotal != vs.count or idx.d != vs.dim:
        raise StoreError(f"index {name} is stale: built from run {settings.set_run_id} of set {vs.name} "
                         f"({idx.ntotal:,} x {idx.d}); the set is now run {vs.run_id} ({vs.count:,} x {vs.dim}); rebuild it")
    if nprobe is not None:
        settings.nprobe = nprobe
    if ef_search is not None:
        settings.ef_search = ef_search
    return Index(idx, settings, vs, resolve_device(device), settings.float16)


def list_indexes(store: Store) -> list[dict[str, Any]]:
    out = []
    root = store.path / "indexes"
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.is_dir() and not p.name.startswith(".") and (p / "settings.json").exists():
            try:
                s = json.loads((p / "settings.json").read_text(encoding="utf-8"))
            except ValueError:
                s = {"name": p.name, "factory": "(corrupt settings.json)"}
            s["bytes"] = os.path.getsize(p / "index.faiss") if (p / "index.faiss").exists() else None
            out.append(s)
    return out


@dataclass
class IndexResult:
    """A saved index (:func:`create_index`'s three values, as a pass result)."""

    index: Index
    folder: Path
    run_id: int

    def summary(self) -> str:
        st = self.index.settings
        return (f"{INDEX_STAGE}: index {st.name!r}: {st.factory} over {self.index.ntotal:,} vectors of "
                f"{st.set_name!r} (trained on {st.train_rows:,}); {self.folder}; run {self.run_id}")


def create_index(store: Store, set_name: str, factory: str = "Flat", *, name: str | None = None,
                 nprobe: int | None = None, ef_search: int | None = None, train_rows: int | None = None,
                 seed: int = 1, device: str = "auto", float16: bool = False) -> tuple[Index, Path, int]:
    """Build and save an index over a stored set, with a ``runs`` row (``similarity.index.v1``).
    Returns (index, folder, run id)."""
    from ..runs import start_run

    vs = open_set(store, set_name)
    cfg = {"set": set_name, "set_run_id": vs.run_id, "factory": factory, "name": name, "nprobe": nprobe,
           "ef_search": ef_search, "train_rows": train_rows, "seed": seed, "float16": float16}
    with start_run(store, "similarity", INDEX_STAGE, cfg) as run:
        index = build_index(vs, factory, name=name, nprobe=nprobe, ef_search=ef_search, train_rows=train_rows,
                            seed=seed, device=device, float16=float16)
        folder = save_index(store, index)
        with run.transaction() as w:
            run.commit_ok(w, vs.count, index.ntotal, 0, f"index {index.settings.name}")
    return index, folder, run.id
