"""Mixing policies: what to select, which caption(s) to emit, how to weight, how many.

A :class:`Policy` is four parts plus its output, all frozen dataclasses:

* ``select``: typed predicates (:class:`Predicate`) on attributes of the sample or of
  one of its caption variants (:mod:`curate.mix.attributes` lists them and the stage
  that produces each). A predicate compares with a ``value``, or keeps a ``fraction``
  of the pool, turned into a threshold by an order statistic in SQL.
* ``choose``: a caption strategy, one class per paper's rule (:data:`STRATEGIES`).
* ``weight``: :class:`NoWeight`, :class:`MetaCLIPWeight` or :class:`TemperatureWeight`.
* ``budget``: :class:`Budget`, a number of samples and/or proportions per source or
  variant, with a stated rounding rule (largest remainder).

In Python, ``select`` may also be given as polars expressions (``col("clip_score",
"raw") >= 0.3``, :mod:`curate.mix.expr`); they become the same predicates.

The TOML form (``pipelines/policies/*.toml``) is a serialisation of the same objects:
:func:`policy_from_dict` builds them and :meth:`Policy.to_dict` writes them back, so
``policy_from_dict(p.to_dict()) == p``. Every value is checked when the objects are
built; :func:`curate.mix.attributes.check_policy` then checks the policy against a
store (tables present, variants known) before any work.

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
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..errors import ConfigError

OPS = ("=", "!=", "<", "<=", ">", ">=", "in", "not_in")
FORMATS = ("parquet", "csv", "tsv", "json", "jsonl", "npy")


# -- typed construction from plain dicts --------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a table of {_type_name(typing.get_args(tp)[1])}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _coerce(where: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; lists become tuples, dicts stay."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(where, value, a)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(f"{where}.{k}", v, vt) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r}")  # pragma: no cover - a programming error


def _build(cls: type, data: dict[str, Any], where: str, skip: tuple[str, ...] = ()) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields) - set(skip))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(f"{where}.{name}", data[name], hints[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing key {name!r} ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _plain(obj: Any) -> Any:
    """Dataclass -> dict without defaults-free surprises: every field, lists for tuples."""
    if dataclasses.is_dataclass(obj):
        out = {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        for tag in ("strategy", "method"):
            if hasattr(type(obj), tag) and isinstance(getattr(type(obj), tag), str):
                out = {tag: getattr(type(obj), tag), **out}
        return out
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _check_probs(where: str, probs: dict[str, float], what: str) -> None:
    if not probs:
        raise ConfigError(f"{where}: needs at least one {what}")
    if any(p < 0 for p in probs.values()):
        raise ConfigError(f"{where}: {what} shares must be 0 or more, got {probs}")
    total = sum(probs.values())
    if abs(total - 1.0) > 1e-9:
        raise ConfigError(f"{where}: {what} shares must sum to 1, got {total:g} ({probs})")


# -- select ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Predicate:
    """``attribute op value``, or ``attribute op <threshold keeping fraction of the pool>``.

    For a caption attribute, ``variant`` names which caption of the sample is tested
    (``None``: any caption of the sample); a sample with several captions of that
    variant passes when one of them does. A missing attribute value fails the
    predicate, except where the attribute states a default (``dedup_kept``: a caption
    in no duplicate group is kept; ``n_concepts``: 0). With ``fraction`` (0 < f <= 1)
    and ``op`` ``>=``/``>``, the threshold is the k-th largest of the n non-null pool
    values, ``k = ceil(n * fraction)`` (so at least k samples pass; ties at the
    threshold all pass); with ``<=``/``<`` the k-th smallest. DataComp's
    ``get_threshold`` takes index ``floor(n * fraction)`` of the descending values, one
    more row at most.
    """

    attribute: str
    op: str = ">="
    value: bool | int | float | str | tuple[str, ...] | None = None
    fraction: float | None = None
    variant: str | None = None
    #: clip_score: the model whose scores are read (needed when the table has several)
    model: str | None = None
    #: concept attributes: vocabulary and match mode of concepts.text_match.v1
    vocabulary: str | None = None
    mode: str = "phrase"

    def __post_init__(self) -> None:
        from .attributes import ATTRIBUTES

        if self.attribute not in ATTRIBUTES:
            raise ConfigError(f"unknown attribute {self.attribute!r}; valid: {', '.join(sorted(ATTRIBUTES))}")
        attr = ATTRIBUTES[self.attribute]
        if self.op not in OPS:
            raise ConfigError(f"{self.attribute}: unknown op {self.op!r}; valid: {', '.join(OPS)}")
        if (self.value is None) == (self.fraction is None):
            raise ConfigError(f"{self.attribute}: give exactly one of value or fraction")
        if self.fraction is not None:
            if attr.type != "number":
                raise ConfigError(f"{self.attribute}: fraction needs a numeric attribute; {self.attribute} is {attr.type}")
            if not 0 < self.fraction <= 1:
                raise ConfigError(f"{self.attribute}: fraction must be in (0, 1], got {self.fraction}")
            if self.op not in ("<", "<=", ">", ">="):
                raise ConfigError(f"{self.attribute}: fraction needs op <, <=, > or >=, got {self.op!r}")
        else:
            attr.check_value(self.op, self.value)
        if attr.level == "sample" and self.variant is not None:
            raise ConfigError(f"{self.attribute} is a sample attribute; it takes no variant")
        if attr.needs_vocabulary and not self.vocabulary:
            raise ConfigError(f"{self.attribute}: needs vocabulary = NAME (a vocabulary of concepts.text_match.v1)")
        if not attr.needs_vocabulary and self.vocabulary:
            raise ConfigError(f"{self.attribute} takes no vocabulary")
        if self.model is not None and self.attribute != "clip_score":
            raise ConfigError(f"{self.attribute} takes no model (only clip_score does)")

    def to_expr(self) -> Any:
        """The same predicate as a polars expression over :func:`curate.mix.attribute_frame`
        (``curate.mix.expr``); :meth:`from_expr` reads it back."""
        from .expr import predicate_expr

        return predicate_expr(self)

    @staticmethod
    def from_expr(expr: Any) -> tuple["Predicate", ...]:
        """Predicates from a polars expression (``&`` of several gives several)."""
        from .expr import predicates_from_expr

        return predicates_from_expr(expr)


# -- choose ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OneVariant:
    """The sample's caption of one variant; samples without it are dropped. Of several
    captions of the variant (COCO's five human captions), the one with the smallest
    ``hash(caption_id, seed)`` (ties to the smaller caption_id)."""

    strategy: ClassVar[str] = "variant"
    variant: str = "raw"

    def emits(self) -> tuple[str, ...]:
        return (self.variant,)


@dataclasses.dataclass(frozen=True)
class Ratio:
    """A fixed ratio across variants, chosen per sample with the seed. The ratios of the
    variants a sample has are renormalised; ``u = hash(uid, seed)`` in [0, 1) picks
    the variant by cumulative share, in the order listed."""

    strategy: ClassVar[str] = "ratio"
    ratios: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_probs("ratio", self.ratios, "variant")

    def emits(self) -> tuple[str, ...]:
        return tuple(self.ratios)


@dataclasses.dataclass(frozen=True)
class Nguyen:
    """Nguyen et al. 2023 (arXiv 2307.10350): the raw caption if its CLIP score is at
    least ``threshold``, else the synthetic caption if its score is at least the same
    ``threshold``, else the sample is dropped."""

    strategy: ClassVar[str] = "nguyen"
    threshold: float = 0.3
    raw: str = "raw"
    synthetic: str = "synthetic"
    model: str | None = None

    def emits(self) -> tuple[str, ...]:
        return (self.raw, self.synthetic)


@dataclasses.dataclass(frozen=True)
class LaCLIP:
    """LaCLIP (Fan et al. 2023, arXiv 2305.20088): every caption of the listed variants
    is a candidate, drawn uniformly at train time (the original and its rewrites)."""

    strategy: ClassVar[str] = "laclip"
    variants: tuple[str, ...] = ("raw", "rewrite")

    def emits(self) -> tuple[str, ...]:
        return self.variants


@dataclasses.dataclass(frozen=True)
class VeCLIP:
    """VeCLIP (Lai et al. 2023, arXiv 2310.07699), mixed training: both the alt-text and
    the enriched caption are candidates, the enriched one with probability
    ``enriched_share``."""

    strategy: ClassVar[str] = "veclip"
    alt: str = "raw"
    enriched: str = "synthetic"
    enriched_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.enriched_share <= 1:
            raise ConfigError(f"veclip: enriched_share must be in [0, 1], got {self.enriched_share}")

    def emits(self) -> tuple[str, ...]:
        return (self.alt, self.enriched)


@dataclasses.dataclass(frozen=True)
class CapsFusion:
    """CapsFusion (Yu et al., CVPR 2024, arXiv 2310.20550) with a knowledge guard: the
    fused caption, unless it keeps fewer than ``min_retention`` of the raw caption's
    knowledge entities (retention as in ``knowledge.retention``; 1 when the raw caption
    has none), then the raw caption. A sample lacking the fused caption falls back to
    raw; lacking both, it is dropped."""

    strategy: ClassVar[str] = "capsfusion"
    fused: str = "fused"
    raw: str = "raw"
    synthetic: str = "synthetic"
    min_retention: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.min_retention <= 1:
            raise ConfigError(f"capsfusion: min_retention must be in [0, 1], got {self.min_retention}")

    def emits(self) -> tuple[str, ...]:
        return (self.fused, self.raw)


@dataclasses.dataclass(frozen=True)
class KnowledgeAware:
    """Knowledge-aware choice (curate's rule, after CapsFusion's finding that fused
    captions keep alt-text knowledge): among the listed variants, those with no
    hallucinated knowledge entity; of these the one that retains the most raw
    entities; ties go to the earlier variant in the list. No candidate: dropped."""

    strategy: ClassVar[str] = "knowledge"
    variants: tuple[str, ...] = ("fused", "raw", "synthetic")
    raw: str = "raw"
    synthetic: str = "synthetic"

    def emits(self) -> tuple[str, ...]:
        return self.variants


STRATEGIES: dict[str, type] = {c.strategy: c for c in (OneVariant, Ratio, Nguyen, LaCLIP, VeCLIP, CapsFusion,
                                                          KnowledgeAware)}
Choose = OneVariant | Ratio | Nguyen | LaCLIP | VeCLIP | CapsFusion | KnowledgeAware


# -- weight ----------------------------------------------------------------------------
def _check_counts(where: str, w: Any) -> None:
    if w.counts == "matched":
        if not (w.image_set and w.concept_set):
            raise ConfigError(f"{where}: counts = \"matched\" needs image_set and concept_set (the image vector set "
                              "and the concept vector set of concept_tags, from curate concepts image-count)")
        if w.k < 1:
            raise ConfigError(f"{where}: k must be at least 1, got {w.k}")
    elif w.image_set or w.concept_set:
        raise ConfigError(f"{where}: image_set and concept_set apply to counts = \"matched\" only")


@dataclasses.dataclass(frozen=True)
class NoWeight:
    """Every sample weighs 1."""

    method: ClassVar[str] = "none"


@dataclasses.dataclass(frozen=True)
class MetaCLIPWeight:
    """MetaCLIP balancing (Xu et al. 2023, arXiv 2309.16671): a concept named by
    ``count`` samples keeps each with probability ``t / max(count, t)``; a sample naming
    several concepts is kept if any of them keeps it: ``w = 1 - prod(1 - t/max(count, t))``.
    Counts are samples per concept among the selected samples' ``captions`` (the chosen
    caption, or any caption). Samples naming no concept get ``unmatched_weight``, or
    are dropped with ``drop_unmatched`` (MetaCLIP's pool has only matched texts).

    ``counts = "matched"`` counts a concept for a sample only when its image shows it
    too: the concept is also among the image's top ``k`` zero-shot tags (score at least
    ``min_score``) in ``concept_tags`` of ``image_set`` and ``concept_set``, the
    matched frequency of Udandarao et al. 2024 (arXiv 2404.04125), as in
    ``curate concepts image-count``."""

    method: ClassVar[str] = "metaclip"
    vocabulary: str = ""
    t: int = 20_000
    mode: str = "phrase"
    captions: Literal["chosen", "any"] = "chosen"
    unmatched_weight: float = 1.0
    drop_unmatched: bool = False
    counts: Literal["text", "matched"] = "text"
    image_set: str | None = None
    concept_set: str | None = None
    k: int = 5
    min_score: float = 0.0

    def __post_init__(self) -> None:
        if not self.vocabulary:
            raise ConfigError("metaclip: needs vocabulary = NAME")
        _check_counts("metaclip", self)
        if self.t < 1:
            raise ConfigError(f"metaclip: t must be at least 1, got {self.t}")
        if not self.unmatched_weight > 0:
            raise ConfigError(f"metaclip: unmatched_weight must be positive, got {self.unmatched_weight}")


@dataclasses.dataclass(frozen=True)
class TemperatureWeight:
    """Temperature sampling over concepts (as for languages in multilingual mixtures,
    Arivazhagan et al. 2019, arXiv 1907.05019): concept c with share q_c is drawn with
    p_c proportional to q_c^(1/T); a sample's weight is p_c / q_c for its rarest concept,
    scaled so the most frequent concept weighs 1: ``w = (max_count / count)^(1 - 1/T)``.
    T > 1 up-weights the tail; samples naming no concept weigh 1. ``counts`` and its
    options as for :class:`MetaCLIPWeight`."""

    method: ClassVar[str] = "temperature"
    vocabulary: str = ""
    temperature: float = 2.0
    mode: str = "phrase"
    captions: Literal["chosen", "any"] = "chosen"
    counts: Literal["text", "matched"] = "text"
    image_set: str | None = None
    concept_set: str | None = None
    k: int = 5
    min_score: float = 0.0

    def __post_init__(self) -> None:
        if not self.vocabulary:
            raise ConfigError("temperature: needs vocabulary = NAME")
        _check_counts("temperature", self)
        if not self.temperature > 0:
            raise ConfigError(f"temperature: must be positive, got {self.temperature}")


WEIGHTS: dict[str, type] = {c.method: c for c in (NoWeight, MetaCLIPWeight, TemperatureWeight)}
Weight = NoWeight | MetaCLIPWeight | TemperatureWeight


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

    ``candidates``: parquet/jsonl add a ``captions`` list of every candidate caption
    with its probability. ``repeat_factor`` (npy only): a uid is written
    ``max(1, min(max_repeats, floor(weight * repeat_factor + 0.5)))`` times (DataComp's
    resharder emits a sample once per occurrence); unset, each uid once.
    """

    format: Literal["parquet", "csv", "tsv", "json", "jsonl", "npy"] = "parquet"
    name: str | None = None
    candidates: bool = False
    repeat_factor: float | None = None
    max_repeats: int = 100

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"output.name must be a plain file stem, got {self.name!r}")
        if self.repeat_factor is not None and self.format != "npy":
            raise ConfigError("output.repeat_factor applies to the npy format only (integer repeats)")
        if self.repeat_factor is not None and not self.repeat_factor > 0:
            raise ConfigError(f"output.repeat_factor must be positive, got {self.repeat_factor}")
        if self.max_repeats < 1:
            raise ConfigError(f"output.max_repeats must be at least 1, got {self.max_repeats}")


