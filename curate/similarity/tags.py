"""Zero-shot tagging: the top-k concepts of every image, by cosine similarity of the
image embedding to the text embeddings of a concept vocabulary (a ``concept`` vector
set whose ids are the concept names).

Writes ``concept_tags`` (``set_name``, ``concept_set``, ``uid``, ``concept``, ``score``,
``rank``, ``config_hash``, ``run_id``): ``k`` rows per image, rank 1 the best; scores
are exact (float64 of the stored float16 values) and ties are ranked by the concept's
row in its set. A rerun of the same config replaces its rows. The search runs on an
index over the concepts (``factory``, default ``Flat``: concept vocabularies are small),
so the same code serves IVF/HNSW for very large vocabularies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .. import progress
from ..errors import ConfigError, InputError
from ..runs import start_run
from ..store import Store
from ..vectors import open_set
from .groups import ensure_tables
from .index import Index, build_index

STAGE = "similarity.tags.v1"


@dataclass
class TagResult:
    set_name: str
    concept_set: str
    k: int
    images: int
    rows: int
    run_id: int | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{STAGE}: {self.images:,} images of {self.set_name!r} tagged with the top {self.k} of "
                f"{self.concept_set!r}; {self.rows:,} tag rows; {self.seconds:.1f}s, run {self.run_id}")


def top_concepts(image_vectors: np.ndarray, index: Index, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, concept rows) of the top ``k`` per image, exact and tie-ordered (Index.knn)."""
    return index.knn(image_vectors, k)


def tag(store: Store, set_name: str, concept_set: str, *, k: int = 5, factory: str = "Flat",
        nprobe: int | None = None, ef_search: int | None = None, device: str = "auto",
        block_rows: int = 65_536) -> TagResult:
    """Tag every image of ``set_name`` with its top-``k`` concepts of ``concept_set``."""
    vs = open_set(store, set_name)
    cs = open_set(store, concept_set)
    if vs.kind != "image":
        raise ConfigError(f"set {set_name} holds {vs.kind} vectors; tagging needs an image set")
    if cs.kind != "concept":
        raise ConfigError(f"set {concept_set} holds {cs.kind} vectors; tagging needs a concept set "
                          "(`curate vectors add NAME EMB.npy NAMES.txt --kind concept`)")
    if cs.dim != vs.dim:
        raise InputError(f"wrong dimension: concept set {concept_set} has dim {cs.dim}, image set {set_name} {vs.dim} "
                         "(embed both with the same model)")
    if not 1 <= k <= cs.count:
        raise ConfigError(f"k must be between 1 and the {cs.count:,} concepts, got {k}")
    ensure_tables(store)
    cfg = {"set": set_name, "set_run_id": vs.run_id, "concept_set": concept_set, "concept_run_id": cs.run_id, "k": k,
           "factory": factory, "nprobe": nprobe, "ef_search": ef_search}
    with start_run(store, "similarity", STAGE, cfg) as run:
        t0 = time.perf_counter()
        index = build_index(cs, factory, nprobe=nprobe, ef_search=ef_search, device=device)
        concepts = cs.ids()
        uids = vs.ids()
        parts = []
        for s, b in progress.blocks(vs.blocks(block_rows), vs.count, "tag images"):
            sc, rows = top_concepts(b, index, k)
            n = len(b)
            valid = rows >= 0
            img = np.repeat(np.arange(s, s + n), k).reshape(n, k)[valid]
            parts.append(pa.table({
                "uid": uids.take(pa.array(img)),
                "concept": concepts.take(pa.array(rows[valid])),
                "score": pa.array(sc[valid]),
                "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), (n, 1))[valid]),
            }))
        tags = pa.concat_tables(parts)
        with run.transaction() as w:
            w.execute("DELETE FROM concept_tags WHERE config_hash = ?", [run.hash])
            w.register("_curate_tags", tags)
            w.execute("INSERT INTO concept_tags SELECT ?, ?, uid::UUID, concept, score, rank, ?, ? FROM _curate_tags",
                      [set_name, concept_set, run.hash, run.id])
            w.unregister("_curate_tags")
            res = TagResult(set_name, concept_set, k, vs.count, tags.num_rows, run.id, time.perf_counter() - t0)
            run.commit_ok(w, vs.count, tags.num_rows)
    return res
