"""The caption dedup pass (engine: :func:`curate.dedup.text.dedup_captions`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..attributes import Attribute
from ..errors import ConfigError
from .base import Pass

if TYPE_CHECKING:
    from ..dedup.text import DedupConfig
    from ..store import Store

DEDUP_KEPT = Attribute(
    "dedup_kept", "caption", "bool",
    "false when the caption is a dropped member of a caption duplicate group of the latest "
    "caption dedup run of its scope",
    # Only the latest run of each (kind, scope) counts: a rerun at another threshold
    # replaces the earlier verdicts instead of adding to them. Caption dedup records
    # every run in dedup_summary (also one that found no group).
    sql="SELECT g.member_id AS caption_id, bool_and(g.kept) AS value FROM dedup_groups g "
        "JOIN (SELECT kind, scope, max(run_id) AS run_id FROM dedup_summary GROUP BY kind, scope) l "
        "USING (kind, scope, run_id) "
        "WHERE g.member_kind = 'caption_id' GROUP BY g.member_id",
    default=True, table="dedup_groups",
    latest="the latest caption dedup run of each kind and scope (dedup_summary)",
)


@dataclasses.dataclass(frozen=True)
class DedupCaptions(Pass):
    """Exact and MinHash near-duplicate captions; the fields are the keyword arguments of
    :func:`~curate.dedup.text.dedup_captions` (``variant``: one, several, or None for all).
    A rerun of a config replaces its rows; its config hash is the engine's
    (:meth:`curate.dedup.text.DedupConfig.config_hash`, ``batch_size`` not included)."""

    name: ClassVar[str] = "dedup.captions"
    version: ClassVar[int] = 1
    writes: ClassVar[tuple[str, ...]] = ("dedup_groups", "dedup_skipped", "dedup_summary")
    attributes: ClassVar[tuple[Attribute, ...]] = (DEDUP_KEPT,)
    produced_by: ClassVar[str] = "caption dedup (curate dedup captions)"

    variant: str | tuple[str, ...] | None = None
    across_variants: bool = False
    threshold: float = 0.8
    num_perm: int = 128
    shingle: int = 3
    keep: Literal["min_id", "longest", "shortest"] = "min_id"
    seed: int = 1
    bands: int | None = None
    rows: int | None = None
    max_bucket: int = 1000
    grouping: Literal["center", "components"] = "center"
    #: one word inserted or deleted is a duplicate when the shorter caption has at least
    #: this many words (0: off); see docs/dedup.md
    edit_min_words: int = 4
    batch_size: int = 50_000

    def __post_init__(self) -> None:
        self.dedup_config()  # the engine's own checks, before any work
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")

    def dedup_config(self) -> DedupConfig:
        """The :class:`~curate.dedup.text.DedupConfig` the engine builds from these fields."""
        from ..dedup.text import DedupConfig

        v = self.variant
        return DedupConfig(variant=(v,) if isinstance(v, str) else None if v is None else tuple(v),
                           **{f: getattr(self, f) for f in ("across_variants", "threshold", "num_perm", "shingle",
                                                           "keep", "seed", "bands", "rows", "max_bucket", "grouping",
                                                           "edit_min_words")})

    def config_hash(self) -> str:
        return self.dedup_config().config_hash()

    def run(self, store: Store) -> Any:
        from ..dedup.text import dedup_captions

        return dedup_captions(store, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
