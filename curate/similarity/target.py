"""Target-distribution filter: DataComp's image-based baseline (Gadre et al. 2023,
arXiv 2304.14108, section 3.4 / ``baselines/image_based_filter`` in mlfoundations/datacomp).

Cluster the image embeddings of the pool with k-means (``n_clusters``; DataComp uses
100,000 on the full pool); for each vector of a *reference* set (DataComp: ImageNet
training images; or the text embeddings of a concept vocabulary) find the nearest
cluster centre; keep the samples whose cluster was chosen by at least one reference
vector. Writes ``target_selection`` (``uid``, ``cluster``, ``cluster_hits``,
``selected``) for every sample and ``vector_clusters`` (purpose ``target``), in one
transaction with its runs row; a rerun of the same config replaces its rows. The
decision to use ``selected`` belongs to a mixing policy: the attribute
``target_selected`` (declared by the pass ``similarity.target.v1``,
:mod:`curate.passes.similarity`) reads the latest run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, InputError
from ..runs import start_run
from ..store import Store
from ..vectors import open_set
from .groups import ensure_tables
from .semdedup import assign, kmeans

STAGE = "similarity.target.v1"


@dataclass
class TargetResult:
    set_name: str
    reference_set: str
    n_clusters: int
    clusters_hit: int
    selected: int
    count: int
    run_id: int | None = None
    seconds: float = 0.0
    centroids: np.ndarray | None = None  # the k-means centres the run used (not stored)

    def summary(self) -> str:
        return (f"{STAGE}: {self.reference_set!r} ({self.clusters_hit:,} of {self.n_clusters:,} clusters hit) selects "
                f"{self.selected:,} of {self.count:,} samples of {self.set_name!r} ({self.selected / self.count:.1%}); "
                f"{self.seconds:.1f}s, run {self.run_id}")


def target_filter(store: Store, set_name: str, reference_set: str, *, n_clusters: int = 1000, niter: int = 20,
                  seed: int = 1, device: str = "auto") -> TargetResult:
    vs = open_set(store, set_name)
    ref = open_set(store, reference_set)
    if vs.kind != "image":
        raise ConfigError(f"set {set_name} holds {vs.kind} vectors; the target filter clusters an image set")
    if ref.dim != vs.dim:
        raise InputError(f"wrong dimension: reference set {reference_set} has dim {ref.dim}, {set_name} has {vs.dim}")
    ensure_tables(store)
    cfg = {"set": set_name, "set_run_id": vs.run_id, "reference_set": reference_set, "reference_run_id": ref.run_id,
           "n_clusters": n_clusters, "niter": niter, "seed": seed}
    with start_run(store, "similarity", STAGE, cfg) as run:
        t0 = time.perf_counter()
        cl = kmeans(vs, n_clusters, niter=niter, seed=seed, device=device)
        ref_labels, _ = assign(ref, cl.centroids)
        hits = np.bincount(ref_labels, minlength=n_clusters)
        per = hits[cl.labels]
        ids = vs.ids()
        t = pa.table({"uid": ids, "cluster": pa.array(cl.labels.astype(np.int32)),
                      "cluster_hits": pa.array(per.astype(np.int32)), "sim": pa.array(cl.centroid_sim)})
        with run.transaction() as w:
            w.execute("DELETE FROM target_selection WHERE config_hash = ?", [run.hash])
            w.execute("DELETE FROM vector_clusters WHERE purpose = 'target' AND config_hash = ?", [run.hash])
            w.register("_curate_target", t)
            w.execute("INSERT INTO target_selection SELECT ?, ?, uid::UUID, cluster, cluster_hits, cluster_hits > 0, ?, ? "
                      "FROM _curate_target", [set_name, reference_set, run.hash, run.id])
            w.execute("INSERT INTO vector_clusters SELECT 'target', ?, uid::UUID, cluster, sim, ?, ? FROM _curate_target",
                      [set_name, run.hash, run.id])
            w.unregister("_curate_target")
            res = TargetResult(set_name, reference_set, n_clusters, int((hits > 0).sum()), int((per > 0).sum()),
                               vs.count, run.id, time.perf_counter() - t0, centroids=cl.centroids)
            run.commit_ok(w, vs.count, vs.count, 0, f"{res.selected} selected")
    return res
