"""Semantic dedup and search throughput on synthetic CLIP-like embeddings.

    python benchmarks/bench_similarity.py                 # 1M x 512, 1,000 clusters
    python benchmarks/bench_similarity.py --n 100000      # a quick run

Data (deterministic, seed 0): ``n`` unit vectors in ``--topics`` Gaussian topics
(cosine between two vectors of one topic about 0.5), of which ``--near-frac`` are
near copies of an earlier row (cosine about 0.98-0.995) and ``--exact-frac`` exact
copies; stored as float16 through ``curate.vectors.write_set`` (one store, one set).

Phases, each in its own process so peak RSS is per phase:

* ``curate``: ``curate.similarity.semdedup`` (k-means, block-wise assignment, cluster
  pairs in upper-triangular float32 tiles with exact re-scoring, centre grouping).
* ``baseline``: a straightforward SemDeDup-style implementation: all vectors loaded as
  float32, the same faiss k-means (same seed, same training sample, so the same
  centroids), assignment with ``km.index.search``, then per cluster the full float32
  similarity matrix in numpy, pairs from ``np.triu(S, 1) > 1 - eps`` and the same centre
  grouping and keep rule (``first``).
* ``truth``: brute force over all pairs for a sample of ``--truth-queries`` rows
  (IndexFlatIP range search of each sampled row against all n rows, re-scored in
  float64): pair recall (true pairs put in one group) and precision (member-kept pairs
  whose true cosine is above the threshold) of both implementations; groups compared.
* ``search``: k-NN (k=10) and range search (cosine > 1 - eps) throughput of plain
  ``faiss.IndexFlatIP`` against curate's ``Index`` (Flat with exact re-ranking,
  IVF-Flat, HNSW), recall@10 against Flat.

Prints JSON lines and a summary table. ``OPENBLAS_CORETYPE`` is reported, not changed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def emit(**kw) -> None:
    kw["peak_rss_MB"] = rss_mb()
    print(json.dumps(kw), flush=True)


# -- data ----------------------------------------------------------------------------------
def generate(a) -> None:
    import pyarrow as pa

    from curate import Store
    from curate.vectors import Block, write_set

    t0 = time.perf_counter()
    store_path = Path(a.work) / "store"
    s = Store.init(store_path)
    rng = np.random.default_rng(0)
    n, d = a.n, a.d
    raw = rng.bytes(16 * n)
    uids = [str(uuid.UUID(bytes=raw[16 * i:16 * i + 16])) for i in range(n)]
    s.con.register("_u", pa.table({"uid": uids, "i": np.arange(n)}))
    s.con.execute("INSERT INTO samples (uid, source, url, run_id) SELECT uid::UUID, 'bench', "
                  "'https://example.com/' || i || '.jpg', 1 + i // 250000 FROM _u")
    s.con.unregister("_u")
    topics = rng.standard_normal((a.topics, d)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    kind = rng.random(n)
    near = kind < a.near_frac
    exact = (kind >= a.near_frac) & (kind < a.near_frac + a.exact_frac)
    near[:1000] = exact[:1000] = False
    src = (rng.random(n) * np.arange(n)).astype(np.int64)  # an earlier row
    planted = np.flatnonzero(near | exact)
    x = np.empty((n, d), np.float16)
    block = 100_000
    for s0 in range(0, n, block):
        m = min(block, n - s0)
        lab = rng.integers(0, a.topics, m)
        v = topics[lab] + 1.0 * rng.standard_normal((m, d)).astype(np.float32) / np.sqrt(d)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        x[s0:s0 + m] = v
    for i in planted:  # sequential: a copy may copy a copy
        v = x[src[i]].astype(np.float32)
        if near[i]:
            v = v + rng.uniform(0.05, 0.15) * rng.standard_normal(d).astype(np.float32) / np.sqrt(d)
            v /= np.linalg.norm(v)
        x[i] = v
    np.save(Path(a.work) / "planted.npy", np.stack([planted, src[planted], exact[planted]], 1))
    t1 = time.perf_counter()
    blocks = (Block(x[i:i + block], uids[i:i + block]) for i in range(0, n, block))
    res = write_set(s, "bench", blocks, model="synthetic")
    s.close()
    emit(phase="generate", n=n, d=d, planted_near=int(near.sum()), planted_exact=int(exact.sum()),
         generate_s=round(t1 - t0, 1), write_set_s=round(res.seconds, 1), write_rows_per_s=round(n / res.seconds))


# -- curate --------------------------------------------------------------------------------
def run_curate(a) -> None:
    from curate import Store
    from curate.similarity import semdedup

    s = Store.open(Path(a.work) / "store")
    t0 = time.perf_counter()
    res = semdedup(s, "bench", eps=a.eps, n_clusters=a.clusters, niter=a.niter, keep="first")
    total = time.perf_counter() - t0
    g = res.groups
    ids = np.asarray(s.con.execute("SELECT 1").fetchall())  # noqa: F841 - keep the connection warm
    np.savez(Path(a.work) / "groups_curate.npz", row=g.row, group=g.group, kept=g.kept, sim=g.similarity,
             labels=res.clustering.labels)
    emit(phase="curate", seconds=round(total, 1), **{f"{k}_s": round(v, 2) for k, v in res.timings.items()},
         pairs=res.pairs, groups=g.n_groups, removed=g.removed, largest_cluster=int(np.bincount(res.clustering.labels).max()))
    s.close()


# -- baseline ------------------------------------------------------------------------------
def run_baseline(a) -> None:
    import faiss

    from curate import Store
    from curate.similarity.groups import ingest_order
    from curate.vectors import open_set

    s = Store.open(Path(a.work) / "store")
    vs = open_set(s, "bench")
    first = ingest_order(s, vs)  # the keep rule's order (same as curate's `first`), not timed
    paths = [vs.path / e for e, _, _ in vs.shards]
    s.close()
    t0 = time.perf_counter()
    X = np.concatenate([np.load(p) for p in paths]).astype(np.float32)
    t_load = time.perf_counter() - t0
    k = a.clusters
    ntrain = min(len(X), k * 256)
    rng = np.random.default_rng(1)  # curate's kmeans: default_rng(seed).choice(count, ntrain), sorted
    sample = np.sort(rng.choice(len(X), ntrain, replace=False)) if ntrain < len(X) else np.arange(len(X))
    km = faiss.Kmeans(X.shape[1], k, niter=a.niter, seed=1, spherical=True, verbose=False,
                      max_points_per_centroid=max(256, ntrain // k + 1), min_points_per_centroid=1)
    km.train(X[sample])
    t_km = time.perf_counter() - t0 - t_load
    _, lab = km.index.search(X, 1)
    lab = lab.ravel()
    t_assign = time.perf_counter() - t0 - t_load - t_km
    thr = 1 - a.eps
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(k + 1))
    rows, groups, kept = [], [], []
    gid = 0
    for c in range(k):
        ids = order[bounds[c]:bounds[c + 1]]
        if len(ids) < 2:
            continue
        ids = ids[np.argsort(first[ids], kind="stable")]  # keep order inside the cluster
        E = X[ids]
        S = E @ E.T
        ii, jj = np.nonzero(np.triu(S, 1) > thr)
        if not len(ii):
            continue
        assigned = np.zeros(len(ids), bool)
        for u in np.unique(np.concatenate([ii, jj])):  # ascending = keep order
            if assigned[u]:
                continue
            assigned[u] = True
            mem = np.flatnonzero((S[u] > thr) & ~assigned)
            if not len(mem):
                continue
            assigned[mem] = True
            gid += 1
            rows.append(ids[np.concatenate([[u], mem])])
            groups.append(np.full(len(mem) + 1, gid))
            kept.append(np.concatenate([[True], np.zeros(len(mem), bool)]))
    t_pairs = time.perf_counter() - t0 - t_load - t_km - t_assign
    total = time.perf_counter() - t0
    row = np.concatenate(rows) if rows else np.empty(0, np.int64)
    kp = np.concatenate(kept) if kept else np.empty(0, bool)
    np.savez(Path(a.work) / "groups_baseline.npz", row=row, group=np.concatenate(groups) if groups else row, kept=kp,
             labels=lab)
    emit(phase="baseline", seconds=round(total, 1), load_s=round(t_load, 2), kmeans_s=round(t_km, 2),
         assign_s=round(t_assign, 2), pairs_and_groups_s=round(t_pairs, 2), groups=int(kp.sum()),
         removed=int((~kp).sum()))


# -- truth ---------------------------------------------------------------------------------
def as_sets(z) -> dict[int, frozenset]:
    out: dict[int, set] = {}
    for g, r in zip(z["group"], z["row"]):
        out.setdefault(int(g), set()).add(int(r))
    kept = {int(g): int(r) for g, r, k in zip(z["group"], z["row"], z["kept"]) if k}
    return {kept[g]: frozenset(m) for g, m in out.items()}


def run_truth(a) -> None:
    import faiss

    from curate import Store
    from curate.vectors import open_set

    s = Store.open(Path(a.work) / "store", read_only=True)
    vs = open_set(s, "bench")
    X = vs.matrix(np.float32)
    s.close()
    thr = 1 - a.eps
    cur, base = np.load(Path(a.work) / "groups_curate.npz"), np.load(Path(a.work) / "groups_baseline.npz")
    same_labels = bool(np.array_equal(cur["labels"], base["labels"]))
    gc, gb = as_sets(cur), as_sets(base)
    identical = len(set(gc.items()) & set(gb.items()))
    rng = np.random.default_rng(2)
    q = np.sort(rng.choice(len(X), a.truth_queries, replace=False))
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    t0 = time.perf_counter()
    lims, _, nbr = index.range_search(X[q], thr - 1e-4)
    t_truth = time.perf_counter() - t0
    qi = np.repeat(q, np.diff(lims).astype(np.int64))
    sc = np.einsum("ij,ij->i", X[qi].astype(np.float64), X[nbr].astype(np.float64))
    m = (sc > thr) & (nbr != qi)
    true_pairs = set(zip(qi[m].tolist(), nbr[m].tolist()))

    def scores(z):
        grp = {}
        kept_of = {}
        for g, r, k in zip(z["group"], z["row"], z["kept"]):
            grp[int(r)] = int(g)
            if k:
                kept_of[int(g)] = int(r)
        found = sum(1 for i, j in true_pairs if i in grp and grp.get(j) == grp[i])
        mk = [(r, kept_of[grp[r]]) for r in q.tolist() if r in grp and kept_of[grp[r]] != r]
        good = sum(1 for r, k in mk if float(X[r].astype(np.float64) @ X[k].astype(np.float64)) > thr)
        return found / max(1, len(true_pairs)), good / max(1, len(mk)), len(mk)

    rc, pc, nc = scores(cur)
    rb, pb, nb = scores(base)
    emit(phase="truth", queries=len(q), true_pairs=len(true_pairs), brute_force_s=round(t_truth, 1),
         same_clusters=same_labels, groups_curate=len(gc), groups_baseline=len(gb), identical_groups=identical,
         recall_curate=round(rc, 4), precision_curate=round(pc, 4), member_pairs_curate=nc,
         recall_baseline=round(rb, 4), precision_baseline=round(pb, 4), member_pairs_baseline=nb)


# -- search --------------------------------------------------------------------------------
def run_search(a) -> None:
    import faiss

    from curate import Store
    from curate.similarity import build_index
    from curate.vectors import open_set

    s = Store.open(Path(a.work) / "store", read_only=True)
    vs = open_set(s, "bench")
    rng = np.random.default_rng(3)
    q = vs.rows(np.sort(rng.choice(vs.count, a.queries, replace=False)))
    thr = 1 - a.eps
    X = vs.matrix(np.float32)
    flat = faiss.IndexFlatIP(vs.dim)
    t0 = time.perf_counter()
    flat.add(X)
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, ref = flat.search(q, 10)
    t_knn = time.perf_counter() - t0
    t0 = time.perf_counter()
    lims, _, _ = flat.range_search(q, thr)
    t_rng = time.perf_counter() - t0
    emit(phase="search", index="faiss.IndexFlatIP (float32 in memory)", build_s=round(t_add, 1),
         knn_qps=round(len(q) / t_knn), range_qps=round(len(q) / t_rng), recall_at_10=1.0,
         range_hits=int(lims[-1]))
    del flat, X
    for factory, kw in (("Flat", {}), (f"IVF{a.nlist},Flat", {"nprobe": a.nprobe}), ("HNSW32", {"ef_search": 128})):
        if factory == "HNSW32" and a.skip_hnsw:
            continue
        t0 = time.perf_counter()
        index = build_index(vs, factory, **kw)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, rows = index.knn(q, 10)
        t_knn = time.perf_counter() - t0
        t0 = time.perf_counter()
        hits = sum(len(r) for _, r, _ in index.range(q, thr))
        t_rng = time.perf_counter() - t0
        rec = np.mean([len(set(rows[i]) & set(ref[i])) / 10 for i in range(len(q))])
        emit(phase="search", index=f"curate {factory} {kw or ''}".strip(), build_s=round(t_build, 1),
             knn_qps=round(len(q) / t_knn), range_qps=round(len(q) / t_rng), recall_at_10=round(float(rec), 4),
             range_hits=int(hits))
        del index
    s.close()


PHASES = {"generate": generate, "curate": run_curate, "baseline": run_baseline, "truth": run_truth,
          "search": run_search}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--topics", type=int, default=2000)
    ap.add_argument("--near-frac", type=float, default=0.04)
    ap.add_argument("--exact-frac", type=float, default=0.01)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--truth-queries", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--skip-hnsw", action="store_true")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "curate-bench-similarity"))
    ap.add_argument("--phase", choices=[*PHASES, "all"], default="all")
    a = ap.parse_args()
    if a.phase != "all":
        PHASES[a.phase](a)
        return
    import faiss

    print(json.dumps({"machine": {"cpus": os.cpu_count(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
                                  "faiss": faiss.__version__, "numpy": np.__version__}}), flush=True)
    import shutil

    shutil.rmtree(a.work, ignore_errors=True)
    Path(a.work).mkdir(parents=True)
    argv = [a for a in sys.argv[1:] if not a.startswith("--phase")]
    for ph in PHASES:
        subprocess.run([sys.executable, __file__, *argv, "--phase", ph], check=True)


if __name__ == "__main__":
    main()