# -- the policy ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    choose: Choose = dataclasses.field(default_factory=OneVariant)
    select: tuple[Predicate, ...] = ()
    weight: Weight = dataclasses.field(default_factory=NoWeight)
    budget: Budget = dataclasses.field(default_factory=Budget)
    output: Output = dataclasses.field(default_factory=Output)
    seed: int = 0
    sources: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a policy needs a name")
        if not (isinstance(self.select, tuple) and all(isinstance(p, Predicate) for p in self.select)):
            # polars expressions (curate.mix.expr) become the same typed predicates as TOML
            from .expr import predicates_from_expr

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
        from .expr import conjunction

        return conjunction(self.select)

    def with_seed(self, seed: int) -> "Policy":
        return dataclasses.replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """The TOML shape, every default written out (the resolved policy)."""
        choose = _plain(self.choose)
        out: dict[str, Any] = {
            "policy": {"name": self.name, "description": self.description, "seed": self.seed,
                       "sources": list(self.sources) if self.sources is not None else None},
            "select": [{k: v for k, v in _plain(p).items() if v is not None} for p in self.select],
            "choose": choose,
            "weight": _plain(self.weight),
            "budget": _plain(self.budget),
            "output": _plain(self.output),
        }
        return _drop_none(out)

    def to_toml(self) -> str:
        """The policy file for :meth:`to_dict` (every default written out):
        ``load_policy`` of it gives this policy back (tested for every shipped policy)."""
        d = self.to_dict()
        lines: list[str] = []
        for section in ("policy", "select", "choose", "weight", "budget", "output"):
            body = d.get(section)
            if body is None:
                continue
            tables = body if section == "select" else [body]
            for table in tables:
                lines.append(f"[[{section}]]" if section == "select" else f"[{section}]")
                lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())
                lines.append("")
        return "\n".join(lines)

    def hash(self) -> str:
        """sha256 of the canonical JSON of :meth:`to_dict` (sorted keys)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _toml_key(key: str) -> str:
    return key if key and set(key) <= _BARE_KEY else json.dumps(key, ensure_ascii=False)


def _toml_value(v: Any) -> str:
    """A TOML value for the plain types :meth:`Policy.to_dict` holds (strings use JSON's
    escapes, which TOML basic strings share; floats are finite, checked at build)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    raise TypeError(f"no TOML value for {v!r}")  # pragma: no cover - to_dict holds plain types only


