"""The similarity passes over embedding sets (engines: :mod:`curate.similarity`).

Each class's fields are its engine's keyword arguments (``index_name`` for
:func:`~curate.similarity.index.create_index`'s ``name``, which a pass reserves for its
registry name); the checks that need no store run when the pass is built, the rest
(the set exists, has the right kind and dimension) when it runs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..attributes import Attribute
from ..errors import ConfigError
from .base import Pass

Device = Literal["auto", "cpu", "gpu"]

if TYPE_CHECKING:
    from ..store import Store


IMAGE_DEDUP_KEPT = Attribute(
    "image_dedup_kept", "sample", "bool",
    "false when the sample is a dropped member of an image duplicate group (member_kind 'uid') "
    "of the latest image dedup run of its kind and scope",
    # every image dedup kind (image_semantic, image_near, image_exact): the latest run of
    # each kind and scope is known by its groups
    sql="SELECT g.member_id AS uid, bool_and(g.kept) AS value FROM dedup_groups g "
        "JOIN (SELECT kind, scope, max(run_id) AS run_id FROM dedup_groups WHERE member_kind = 'uid' "
        "GROUP BY kind, scope) l USING (kind, scope, run_id) "
        "WHERE g.member_kind = 'uid' GROUP BY g.member_id",
    default=True, table="dedup_groups",
    latest="the latest run of each image dedup kind (semantic, near, exact) and scope",
)
PLACEHOLDER_IMAGE = Attribute(
    "placeholder_image", "sample", "bool",
    "true when the sample's image bytes (sha256) are a placeholder of the latest placeholder scan",
    sql="SELECT s.uid, true AS value FROM samples s JOIN image_placeholders p ON p.sha256 = s.sha256 "
        "AND p.run_id = (SELECT max(run_id) FROM image_placeholders)",
    default=False, table="image_placeholders",
    latest="the latest placeholder scan",
)
TARGET_SELECTED = Attribute(
    "target_selected", "sample", "bool",
    "true when the sample's cluster was chosen by the latest target-distribution filter run "
    "(curate similarity target)",
    sql="SELECT uid, selected AS value FROM target_selection "
        "WHERE run_id = (SELECT max(run_id) FROM target_selection)",
    table="target_selection",
    latest="the latest target-filter run",
)


def _needs_faiss(p: Pass) -> None:
    from .._optional import require

    require("faiss", purpose=p.registry_name())


@dataclasses.dataclass(frozen=True)
class SemDedup(Pass):
    """SemDeDup over a vector set (:func:`~curate.similarity.semdedup.semdedup`)."""

    name: ClassVar[str] = "similarity.semdedup"
    version: ClassVar[int] = 1
    writes: ClassVar[tuple[str, ...]] = ("dedup_groups", "vector_clusters")
    attributes: ClassVar[tuple[Attribute, ...]] = (IMAGE_DEDUP_KEPT,)
    produced_by: ClassVar[str] = "semantic dedup of a vector set (curate similarity semdedup SET)"

    set_name: str
    eps: float = 0.05
    n_clusters: int | None = None
    niter: int = 20
    seed: int = 1
    keep: Literal["farthest", "nearest", "score", "first"] = "farthest"
    score: str | None = None
    grouping: Literal["center", "components"] = "center"
    max_points_per_centroid: int = 256
    device: Device = "auto"

    def __post_init__(self) -> None:
        from ..similarity.semdedup import check_options

        check_options(self.eps, self.keep, self.score)

    def preflight(self) -> None:
        _needs_faiss(self)

    def run(self, store: Store) -> Any:
        from ..similarity.semdedup import semdedup

        return semdedup(store, self.set_name, eps=self.eps, n_clusters=self.n_clusters, niter=self.niter,
                        seed=self.seed, keep=self.keep, score=self.score, grouping=self.grouping,
                        max_points_per_centroid=self.max_points_per_centroid, device=self.device)


@dataclasses.dataclass(frozen=True)
class NearDuplicates(Pass):
    """Near-duplicate images by range search (:func:`~curate.similarity.near.near_duplicates`).
    Its groups count for ``image_dedup_kept`` (declared once, by similarity.semdedup.v1)."""

    name: ClassVar[str] = "similarity.near"
    version: ClassVar[int] = 1
    writes: ClassVar[tuple[str, ...]] = ("dedup_groups",)
    produced_by: ClassVar[str] = "near-duplicate images by range search (curate similarity neardup SET)"

    set_name: str
    threshold: float = 0.95
    factory: str = "Flat"
    index_name: str | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    keep: Literal["first", "score"] = "first"
    score: str | None = None
    grouping: Literal["center", "components"] = "center"
    device: Device = "auto"

    def __post_init__(self) -> None:
        from ..similarity.near import check_near_options

        check_near_options(self.threshold, self.keep)

    def preflight(self) -> None:
        _needs_faiss(self)

    def run(self, store: Store) -> Any:
        from ..similarity.near import near_duplicates

        return near_duplicates(store, self.set_name, threshold=self.threshold, factory=self.factory,
                               index_name=self.index_name, nprobe=self.nprobe, ef_search=self.ef_search,
                               keep=self.keep, score=self.score, grouping=self.grouping, device=self.device)


@dataclasses.dataclass(frozen=True)
class ExactDuplicates(Pass):
    """Exact duplicate images by ``samples.sha256``, and placeholder images
    (:func:`~curate.similarity.near.exact_duplicates`)."""

    name: ClassVar[str] = "similarity.exact"
    version: ClassVar[int] = 1
    writes: ClassVar[tuple[str, ...]] = ("dedup_groups", "image_placeholders")
    attributes: ClassVar[tuple[Attribute, ...]] = (PLACEHOLDER_IMAGE,)
    produced_by: ClassVar[str] = "the exact-duplicate and placeholder scan (curate similarity exact)"

    min_urls: int = 20
    keep: Literal["first", "score"] = "first"
    score: str | None = None

    def __post_init__(self) -> None:
        from ..similarity.near import check_exact_options

        check_exact_options(self.min_urls, self.keep, self.score)

    def run(self, store: Store) -> Any:
        from ..similarity.near import exact_duplicates

        return exact_duplicates(store, min_urls=self.min_urls, keep=self.keep, score=self.score)


@dataclasses.dataclass(frozen=True)
class Tags(Pass):
    """Zero-shot tags: the top-``k`` concepts of every image (:func:`~curate.similarity.tags.tag`)."""

    name: ClassVar[str] = "similarity.tags"
    version: ClassVar[int] = 1
    writes: ClassVar[tuple[str, ...]] = ("concept_tags",)
    produced_by: ClassVar[str] = "zero-shot image tagging (curate concepts image-count, or curate similarity tag)"

    set_name: str
    concept_set: str
    k: int = 5
    factory: str = "Flat"
    nprobe: int | None = None
    ef_search: int | None = None
    device: Device = "auto"
    block_rows: int = 65_536

    def __post_init__(self) -> None:
        if self.k < 1:  # the upper bound is the concept set's size, known at run time
            raise ConfigError(f"k must be at least 1, got {self.k}")
        if self.block_rows < 1:
            raise ConfigError(f"block_rows must be at least 1, got {self.block_rows}")

    def preflight(self) -> None:
        _needs_faiss(self)

    def run(self, store: Store) -> Any:
        from ..similarity.tags import tag

        return tag(store, self.set_name, self.concept_set, k=self.k, factory=self.factory, nprobe=self.nprobe,
                   ef_search=self.ef_search, device=self.device, block_rows=self.block_rows)


@dataclasses.dataclass(frozen=True)
class TargetFilter(Pass):
    """DataComp's image-based filter (:func:`~curate.similarity.target.target_filter`)."""

    name: ClassVar[str] = "similarity.target"
    version: ClassVar[int] = 1
    writes: ClassVar[tuple[str, ...]] = ("target_selection", "vector_clusters")
    attributes: ClassVar[tuple[Attribute, ...]] = (TARGET_SELECTED,)
    produced_by: ClassVar[str] = "the target-distribution filter (curate similarity target SET REFERENCE)"

    set_name: str
    reference_set: str
    n_clusters: int = 1000
    niter: int = 20
    seed: int = 1
    device: Device = "auto"

    def __post_init__(self) -> None:
        if self.n_clusters < 1 or self.niter < 1:
            raise ConfigError(f"n_clusters and niter must be at least 1, got {self.n_clusters} and {self.niter}")

    def preflight(self) -> None:
        _needs_faiss(self)

    def run(self, store: Store) -> Any:
        from ..similarity.target import target_filter

        return target_filter(store, self.set_name, self.reference_set, n_clusters=self.n_clusters, niter=self.niter,
                             seed=self.seed, device=self.device)


