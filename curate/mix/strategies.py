"""Caption strategies (``choose``) and weights: one class per paper's rule, each owning its
requirements and its SQL.

A strategy says which variants it emits (:meth:`Strategy.emits`), which tables it needs
and why (:meth:`Strategy.requires`), what it checks against a store before any work
(:meth:`Strategy.check`), and its SQL (:meth:`Strategy.sql`): the ``chosen`` rows (uid,
source, caption_id, variant) over the selection ``sel``, and for multi-caption
strategies the candidates with their probabilities. Weights do the same for the
weight column (:class:`Weight`). The compiler (:mod:`curate.mix.compile`) calls these
methods and knows no strategy by name.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import ConfigError
from .sql import bind, clip_model, clip_rel, lit, named, one_sql, source_cond, unit

if TYPE_CHECKING:
    from ..store import Store


def _check_probs(where: str, probs: dict[str, float], what: str) -> None:
    if not probs:
        raise ConfigError(f"{where}: needs at least one {what}")
    if any(p < 0 for p in probs.values()):
        raise ConfigError(f"{where}: {what} shares must be 0 or more, got {probs}")
    total = sum(probs.values())
    if abs(total - 1.0) > 1e-9:
        raise ConfigError(f"{where}: {what} shares must sum to 1, got {total:g} ({probs})")


@dataclasses.dataclass(frozen=True)
class Context:
    """What a strategy's SQL depends on besides itself."""

    seed: int
    #: ``sel`` is every sample (no source list, no predicate)
    whole: bool
    #: the resolved CLIP model of a strategy that reads scores
    clip_model: str | None = None

    def one(self, variant: str) -> str:
        return one_sql(variant, self.seed, self.whole)