def save_policy(policy: Policy, path: str | Path) -> Path:
    """Write ``policy`` as a TOML policy file (:meth:`Policy.to_toml`)."""
    p = Path(path)
    p.write_text(policy.to_toml(), encoding="utf-8")
    return p


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


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
    name = _coerce(f"{where} policy.name", head.get("name", default_name), str)
    seed = _coerce(f"{where} policy.seed", head.get("seed", 0), int)
    sources = head.get("sources")
    if sources is not None:
        sources = _coerce(f"{where} policy.sources", sources, tuple[str, ...])
    description = _coerce(f"{where} policy.description", head.get("description", ""), str)

    sel = data.get("select", [])
    if not isinstance(sel, list):
        raise ConfigError(f"{where} select: expected an array of tables ([[select]])")
    select = tuple(_build(Predicate, p, f"{where} select[{i}]") for i, p in enumerate(sel))

    ch = data.get("choose", {"strategy": "variant"})
    if not isinstance(ch, dict):
        raise ConfigError(f"{where} [choose]: expected a table")
    strategy = ch.get("strategy")
    if strategy not in STRATEGIES:
        raise ConfigError(f"{where} choose.strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    ch = {k: v for k, v in ch.items() if k != "strategy"}
    choose = _build(STRATEGIES[strategy], ch, f"{where} [choose]")

    wt = data.get("weight", {"method": "none"})
    if not isinstance(wt, dict):
        raise ConfigError(f"{where} [weight]: expected a table")
    method = wt.get("method")
    if method not in WEIGHTS:
        raise ConfigError(f"{where} weight.method: expected one of {', '.join(WEIGHTS)}, got {method!r}")
    weight = _build(WEIGHTS[method], {k: v for k, v in wt.items() if k != "method"}, f"{where} [weight]")

    budget = _build(Budget, data.get("budget", {}), f"{where} [budget]")
    output = _build(Output, data.get("output", {}), f"{where} [output]")
    try:
        return Policy(name=name, choose=choose, select=select, weight=weight, budget=budget, output=output,
                      seed=seed, sources=sources, description=description)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy TOML file (nothing is run)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"policy file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return policy_from_dict(data, where=str(p), default_name=p.stem)
