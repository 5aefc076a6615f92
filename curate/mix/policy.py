"""Mixing policies: what to select, which caption(s) to emit, how to weight, how many.

A :class:`Policy` is four parts plus its output, all frozen dataclasses:

* ``select``: typed predicates (:class:`Predicate`) on attributes of the sample or of
  one of its caption variants (:mod:`curate.mix.attributes` lists them and the stage
  that produces each). A predicate compares with a ``value``, or keeps a ``fraction``
  of the pool, turned into a threshold by an order statistic in SQL.
* ``choose``: a caption strategy, one class per paper's rule
  (:data:`curate.mix.strategies.STRATEGIES`), owning its requirements and SQL.
* ``weight``: :class:`NoWeight`, :class:`MetaCLIPWeight` or :class:`TemperatureWeight`
  (:mod:`curate.mix.strategies`).
* ``budget``: :class:`Budget`, a number of samples and/or proportions per source or
  variant, with a stated rounding rule (largest remainder).

In Python, ``select`` may also be given as polars expressions (``col("clip_score",
"raw") >= 0.3``, :mod:`curate.mix.expr`); they become the same predicates.

The TOML form (``pipelines/policies/*.toml``) is a serialisation of the same objects:
:func:`policy_from_dict` builds them by the rules of :mod:`curate.config` and
:meth:`Policy.to_dict` writes them back, so ``policy_from_dict(p.to_dict()) == p``.
Every value is checked when the objects are built; :func:`curate.mix.check.check_policy`
then checks the policy against a store (tables present, variants known) before any work.

::

    [policy]
    name = "capsfusion-guard"
    seed = 0
    sources = ["capsfusion"]          # optional: all sources

    [[select]]                        # zero or more, all must hold
    attribute = "words"
    variant = "raw"                   # caption attributes: which caption of the sample
    op = ">="
    value = 3

    [choose]
    strategy = "capsfusion"
    min_retention = 0.5

    [weight]                          # optional
    method = "metaclip"
    vocabulary = "cifar10"
    t = 20

    [budget]                          # optional
    samples = 1000
    by = "variant"
    proportions = { fused = 0.8, raw = 0.2 }

    [output]
    format = "parquet"                # parquet, csv, tsv, json, jsonl, npy
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from ..config import check, dump_toml, from_dict, load_toml, to_dict
from ..config import drop_none as _drop_none
from ..errors import ConfigError
from ..names import check_name
from .expr import OPS, Predicate, conjunction, predicates_from_expr
from .strategies import (
    STRATEGIES,
    WEIGHTS,
    CapsFusion,
    KnowledgeAware,
    LaCLIP,
    MetaCLIPWeight,
    Nguyen,
    NoWeight,
    OneVariant,
    Ratio,
    Strategy,
    TemperatureWeight,
    VeCLIP,
    Weight,
    _check_probs,
)

__all__ = ["OPS", "FORMATS", "Budget", "CapsFusion", "KnowledgeAware", "LaCLIP", "MetaCLIPWeight", "Nguyen", "NoWeight",
           "OneVariant", "Output", "Policy", "Predicate", "Ratio", "STRATEGIES", "TemperatureWeight", "VeCLIP",
           "WEIGHTS", "load_policy", "policy_from_dict", "save_policy"]

FORMATS = ("parquet", "csv", "tsv", "json", "jsonl", "npy")


# -- budget ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    """How many samples, in which proportions.

    * ``samples`` alone: the first ``samples`` rows in draw order.
    * ``by`` + ``proportions`` (shares per source or chosen variant, summing to 1): group
      quotas by the largest-remainder rule: ``floor(N * p)`` each, then one more to the
      groups with the largest fractional parts (ties: group name) until N is reached.
      A group with fewer rows than its quota gives all it has; the shortfall is not
      moved to other groups (the sidecar reports it). Without ``samples``, N is the
      largest total every group can fill: ``floor(min(available / p))``.
      Groups not named get nothing.
    * draw order: ``hash`` = ascending ``hash(uid, seed)``; ``weighted`` = ascending
      ``-ln(u) / weight`` with ``u`` from the same hash (Efraimidis & Spirakis 2006:
      weighted sampling without replacement).
    """

    samples: int | None = None
    by: Literal["source", "variant"] | None = None
    proportions: dict[str, float] = dataclasses.field(default_factory=dict)
    order: Literal["hash", "weighted"] = "hash"

    def __post_init__(self) -> None:
        if self.samples is not None and self.samples < 0:
            raise ConfigError(f"budget.samples must be 0 or more, got {self.samples}")
        if bool(self.by) != bool(self.proportions):
            raise ConfigError("budget: by and proportions go together (proportions per source or variant)")
        if self.proportions:
            _check_probs("budget.proportions", self.proportions, self.by or "group")


# -- output ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Output:
    """Where and how the manifest is written (under the store's ``manifests/``).

    ``name`` (else the policy's name) is the file stem, a checked file name
    (:func:`curate.names.check_name`). ``candidates``: parquet/jsonl add a ``captions``
    list of every candidate caption with its probability. ``repeat_factor`` (npy only):
    a uid of weight w is written ``floor(w * repeat_factor + u)`` times, ``u`` a seeded
    uniform draw (:func:`curate.mix.manifest.copies_sql`; DataComp's resharder emits a
    sample once per occurrence); unset, each uid once, which unequal weights refuse.
    ``max_repeats`` bounds ``max(w) * repeat_factor`` (a larger product is refused, not
    capped).
    """

    format: Literal["parquet", "csv", "tsv", "json", "jsonl", "npy"] = "parquet"
    name: str | None = None
    candidates: bool = False
    repeat_factor: float | None = None
    max_repeats: int = 100
    #: csv/tsv (whose ``filepath`` open_clip opens as a file): ``local`` writes only the
    #: rows whose image is a local file that exists, counting the others by reason in
    #: the sidecar; ``any`` also writes the url for a sample without one (a loader that
    #: fetches urls)
    images: Literal["local", "any"] = "local"

    def __post_init__(self) -> None:
        if self.name is not None:
            check_name("output", self.name)
        if self.repeat_factor is not None and self.format != "npy":
            raise ConfigError("output.repeat_factor applies to the npy format only (integer repeats)")
        if self.repeat_factor is not None and not self.repeat_factor > 0:
            raise ConfigError(f"output.repeat_factor must be positive, got {self.repeat_factor}")
        if self.max_repeats < 1:
            raise ConfigError(f"output.max_repeats must be at least 1, got {self.max_repeats}")
        if self.images != "local" and self.format not in ("csv", "tsv"):
            raise ConfigError("output.images applies to the csv and tsv formats (their filepath is opened as a file)")


# -- the policy ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    choose: Strategy = dataclasses.field(default_factory=OneVariant)
    select: tuple[Predicate, ...] = ()
    weight: Weight = dataclasses.field(default_factory=NoWeight)
    budget: Budget = dataclasses.field(default_factory=Budget)
    output: Output = dataclasses.field(default_factory=Output)
    seed: int = 0
    sources: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        check_name("policy", self.name)  # the manifest's file stem unless output.name is set
        if not (isinstance(self.select, tuple) and all(isinstance(p, Predicate) for p in self.select)):
            # polars expressions (curate.mix.expr) become the same typed predicates as TOML
            object.__setattr__(self, "select", predicates_from_expr(self.select))
        if self.budget.by == "source" and self.sources is not None:
            outside = sorted(set(self.budget.proportions) - set(self.sources))
            if outside:
                raise ConfigError(f"budget.proportions names source(s) {', '.join(outside)} outside policy.sources "
                                  f"({', '.join(self.sources)})")
        if self.budget.by == "variant" and self.budget.proportions:
            unknown = sorted(set(self.budget.proportions) - set(self.choose.emits()))
            if unknown:
                raise ConfigError(f"budget.proportions names variant(s) {', '.join(unknown)} that "
                                  f"choose ({self.choose.strategy}) never emits; it emits {', '.join(self.choose.emits())}")

    def select_expr(self) -> Any:
        """The select predicates as one polars expression (``&`` of each), to filter
        :func:`curate.mix.attribute_frame` the way the policy's SQL selects."""
        return conjunction(self.select)

    def with_seed(self, seed: int) -> Policy:
        return dataclasses.replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """The TOML shape, every default written out (the resolved policy)."""
        choose = to_dict(self.choose)
        out: dict[str, Any] = {
            "policy": {"name": self.name, "description": self.description, "seed": self.seed,
                       "sources": list(self.sources) if self.sources is not None else None},
            "select": [{k: v for k, v in to_dict(p).items() if v is not None} for p in self.select],
            "choose": choose,
            "weight": to_dict(self.weight),
            "budget": to_dict(self.budget),
            "output": to_dict(self.output),
        }
        plain: dict[str, Any] = _drop_none(out)
        return plain

    def to_toml(self) -> str:
        """The policy file for :meth:`to_dict` (every default written out):
        ``load_policy`` of it gives this policy back (tested for every shipped policy)."""
        return dump_toml(self.to_dict(), order=("policy", "select", "choose", "weight", "budget", "output"))

    def hash(self) -> str:
        """sha256 of the canonical JSON of :meth:`to_dict` (sorted keys)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def save_policy(policy: Policy, path: str | Path) -> Path:
    """Write ``policy`` as a TOML policy file (:meth:`Policy.to_toml`)."""
    p = Path(path)
    p.write_text(policy.to_toml(), encoding="utf-8")
    return p


TOP_KEYS = {"policy", "select", "choose", "weight", "budget", "output"}
POLICY_KEYS = {"name", "description", "seed", "sources"}


def policy_from_dict(data: dict[str, Any], where: str = "policy", default_name: str = "policy") -> Policy:
    """Build a :class:`Policy` from its TOML shape; every problem is a ConfigError naming
    the key that holds it."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(sorted(TOP_KEYS))}")
    head = data.get("policy", {})
    if not isinstance(head, dict):
        raise ConfigError(f"{where} [policy]: expected a table")
    unknown = sorted(set(head) - POLICY_KEYS)
    if unknown:
        raise ConfigError(f"{where} [policy]: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(POLICY_KEYS))}")
    name = check(f"{where} policy.name", head.get("name", default_name), str)
    seed = check(f"{where} policy.seed", head.get("seed", 0), int)
    sources = head.get("sources")
    if sources is not None:
        sources = check(f"{where} policy.sources", sources, tuple[str, ...])
    description = check(f"{where} policy.description", head.get("description", ""), str)

    sel = data.get("select", [])
    if not isinstance(sel, list):
        raise ConfigError(f"{where} select: expected an array of tables ([[select]])")
    select = tuple(from_dict(Predicate, p, f"{where} select[{i}]") for i, p in enumerate(sel))

    ch = data.get("choose", {"strategy": "variant"})
    if not isinstance(ch, dict):
        raise ConfigError(f"{where} [choose]: expected a table")
    strategy = ch.get("strategy")
    if strategy not in STRATEGIES:
        raise ConfigError(f"{where} choose.strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    choose = from_dict(STRATEGIES[strategy], ch, f"{where} [choose]", skip=("strategy",))

    wt = data.get("weight", {"method": "none"})
    if not isinstance(wt, dict):
        raise ConfigError(f"{where} [weight]: expected a table")
    method = wt.get("method")
    if method not in WEIGHTS:
        raise ConfigError(f"{where} weight.method: expected one of {', '.join(WEIGHTS)}, got {method!r}")
    weight = from_dict(WEIGHTS[method], wt, f"{where} [weight]", skip=("method",))

    budget = from_dict(Budget, data.get("budget", {}), f"{where} [budget]")
    output = from_dict(Output, data.get("output", {}), f"{where} [output]")
    try:
        return Policy(name=name, choose=choose, select=select, weight=weight, budget=budget, output=output,
                      seed=seed, sources=sources, description=description)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy TOML file (nothing is run)."""
    p = Path(path)
    data = load_toml(p, what="policy file")
    return policy_from_dict(data, where=str(p), default_name=p.stem)
