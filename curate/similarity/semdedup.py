"""Semantic dedup (SemDeDup, Abbas et al. 2023, arXiv 2303.09540) over an embedding set.

1. **k-means** (``faiss.Kmeans``, spherical, GPU when present) on a seeded sample of
   ``n_clusters * max_points_per_centroid`` rows (FAISS's own default cap, 256 per
   centroid), ``niter`` iterations.
2. **Assign** every row to its nearest centroid, block-wise over the memory-mapped
   shards; the exact cosine to that centroid is kept (``vector_clusters``).
3. **Pairs inside each cluster**: the rows are gathered once in cluster order (float16,
   ``count * dim * 2`` bytes), and each cluster's upper-triangular similarity tiles are
   computed with float32 matrix products; pairs above ``1 - eps - 1e-4`` are re-scored
   exactly (float64 of the stored values) and kept when ``similarity > 1 - eps``
   (SemDeDup's strict ``>``).
4. **Groups and keep** (:mod:`curate.similarity.groups`): ``grouping="center"`` by
   default; the keep rule ``farthest`` by default.

**Which SemDeDup.** The paper keeps, from each group of semantic duplicates, "the image
with the lowest cosine similarity to the cluster centroid". The reference code
(facebookresearch/SemDeDup ``semdedup.py``) has no groups: it sorts a cluster by
distance to the centroid (farthest first with ``keep_hard``), then removes every item
whose similarity to *any earlier item* exceeds ``1 - eps``, even to an item that was
itself removed, so on a chain a~b~c (a and c not similar) it removes both b and c (see
facebookresearch/SemDeDup#8). curate implements the paper: explicit groups, one kept
member each, ``farthest`` = lowest similarity to the centroid kept. With
``grouping="center"`` every member is similar to its kept member and c above is kept
(it is not a duplicate of anything kept); ``grouping="components"`` removes all of a
chain but its first member. The code's removal set lies between the two: center keeps
a superset of what the code keeps, components a subset. Duplicates that land in
different clusters are not found (as in SemDeDup); the benchmark measures the recall
this costs against brute force over all pairs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from .. import progress
from ..errors import ConfigError, InputError
from ..runs import start_run
from ..store import Store
from ..vectors import VectorSet, open_set
from .groups import (
    Groups,
    check_threshold,
    ensure_tables,
    group_pairs,
    ingest_order,
    keep_rank,
    require_ids,
    score_column,
    write_groups,
)
from .index import exact_scores, faiss_module, resolve_device

STAGE = "similarity.semdedup.v1"
PAIR_MARGIN = 1e-4


@dataclass
class Clustering:
    centroids: np.ndarray      # (k, dim) float32, unit norm
    labels: np.ndarray         # (count,) int64
    centroid_sim: np.ndarray   # (count,) float64, exact cosine to the assigned centroid
    train_rows: int
    seconds_train: float
    seconds_assign: float


def kmeans(vs: VectorSet, n_clusters: int, *, niter: int = 20, seed: int = 1, max_points_per_centroid: int = 256,
           device: str = "auto", block_rows: int = 65_536) -> Clustering:
    """Spherical k-means on a seeded sample, then every row assigned to its nearest centroid."""
    faiss = faiss_module()
    if n_clusters < 1:
        raise ConfigError(f"n_clusters must be at least 1, got {n_clusters}")
    if vs.count < n_clusters:
        raise InputError(f"set {vs.name} has {vs.count:,} vectors, fewer points than clusters ({n_clusters:,}); "
                         "use fewer clusters")
    device = resolve_device(device)
    t0 = time.perf_counter()
    ntrain = min(vs.count, n_clusters * max_points_per_centroid)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(vs.count, ntrain, replace=False)) if ntrain < vs.count else np.arange(vs.count)
    x = vs.rows(sample)
    km = faiss.Kmeans(vs.dim, n_clusters, niter=niter, seed=seed, spherical=True, gpu=device == "gpu",
                      max_points_per_centroid=max(max_points_per_centroid, ntrain // n_clusters + 1),
                      min_points_per_centroid=1, verbose=False)
    km.train(x)
    del x
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    t1 = time.perf_counter()
    labels, csim = assign(vs, centroids, device=device, block_rows=block_rows)
    return Clustering(centroids, labels, csim, ntrain, t1 - t0, time.perf_counter() - t1)


def assign(vs: VectorSet, centroids: np.ndarray, *, device: str = "cpu", block_rows: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid per row and the exact cosine to it. FAISS ranks in float32; rows
    whose two best centroids are within 1e-4 are re-ranked exactly (ties: lowest centroid
    id), so the assignment does not depend on kernel rounding."""
    faiss = faiss_module()
    index = faiss.IndexFlatIP(vs.dim)
    index.add(centroids)
    if device == "gpu":  # pragma: no cover - needs a GPU
        index = faiss.index_cpu_to_all_gpus(index)
    k = min(len(centroids), 2)
    c64 = centroids.astype(np.float64)
    labels = np.empty(vs.count, np.int64)
    csim = np.empty(vs.count, np.float64)
    for s, b in progress.blocks(vs.blocks(block_rows), vs.count, "assign to clusters"):
        d, idx = index.search(b, k)
        lab = idx[:, 0].copy()
        if k == 2:
            close = np.flatnonzero(d[:, 0] - d[:, 1] <= 1e-4)
            if len(close):
                bb = b[close].astype(np.float64)
                sc = np.einsum("nkd,nd->nk", c64[idx[close]], bb)
                best = np.lexsort((idx[close], -sc), axis=-1)[:, 0]
                lab[close] = idx[close][np.arange(len(close)), best]
        labels[s:s + len(b)] = lab
        csim[s:s + len(b)] = exact_scores(b, centroids[lab])
    return labels, csim