@dataclasses.dataclass(frozen=True)
class CreateIndex(Pass):
    """Build and save a FAISS index over a set (:func:`~curate.similarity.index.create_index`).
    The index is files under ``indexes/<index_name>/``; in the database it writes its
    runs row only."""

    name: ClassVar[str] = "similarity.index"
    version: ClassVar[int] = 1
    writes: ClassVar[tuple[str, ...]] = ("runs",)
    produced_by: ClassVar[str] = "a saved FAISS index (curate similarity index SET)"

    set_name: str
    factory: str = "Flat"
    index_name: str | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    train_rows: int | None = None
    seed: int = 1
    device: Device = "auto"
    float16: bool = False

    def preflight(self) -> None:
        _needs_faiss(self)

    def run(self, store: Store) -> Any:
        from ..similarity.index import IndexResult, create_index

        return IndexResult(*create_index(store, self.set_name, self.factory, name=self.index_name, nprobe=self.nprobe,
                                         ef_search=self.ef_search, train_rows=self.train_rows, seed=self.seed,
                                         device=self.device, float16=self.float16))


@dataclasses.dataclass(frozen=True)
class MergeCaptions(Pass):
    """Caption-aware merge of an image dedup run's dropped duplicates into their kept
    samples (:func:`~curate.similarity.near.merge_captions`; ``run_id``: the grouping
    run, default the latest of ``kind``). A rerun adds nothing; with nothing to merge
    no run is recorded (``run_id`` None)."""

    name: ClassVar[str] = "similarity.merge_captions"
    version: ClassVar[int] = 1
    writes: ClassVar[tuple[str, ...]] = ("captions",)
    produced_by: ClassVar[str] = "the caption-aware merge (curate similarity merge-captions)"

    kind: str = "image_semantic"
    run_id: int | None = None
    suffix: str = "_dup"

    def __post_init__(self) -> None:
        from ..similarity.near import check_suffix

        check_suffix(self.suffix)

    def run(self, store: Store) -> Any:
        from ..similarity.near import merge_captions_result

        return merge_captions_result(store, self.kind, self.run_id, suffix=self.suffix)