class Strategy:
    """The base of caption strategies; subclasses are frozen dataclasses."""

    strategy: ClassVar[str]
    __config_tag__: ClassVar[str] = "strategy"
    #: several candidate captions per sample (drawn with the seed, listed in the manifest)
    multi: ClassVar[bool] = False

    def emits(self) -> tuple[str, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def requires(self) -> dict[str, str]:
        """table -> why this strategy needs it."""
        return {}

    def resolve(self, store: Store) -> str | None:
        """The CLIP model this strategy reads (None: it reads none)."""
        return None

    def reads_views(self) -> tuple[str, ...]:
        """The stage views its SQL reads (checked to exist before any work)."""
        return ()

    def check(self, store: Store, policy: Any) -> None:
        """Checks against the store beyond the tables (e.g. every caption scored)."""

    def sql(self, ctx: Context) -> tuple[str, str | None]:
        """(chosen SQL over ``sel``: uid, source, caption_id, variant; the candidates SQL
        (uid, source, caption_id, variant, prob, ord) or None)."""
        raise NotImplementedError  # pragma: no cover - abstract


class _Multi(Strategy):
    """Multi-caption strategies: candidates with probabilities, then a seeded pick."""

    multi: ClassVar[bool] = True

    def raw_candidates(self, ctx: Context) -> str:  # pragma: no cover - abstract
        """uid, source, caption_id, variant, share, ord over ``sel``."""
        raise NotImplementedError

    def sql(self, ctx: Context) -> tuple[str, str | None]:
        cands = (f"SELECT uid, source, caption_id, variant, share / sum(share) OVER (PARTITION BY uid) AS prob, ord "
                 f"FROM ({self.raw_candidates(ctx)})")
        u = unit(f"hash(uid, {ctx.seed}, 'choose')")
        pick = (f"SELECT uid, source, arg_max(caption_id, ord) AS caption_id, arg_max(variant, ord) AS variant FROM ("
                f"SELECT *, coalesce(sum(prob) OVER (PARTITION BY uid ORDER BY ord ROWS BETWEEN UNBOUNDED PRECEDING "
                f"AND 1 PRECEDING), 0.0) AS lo FROM _mix_cands) WHERE lo <= {u} GROUP BY uid, source")
        return pick, cands


def _shares_sql(shares: dict[str, float], ctx: Context) -> str:
    parts = [f"SELECT s.uid, s.source, o.caption_id, {lit(v)} AS variant, {lit(float(w))}::DOUBLE AS share, {i} AS ord "
             f"FROM sel s JOIN {ctx.one(v)} o USING (uid)"
             for i, (v, w) in enumerate(shares.items()) if w > 0]
    return " UNION ALL ".join(parts)


class _NeedsKnowledge(Strategy):
    """Strategies that read knowledge retention need every emitted caption scored."""

    def requires(self) -> dict[str, str]:
        return {"caption_knowledge": f"choose strategy {self.strategy}"}

    def reads_views(self) -> tuple[str, ...]:
        return ("knowledge_latest",)

    def check(self, store: Store, policy: Any) -> None:
        vs = self.emits()
        n = store.execute(
            f"SELECT count(*) FROM captions c WHERE {source_cond(policy, 'c')} "
            f"AND c.variant IN ({', '.join(lit(v) for v in vs)}) "
            "AND c.caption_id NOT IN (SELECT caption_id FROM knowledge_latest)").fetchall()[0][0]
        if n:
            raise ConfigError(f"choose {self.strategy} needs knowledge scores for every caption of "
                              f"{', '.join(vs)} in the pool; {n:,} have none: run knowledge.spacy_ner.v1 "
                              "(curate knowledge score)")


@dataclasses.dataclass(frozen=True)
class OneVariant(Strategy):
    """The sample's caption of one variant; samples without it are dropped. Of several
    captions of the variant (COCO's five human captions), the one with the smallest
    ``hash(caption_id, seed)`` (ties to the smaller caption_id)."""

    strategy: ClassVar[str] = "variant"
    variant: str = "raw"

    def emits(self) -> tuple[str, ...]:
        return (self.variant,)

    def sql(self, ctx: Context) -> tuple[str, str | None]:
        return (f"SELECT s.uid, s.source, o.caption_id, {lit(self.variant)} AS variant "
                f"FROM sel s JOIN {ctx.one(self.variant)} o USING (uid)"), None


@dataclasses.dataclass(frozen=True)
class Ratio(_Multi):
    """A fixed ratio across variants, chosen per sample with the seed. The ratios of the
    variants a sample has are renormalised; ``u = hash(uid, seed)`` in [0, 1) picks
    the variant by cumulative share, in the order listed."""

    strategy: ClassVar[str] = "ratio"
    ratios: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_probs("ratio", self.ratios, "variant")

    def emits(self) -> tuple[str, ...]:
        return tuple(self.ratios)

    def raw_candidates(self, ctx: Context) -> str:
        return _shares_sql(self.ratios, ctx)


@dataclasses.dataclass(frozen=True)
class Nguyen(Strategy):
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

    def requires(self) -> dict[str, str]:
        return {"clip_scores": "choose strategy nguyen"}

    def resolve(self, store: Store) -> str | None:
        return clip_model(store, self.model, "choose nguyen")

    def sql(self, ctx: Context) -> tuple[str, str | None]:
        tau = lit(self.threshold)
        clip = clip_rel(ctx.clip_model)
        body = (f"SELECT s.uid, s.source, "
                f"CASE WHEN rs.value >= {tau} THEN r.caption_id WHEN ys.value >= {tau} THEN y.caption_id END AS caption_id, "
                f"CASE WHEN rs.value >= {tau} THEN {lit(self.raw)} WHEN ys.value >= {tau} THEN {lit(self.synthetic)} END "
                f"AS variant "
                f"FROM sel s LEFT JOIN {ctx.one(self.raw)} r USING (uid) "
                f"LEFT JOIN {clip} rs ON rs.caption_id = r.caption_id "
                f"LEFT JOIN {ctx.one(self.synthetic)} y ON y.uid = s.uid "
                f"LEFT JOIN {clip} ys ON ys.caption_id = y.caption_id")
        return f"SELECT * FROM ({body}) WHERE caption_id IS NOT NULL", None


@dataclasses.dataclass(frozen=True)
class LaCLIP(_Multi):
    """LaCLIP (Fan et al. 2023, arXiv 2305.20088): every caption of the listed variants
    is a candidate, drawn uniformly at train time (the original and its rewrites)."""

    strategy: ClassVar[str] = "laclip"
    variants: tuple[str, ...] = ("raw", "rewrite")

    def emits(self) -> tuple[str, ...]:
        return self.variants

    def raw_candidates(self, ctx: Context) -> str:
        cases = " ".join(f"WHEN {lit(v)} THEN {i}" for i, v in enumerate(self.variants))
        return (f"SELECT s.uid, s.source, c.caption_id, c.variant, 1.0::DOUBLE AS share, "
                f"row_number() OVER (PARTITION BY c.uid ORDER BY CASE c.variant {cases} END, "
                f"hash(c.caption_id, {ctx.seed}), c.caption_id) AS ord "
                f"FROM sel s JOIN captions c USING (uid) "
                f"WHERE c.variant IN ({', '.join(lit(v) for v in self.variants)})")


@dataclasses.dataclass(frozen=True)
class VeCLIP(_Multi):
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

    def raw_candidates(self, ctx: Context) -> str:
        return _shares_sql({self.alt: 1 - self.enriched_share, self.enriched: self.enriched_share}, ctx)


@dataclasses.dataclass(frozen=True)
class CapsFusion(_NeedsKnowledge):
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

    def sql(self, ctx: Context) -> tuple[str, str | None]:
        ret = named("mix.caption_retention", raw=self.raw)
        ok = f"f.caption_id IS NOT NULL AND coalesce(ret.retention, 1.0) >= {lit(self.min_retention)}"
        body = (f"SELECT s.uid, s.source, CASE WHEN {ok} THEN f.caption_id ELSE r.caption_id END AS caption_id, "
                f"CASE WHEN {ok} THEN {lit(self.fused)} WHEN r.caption_id IS NOT NULL THEN {lit(self.raw)} END AS variant "
                f"FROM sel s LEFT JOIN {ctx.one(self.fused)} f USING (uid) "
                f"LEFT JOIN {ctx.one(self.raw)} r ON r.uid = s.uid "
                f"LEFT JOIN ({ret}) ret ON ret.caption_id = f.caption_id")
        return f"SELECT * FROM ({body}) WHERE caption_id IS NOT NULL", None


@dataclasses.dataclass(frozen=True)
class KnowledgeAware(_NeedsKnowledge):
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

    def sql(self, ctx: Context) -> tuple[str, str | None]:
        ret = named("mix.caption_retention", raw=self.raw)
        hal = named("mix.caption_hallucinations", raw=self.raw, synthetic=self.synthetic)
        parts = [f"SELECT s.uid, s.source, o.caption_id, {lit(v)} AS variant, {i} AS ord "
                 f"FROM sel s JOIN {ctx.one(v)} o USING (uid)" for i, v in enumerate(self.variants)]
        body = (f"SELECT c.*, coalesce(ret.retained, 0) AS retained, coalesce(h.hallucinated, 0) AS hallucinated "
                f"FROM ({' UNION ALL '.join(parts)}) c LEFT JOIN ({ret}) ret USING (caption_id) "
                f"LEFT JOIN ({hal}) h USING (caption_id)")
        rank = f"-retained * {len(self.variants) + 1} + ord"
        return (f"SELECT uid, source, arg_min(caption_id, {rank}) AS caption_id, arg_min(variant, {rank}) AS variant "
                f"FROM ({body}) WHERE hallucinated = 0 GROUP BY uid, source"), None


STRATEGIES: dict[str, type[Strategy]] = {c.strategy: c for c in (OneVariant, Ratio, Nguyen, LaCLIP, VeCLIP, CapsFusion,
                                                                    KnowledgeAware)}
Choose = OneVariant | Ratio | Nguyen | LaCLIP | VeCLIP | CapsFusion | KnowledgeAware


# -- weights -----------------------------------------------------------------------------
class Weight:
    """The base of weight rules; subclasses are frozen dataclasses."""

    method: ClassVar[str]
    __config_tag__: ClassVar[str] = "method"

    def requires(self) -> dict[str, str]:
        return {}

    def vocabularies(self) -> set[tuple[str, str]]:
        """(vocabulary, mode) pairs whose concept matches this rule reads."""
        return set()

    def check(self, store: Store) -> None:
        """Checks against the store beyond the tables."""

    def sql(self) -> str:
        """SELECT uid, weight over ``_mix_chosen`` (samples without a row get
        :attr:`unmatched`), or "" for weight 1 everywhere."""
        return ""

    #: samples without a weight row: dropped (True) or weighted ``unmatched`` (False)
    def drops_unmatched(self) -> bool:
        return False

    def unmatched(self) -> float:
        return 1.0

    def bad_weights_hint(self) -> str:
        return ""


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
class NoWeight(Weight):
    """Every sample weighs 1."""

    method: ClassVar[str] = "none"


class _ConceptWeight(Weight):
    """Weights from concept counts among the chosen samples (text hits, or with
    ``counts = "matched"`` text hits the image's tags confirm)."""

    vocabulary: str
    mode: str
    captions: str
    counts: str
    image_set: str | None
    concept_set: str | None
    k: int
    min_score: float

    def requires(self) -> dict[str, str]:
        need = {"caption_concepts": f"weight method {self.method}"}
        if self.counts == "matched":
            need["concept_tags"] = f"weight method {self.method} with counts = \"matched\""
        return need

    def vocabularies(self) -> set[tuple[str, str]]:
        return {(self.vocabulary, self.mode)}

    def check(self, store: Store) -> None:
        if self.counts != "matched":
            return
        pairs = store.execute("SELECT DISTINCT set_name, concept_set FROM concept_tags ORDER BY 1, 2").fetchall()
        if (self.image_set, self.concept_set) not in pairs:
            have = "; ".join(f"image_set {a!r}, concept_set {b!r}" for a, b in pairs) or "none"
            raise ConfigError(f"weight {self.method}: concept_tags has no tags of image_set {self.image_set!r} and "
                              f"concept_set {self.concept_set!r}; it has {have}")

    def hits_sql(self) -> str:
        on = "h.caption_id = ch.caption_id" if self.captions == "chosen" else "h.uid = ch.uid"
        matched = ""
        if self.counts == "matched":
            from ..concepts.image import IMAGE_TAGS_SQL

            img = bind(IMAGE_TAGS_SQL, {"iset": self.image_set, "cset": self.concept_set, "k": self.k,
                                        "min_score": float(self.min_score)})
            matched = f"SEMI JOIN ({img}) i ON i.uid = ch.uid AND i.concept = h.concept "
        return (f"SELECT DISTINCT ch.uid, h.concept FROM _mix_chosen ch JOIN concept_hits h ON {on} {matched}"
                f"WHERE h.vocabulary = {lit(self.vocabulary)} AND h.mode = {lit(self.mode)}")


@dataclasses.dataclass(frozen=True)
class MetaCLIPWeight(_ConceptWeight):
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

    def sql(self) -> str:
        t = lit(float(self.t))
        return (f"WITH hits AS ({self.hits_sql()}), counts AS (SELECT concept, count(*) AS n FROM hits GROUP BY concept) "
                f"SELECT uid, 1.0 - product(1.0 - {t} / greatest(n, {t})) AS weight "
                f"FROM hits JOIN counts USING (concept) GROUP BY uid")

    def drops_unmatched(self) -> bool:
        return self.drop_unmatched

    def unmatched(self) -> float:
        return float(self.unmatched_weight)


@dataclasses.dataclass(frozen=True)
class TemperatureWeight(_ConceptWeight):
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

    def sql(self) -> str:
        expo = lit(1.0 - 1.0 / self.temperature)
        return (f"WITH hits AS ({self.hits_sql()}), counts AS (SELECT concept, count(*) AS n FROM hits GROUP BY concept) "
                f"SELECT uid, max(power((SELECT max(n) FROM counts)::DOUBLE / n, {expo})) AS weight "
                f"FROM hits JOIN counts USING (concept) GROUP BY uid")

    def bad_weights_hint(self) -> str:
        # the rules give weights in (0, 1] (metaclip) or >= 1 (temperature >= 1); a
        # temperature below 1 raises the rare-concept ratio to a negative power, which
        # underflows to 0 when the power is large enough
        return (f"; temperature {self.temperature:g} makes (max_count / count)^(1 - 1/T) underflow "
                "for rare concepts: use a temperature nearer 1, or above 1 to up-weight the tail")


WEIGHTS: dict[str, type[Weight]] = {c.method: c for c in (NoWeight, MetaCLIPWeight, TemperatureWeight)}
WeightRule = NoWeight | MetaCLIPWeight | TemperatureWeight