def cluster_pairs(vs: VectorSet, labels: np.ndarray, threshold: float, *, tile: int = 512,
                  xs: np.ndarray | None = None, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j by set row) in the same cluster with exact similarity > threshold.

    The rows are gathered once in cluster order (float16); each cluster's upper-triangular
    tiles are float32 products; candidates above ``threshold - 1e-4`` are re-scored exactly."""
    if order is None:
        order = np.argsort(labels, kind="stable")
    if xs is None:
        xs = vs.rows(order, dtype=np.float16)
    lab = labels[order]
    bounds = np.flatnonzero(np.diff(lab)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(lab)]])
    cut = np.float32(threshold - PAIR_MARGIN)
    ci, cj = [], []
    for a, b in progress.bar(zip(starts.tolist(), ends.tolist()), total=len(starts), desc="pairs within clusters",
                             unit="clusters"):
        n = b - a
        if n < 2:
            continue
        e = xs[a:b].astype(np.float32)
        for t0 in range(0, n, tile):
            s = e[t0:t0 + tile] @ e[t0:].T
            ii, jj = np.nonzero(s > cut)
            jj = jj + t0
            ii = ii + t0
            m = jj > ii
            if m.any():
                ci.append(ii[m] + a)
                cj.append(jj[m] + a)
    if not ci:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    pi_sorted, pj_sorted = np.concatenate(ci), np.concatenate(cj)
    sim = np.empty(len(pi_sorted))
    for c0 in range(0, len(pi_sorted), 1 << 18):
        sim[c0:c0 + (1 << 18)] = exact_scores(xs[pi_sorted[c0:c0 + (1 << 18)]], xs[pj_sorted[c0:c0 + (1 << 18)]])
    keep = sim > threshold
    pi, pj = order[pi_sorted[keep]], order[pj_sorted[keep]]
    lo, hi = np.minimum(pi, pj), np.maximum(pi, pj)
    return lo, hi, sim[keep]


@dataclass
class SemDedupResult:
    set_name: str
    kind: str
    eps: float
    n_clusters: int
    keep: str
    grouping: str
    count: int
    groups: Groups
    clustering: Clustering
    pairs: int
    config_hash: str = ""
    run_id: int | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        g = self.groups
        rate = g.removed / self.count if self.count else 0.0
        return (f"{STAGE}: set {self.set_name!r}, {self.count:,} vectors in {self.n_clusters:,} clusters; "
                f"{self.pairs:,} pairs with cosine > {1 - self.eps:.4g}; {g.n_groups:,} duplicate groups, "
                f"{g.removed:,} duplicates ({rate:.2%}); keep {self.keep}, {self.grouping} grouping; "
                f"{self.seconds:.1f}s, run {self.run_id}")


def check_options(eps: float, keep: str, score: str | None) -> float:
    """The checks of :func:`semdedup` that need no store; the similarity threshold ``1 - eps``."""
    if not 0 < eps < 1:
        raise ConfigError(f"eps must be in (0, 1) (duplicates: cosine > 1 - eps), got {eps}")
    threshold = check_threshold(1 - eps, "1 - eps")
    if keep == "score" and not score:
        raise ConfigError("keep='score' needs score=TABLE.COLUMN (--score)")
    if score and keep != "score":
        raise ConfigError("a score column is used only with keep='score'")
    return threshold


def semdedup(store: Store, set_name: str, *, eps: float = 0.05, n_clusters: int | None = None, niter: int = 20,
             seed: int = 1, keep: Literal["farthest", "nearest", "score", "first"] = "farthest",
             score: str | None = None, grouping: Literal["center", "components"] = "center",
             max_points_per_centroid: int = 256, device: str = "auto") -> SemDedupResult:
    """SemDeDup over a stored set; writes ``dedup_groups`` (kind ``<set kind>_semantic``)
    and ``vector_clusters`` (purpose ``semdedup``) in one transaction with its runs row.
    A rerun of the same config replaces its rows. ``n_clusters`` defaults to one per
    1,000 vectors (at least 1)."""
    threshold = check_options(eps, keep, score)
    vs = open_set(store, set_name)
    require_ids(vs)
    k = n_clusters if n_clusters is not None else max(1, round(vs.count / 1000))
    if vs.count < k:
        raise InputError(f"set {vs.name} has {vs.count:,} vectors, fewer points than clusters ({k:,}); "
                         "use fewer clusters")
    config: dict[str, Any] = {"set": vs.name, "set_run_id": vs.run_id, "eps": eps, "n_clusters": k, "niter": niter,
                              "seed": seed, "keep": keep, "score": score, "grouping": grouping,
                              "max_points_per_centroid": max_points_per_centroid}
    ensure_tables(store)
    with start_run(store, "similarity", STAGE, config) as run:
        t = {}
        t0 = time.perf_counter()
        first = ingest_order(store, vs)
        sc = score_column(store, vs, score) if score else None
        cl = kmeans(vs, k, niter=niter, seed=seed, max_points_per_centroid=max_points_per_centroid, device=device)
        t["kmeans"], t["assign"] = cl.seconds_train, cl.seconds_assign
        t1 = time.perf_counter()
        order = np.argsort(cl.labels, kind="stable")
        xs = vs.rows(order, dtype=np.float16)
        pi, pj, ps = cluster_pairs(vs, cl.labels, threshold, xs=xs, order=order)
        t["pairs"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        rank = keep_rank(keep, first, cl.centroid_sim, sc)
        pos = np.empty(vs.count, np.int64)
        pos[order] = np.arange(vs.count)
        groups = group_pairs(pi, pj, ps, rank, grouping, lambda a, b: exact_scores(xs[pos[a]], xs[pos[b]]))
        t["groups"] = time.perf_counter() - t2
        res = SemDedupResult(vs.name, vs.kind, eps, k, keep, grouping, vs.count, groups, cl, len(pi),
                             run.hash, run.id, timings=t)
        ids = vs.ids()
        clusters = pa.table({"member_id": ids, "cluster": pa.array(cl.labels.astype(np.int32)),
                             "centroid_similarity": pa.array(cl.centroid_sim)})
        with run.transaction() as w:
            kind = f"{vs.kind}_semantic"
            n = write_groups(w, groups, ids, kind=kind, scope=vs.name, member_kind=vs.id_column, method="semdedup",
                             config_hash=run.hash, run_id=run.id)
            w.execute("DELETE FROM vector_clusters WHERE purpose = 'semdedup' AND config_hash = ?", [run.hash])
            w.register("_curate_sim_clusters", clusters)
            w.execute("INSERT INTO vector_clusters SELECT 'semdedup', ?, member_id::UUID, cluster, centroid_similarity, "
                      "?, ? FROM _curate_sim_clusters", [vs.name, run.hash, run.id])
            w.unregister("_curate_sim_clusters")
            res.seconds = time.perf_counter() - t0
            run.commit_ok(w, vs.count, n, 0, f"{groups.n_groups} groups, {groups.removed} duplicates")
    return res
