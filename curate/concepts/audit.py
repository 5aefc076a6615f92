"""Audits over per-concept count vectors: a polars DataFrame with columns ``concept``
(string) and ``count`` (non-negative integer), one row per concept, zero counts included.
Where the counts come from (published tables, a store's caption hits) is
:func:`counts_source`'s business; everything else here is pure.

- :func:`summarize`: concepts, zero-count share, median, mean, quantiles (per vocabulary
  when a ``vocabulary`` column is present).
- :func:`rank_frequency_plot`: the long tail, count against rank on log-log axes (PNG and
  SVG). Zero counts cannot sit on a log axis; they are left out and their number is
  written in the legend.
- :func:`compare`: two count vectors joined on ``concept``; Spearman's rho computed as
  Pearson's r of tie-averaged ranks (equal to ``scipy.stats.spearmanr``); the concepts
  that gain and lose most, by the change of their percentile rank.
- :func:`loglinear_fit`: a per-concept metric (e.g. zero-shot accuracy) against
  ``x = log10(count + 1)`` by ordinary least squares. The +1 keeps zero-count concepts
  (39% of CC3M's classification concepts) in the fit at x = 0; ``drop_zero=True`` fits
  ``log10(count)`` over the concepts with count > 0 instead, as a log axis would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .._optional import require
from ..errors import ConfigError, InputError
from ..store import Store

QUANTILES = (0.1, 0.25, 0.75, 0.9, 0.99)  # the median is its own column


# -- input checks --------------------------------------------------------------------
def check_counts(counts: pl.DataFrame, what: str = "counts") -> pl.DataFrame:
    """The (concept, count) contract: both columns present, no null concept, counts
    non-negative integers, one row per concept (per vocabulary, when that column exists)."""
    missing = [c for c in ("concept", "count") if c not in counts.columns]
    if missing:
        raise InputError(f"{what}: column(s) {', '.join(missing)} missing (found {', '.join(counts.columns)})")
    if not counts.schema["count"].is_integer():
        raise InputError(f"{what}: count must be an integer column, got {counts.schema['count']}")
    if counts["concept"].null_count() or counts["count"].null_count():
        raise InputError(f"{what}: null concept or count")
    if (counts["count"] < 0).any():
        raise InputError(f"{what}: negative counts")
    keys = ["vocabulary", "concept"] if "vocabulary" in counts.columns else ["concept"]
    if counts.select(keys).is_duplicated().any():
        dup = counts.filter(counts.select(keys).is_duplicated())["concept"][0]
        raise InputError(f"{what}: concept {dup!r} appears more than once")
    return counts


# -- summary -------------------------------------------------------------------------
def summarize(counts: pl.DataFrame, quantiles: tuple[float, ...] = QUANTILES) -> pl.DataFrame:
    """One row (or one per ``vocabulary``): concepts, zero_count, zero_share (fraction),
    median (interpolated), mean, total and the quantiles ``p10``... (interpolated)."""
    check_counts(counts)
    c = pl.col("count")
    aggs = [pl.len().alias("concepts"), (c == 0).sum().alias("zero_count"), (c == 0).mean().alias("zero_share"),
            c.median().alias("median"), c.mean().alias("mean"), c.sum().alias("total"), c.max().alias("max")]
    aggs += [c.quantile(q, interpolation="linear").alias(f"p{round(q * 100):02d}") for q in quantiles]
    if "vocabulary" in counts.columns:
        return counts.group_by("vocabulary").agg(aggs).sort("vocabulary")
    return counts.select(aggs)


# -- plots ---------------------------------------------------------------------------
def _pyplot() -> Any:
    mpl = require("matplotlib", purpose="concept plots")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("") if out.suffix.lower() in (".png", ".svg") else out
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def rank_frequency_plot(series: Mapping[str, pl.DataFrame], out: str | Path, *, title: str = "") -> list[Path]:
    """Count against rank (1 = most frequent), log-log, one line per labelled count vector.
    ``out`` is a path stem; ``.png`` and ``.svg`` are written and returned."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, df in series.items():
        check_counts(df, label)
        counts = np.sort(df["count"].to_numpy())[::-1]
        pos = counts[counts > 0]
        zeros = len(counts) - len(pos)
        ax.plot(np.arange(1, len(pos) + 1), pos, lw=1.6,
                label=f"{label}: {len(counts):,} concepts" + (f", {zeros:,} with count 0 not shown" if zeros else ""))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concept rank (1 = most frequent)")
    ax.set_ylabel("count")
    ax.grid(True, which="major", ls=":", alpha=0.6)
    ax.set_title(title or "rank-frequency of concepts", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    try:
        return _save(fig, Path(out))
    finally:
        plt.close(fig)


# -- comparison ----------------------------------------------------------------------
def spearman(a: np.ndarray | pl.Series, b: np.ndarray | pl.Series) -> float:
    """Spearman's rho: Pearson's r of the tie-averaged ranks (NaN if either is constant)."""
    ra = pl.Series(np.asarray(a)).rank("average").to_numpy().astype(np.float64)
    rb = pl.Series(np.asarray(b)).rank("average").to_numpy().astype(np.float64)
    if len(ra) < 2:
        return math.nan
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return math.nan if den == 0 else float(ra @ rb) / den


@dataclass
class Comparison:
    label_a: str
    label_b: str
    spearman: float
    n: int                    # concepts in both
    only_a: int               # concepts in a only (not in the correlation)
    only_b: int
    table: pl.DataFrame       # concept, count_a, count_b, pct_a, pct_b, shift; sorted by shift
    top: int = 10

    def gainers(self) -> pl.DataFrame:
        return self.table.sort(["shift", "count_b"], descending=[True, True]).head(self.top)

    def losers(self) -> pl.DataFrame:
        return self.table.sort(["shift", "count_a"], descending=[False, True]).head(self.top)

    def summary(self) -> str:
        extra = []
        if self.only_a:
            extra.append(f"{self.only_a:,} only in {self.label_a}")
        if self.only_b:
            extra.append(f"{self.only_b:,} only in {self.label_b}")
        return (f"{self.label_a} vs {self.label_b}: Spearman {self.spearman:.4f} over {self.n:,} concepts"
                + (f" ({'; '.join(extra)}; left out)" if extra else ""))


def compare(a: pl.DataFrame, b: pl.DataFrame, *, label_a: str = "a", label_b: str = "b", top: int = 10) -> Comparison:
    """Join two count vectors on ``concept`` (exact string) and compare them.

    ``pct_a``/``pct_b`` is a concept's percentile rank in its vector over the shared
    concepts (tie-averaged rank / n; 1.0 = most frequent); ``shift = pct_b - pct_a``.
    Gainers have the largest shift, losers the smallest: a rank change is scale-free,
    so it compares a 3M-sample set with a 400M-sample one, and it is what the Spearman
    correlation summarises."""
    check_counts(a, label_a)
    check_counts(b, label_b)
    j = a.select("concept", pl.col("count").alias("count_a")).join(
        b.select("concept", pl.col("count").alias("count_b")), on="concept", how="inner", maintain_order="left")
    n = j.height
    if n < 2:
        raise ConfigError(f"{label_a} and {label_b} share {n} concept(s); nothing to compare "
                          "(are the concept names spelled the same? use one vocabulary for both)")
    j = j.with_columns((pl.col("count_a").rank("average") / n).alias("pct_a"),
                       (pl.col("count_b").rank("average") / n).alias("pct_b"))
    j = j.with_columns((pl.col("pct_b") - pl.col("pct_a")).alias("shift"))
    rho = spearman(j["count_a"], j["count_b"])
    return Comparison(label_a, label_b, rho, n, a.height - n, b.height - n, j, top)


# -- log-linear fit ------------------------------------------------------------------
@dataclass
class Fit:
    slope: float
    intercept: float
    r2: float
    pearson: float
    n: int
    zero_count: int          # concepts with count 0 (in the fit at x = 0, or dropped)
    dropped_zero: bool
    unmatched: int           # metric rows without a count
    x_label: str
    data: pl.DataFrame = field(repr=False)   # concept, count, metric, x

    def summary(self) -> str:
        zero = (f"{self.zero_count:,} zero-count concepts " + ("left out" if self.dropped_zero else "at x = 0"))
        miss = f"; {self.unmatched:,} metric rows without a count left out" if self.unmatched else ""
        return (f"metric = {self.slope:.4f} * {self.x_label} + {self.intercept:.4f}; R² {self.r2:.4f}, "
                f"Pearson {self.pearson:.4f}, n {self.n:,} ({zero}{miss})")


def read_metric_csv(path: str | Path, column: str | None = None) -> pl.DataFrame:
    """A CSV with a ``concept`` column and one numeric metric column (``column`` or the
    only other numeric column) → DataFrame(concept, metric)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"metric file {path} does not exist")
    try:
        df = pl.read_csv(path, infer_schema_length=10000)
    except (pl.exceptions.PolarsError, UnicodeDecodeError, OSError) as e:
        raise InputError(f"cannot read {path} as CSV: {str(e).splitlines()[0]}") from None
    if "concept" not in df.columns:
        raise InputError(f"{path}: no 'concept' column (found {', '.join(df.columns)})")
    if column is None:
        numeric = [c for c, t in df.schema.items() if c != "concept" and t.is_numeric()]
        if len(numeric) != 1:
            raise InputError(f"{path}: pick the metric column with --column (numeric columns: "
                             f"{', '.join(numeric) or 'none'})")
        column = numeric[0]
    if column not in df.columns or not df.schema[column].is_numeric():
        raise InputError(f"{path}: metric column {column!r} is missing or not numeric")
    out = df.select(pl.col("concept").cast(pl.String), pl.col(column).cast(pl.Float64).alias("metric"))
    out = out.drop_nulls()
    if out["concept"].is_duplicated().any():
        raise InputError(f"{path}: concept {out.filter(out['concept'].is_duplicated())['concept'][0]!r} "
                         "appears more than once")
    return out


def loglinear_fit(counts: pl.DataFrame, metric: pl.DataFrame, *, drop_zero: bool = False) -> Fit:
    """OLS fit of ``metric`` against ``log10(count + 1)`` (or ``log10(count)`` over count > 0
    with ``drop_zero``), joined on the exact concept string."""
    check_counts(counts)
    j = metric.join(counts.select("concept", "count"), on="concept", how="inner")
    unmatched = metric.height - j.height
    zeros = int((j["count"] == 0).sum())
    if drop_zero:
        j = j.filter(pl.col("count") > 0).with_columns(pl.col("count").log10().alias("x"))
        x_label = "log10(count)"
    else:
        j = j.with_columns((pl.col("count") + 1).log10().alias("x"))
        x_label = "log10(count + 1)"
    if j.height < 3:
        raise ConfigError(f"only {j.height} concepts have both a metric and a count; need at least 3")
    x = j["x"].to_numpy().astype(np.float64)
    y = j["metric"].to_numpy().astype(np.float64)
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    if sxx == 0:
        raise ConfigError("every concept has the same count; a slope is undefined")
    slope = float(((x - xm) * (y - ym)).sum()) / sxx
    intercept = ym - slope * xm
    ss_res = float(((y - (intercept + slope * x)) ** 2).sum())
    ss_tot = float(((y - ym) ** 2).sum())
    r2 = 1 - ss_res / ss_tot if ss_tot else math.nan
    r = float(np.corrcoef(x, y)[0, 1]) if ss_tot else math.nan
    return Fit(slope, float(intercept), r2, r, j.height, zeros, drop_zero, unmatched, x_label, j)


def fit_plot(fit: Fit, out: str | Path, *, title: str = "", metric_name: str = "metric") -> list[Path]:
    """Scatter of the metric against x with the fitted line; PNG and SVG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    x = fit.data["x"].to_numpy()
    ax.scatter(x, fit.data["metric"].to_numpy(), s=6, alpha=0.35, lw=0)
    xs = np.linspace(float(x.min()), float(x.max()), 50)
    ax.plot(xs, fit.intercept + fit.slope * xs, color="C3", lw=2,
            label=f"slope {fit.slope:.3f}, R² {fit.r2:.3f}, n {fit.n:,}")
    ax.set_xlabel(fit.x_label)
    ax.set_ylabel(metric_name)
    ax.grid(True, ls=":", alpha=0.6)
    ax.set_title(title or f"{metric_name} against concept frequency", fontsize=10)
    ax.legend(fontsize=8)
    try:
        return _save(fig, Path(out))
    finally:
        plt.close(fig)


# -- count sources -------------------------------------------------------------------
@dataclass(frozen=True)
class CountSpec:
    """Where a count vector comes from. ``kind`` is ``published`` (the imported paper
    tables: ``name`` is the pretraining set, ``method`` the count method, ``downstream`` a
    set, a comma list or ``classification``), ``store`` (this store's counts of the
    vocabulary ``name``, ``method`` its matching mode; ``options`` hold the variant,
    source, other store, the measure ``text``/``image``/``matched`` and the image
    options) or ``manifest``. ``vocabulary`` restricts a published vector to a vocabulary
    and renames its concepts to the vocabulary's spelling."""

    kind: str
    name: str
    method: str = "lemmatized"
    downstream: str = "classification"
    vocabulary: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        base = f"{self.kind}:{self.name}"
        if self.kind == "published":
            base += f" {self.method}"
        if self.kind == "store":
            from .measures import measure_label

            opts = dict(self.options)
            base += "".join(f":{opts[k]}" for k in ("variant", "source") if opts.get(k))
            base += (f"@{opts['store']}" if opts.get("store") else "") + (f" ({self.method})" if self.method != "phrase" else "")
            base += measure_label(opts.get("measure", "text"), opts.get("image"))
        if self.kind == "manifest":
            base += f":{Path(dict(self.options)['path']).name}"
        return base + (f" [{self.vocabulary}]" if self.vocabulary else "")


def parse_spec(text: str, *, method: str = "lemmatized", downstream: str = "classification",
               vocabulary: str | None = None, mode: str = "phrase", measure: str = "text",
               image: Any = None) -> CountSpec:
    """``published:cc3m`` or ``published:cc3m:rampp0.7`` (the method overrides ``method``);
    ``store:VOCABULARY[:VARIANT[:SOURCE]][@STORE]`` for the store's own counts (samples with
    a caption of the variant, or of any variant, naming each concept; ``mode`` phrase,
    paper or nouns; ``measure`` text, image or matched, with ``image`` an
    :class:`~curate.concepts.measures.ImageOptions`); ``image:...`` and ``matched:...``
    are ``store:...`` with that measure; ``manifest:VOCABULARY:PATH``."""
    from .measures import check_measure

    kind, _, rest = text.partition(":")
    if kind == "published":
        name, _, m = rest.partition(":")
        if not name:
            raise ConfigError(f"count source {text!r}: expected published:PRETRAIN[:METHOD], e.g. published:cc3m")
        return CountSpec("published", name, m or method, downstream, vocabulary)
    if kind in ("store", "image", "matched", "text"):
        rest, at, other = rest.partition("@")
        name, variant, source = (rest.split(":") + ["", ""])[:3]
        if not name:
            raise ConfigError(f"count source {text!r}: expected {kind}:VOCABULARY[:VARIANT[:SOURCE]][@STORE], "
                              f"e.g. {kind}:imagenet1k:raw")
        meas = check_measure(measure if kind == "store" else kind)
        return CountSpec("store", name, method=mode, downstream="", vocabulary=None,
                         options=(("variant", variant or None), ("source", source or None),
                                  ("store", other if at else None), ("measure", meas),
                                  ("image", image if meas != "text" else None)))
    if kind == "manifest":
        name, _, path = rest.partition(":")
        if not name or not path:
            raise ConfigError(f"count source {text!r}: expected manifest:VOCABULARY:PATH (a parquet or JSONL manifest)")
        return CountSpec("manifest", name, method=mode, downstream="", vocabulary=None, options=(("path", path),))
    raise ConfigError(f"unknown count source {text!r}; expected published:PRETRAIN[:METHOD], "
                      "store:VOCABULARY[:VARIANT[:SOURCE]][@STORE] (or image:/matched: for image and matched counts) "
                      "or manifest:VOCABULARY:PATH")


def counts_source(store: Store, spec: CountSpec) -> pl.DataFrame:
    """The (concept, count) DataFrame a spec names; the one entry point for audits."""
    if spec.kind == "published":
        from .published import published_counts

        counts = published_counts(store, spec.name, spec.method, spec.downstream)
        if spec.vocabulary:
            counts = restrict_published(counts, store, spec.vocabulary)
        return counts
    if spec.kind == "store":
        opts = dict(spec.options)
        other = opts.pop("store", None)
        if other:
            with Store.open(other, read_only=True) as o:
                return store_counts(o, spec.name, mode=spec.method, **opts)
        return store_counts(store, spec.name, mode=spec.method, **opts)
    if spec.kind == "manifest":
        return manifest_counts(store, spec.name, dict(spec.options)["path"], mode=spec.method)
    raise ConfigError(f"unknown count source kind {spec.kind!r} (known: published, store, manifest)")


def manifest_counts(store: Store, vocabulary: str, path: str | Path, *, mode: str = "phrase") -> pl.DataFrame:
    """(concept, count) over a manifest's rows: samples whose chosen caption (the
    manifest's ``caption_id``) names the concept, zeros included. The manifest must come
    from this store (parquet or JSONL, as ``curate mix`` writes them)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"manifest {p} does not exist")
    reader = {".parquet": "read_parquet", ".jsonl": "read_json_auto"}.get(p.suffix)
    if reader is None:
        raise InputError(f"manifest {p}: concept counts read parquet or JSONL manifests (they carry caption_id)")
    store_counts(store, vocabulary, mode=mode)  # the same checks: counted, in this mode
    return store.df(
        "WITH m AS (SELECT DISTINCT caption_id::UUID AS caption_id FROM " + reader + "($path)), "
        "vocab AS (SELECT DISTINCT concept FROM concepts WHERE vocabulary = $vocabulary), "
        "hits AS (SELECT h.concept, count(DISTINCT h.uid) AS n FROM concept_hits h SEMI JOIN m USING (caption_id) "
        "WHERE h.vocabulary = $vocabulary AND h.mode = $mode GROUP BY h.concept) "
        "SELECT v.concept, coalesce(hits.n, 0)::BIGINT AS count FROM vocab v LEFT JOIN hits USING (concept) "
        "ORDER BY count DESC, v.concept", {"path": str(p), "vocabulary": vocabulary, "mode": mode})


def check_counted(store: Store, vocabulary: str, mode: str) -> None:
    """A clear error unless the vocabulary has been counted in ``mode`` (under the
    current rules of that mode)."""
    from .match import MODES

    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if "caption_concepts" not in store.tables():
        raise ConfigError(f"store {store.path} has no concept counts yet; run `curate concepts count --vocabulary {vocabulary}`")
    have = store.con.execute("SELECT count(*) FROM caption_concepts WHERE vocabulary = ? AND mode = ?",
                             [vocabulary, mode]).fetchall()[0][0]
    hint = f"`curate concepts count --vocabulary {vocabulary}" + ("`" if mode == "phrase" else f" --mode {mode}`")
    if not have and not store.count("captions"):
        raise ConfigError(f"store {store.path} has no captions to count concepts in; ingest some first")
    if not have:
        raise ConfigError(f"vocabulary {vocabulary!r} has not been counted in {mode} mode; run {hint}")
    if mode == "paper":
        old = store.con.execute("SELECT count(*) FROM concept_text_latest WHERE vocabulary = ? AND mode = 'paper' "
                                "AND status = 'ok' AND words IS NULL", [vocabulary]).fetchall()[0][0]
        if old:
            raise ConfigError(f"vocabulary {vocabulary!r} was counted in paper mode under its earlier rules (a strict "
                              f"AND, now mode nouns); run {hint} again")


def store_counts(store: Store, vocabulary: str, *, mode: str = "phrase", variant: str | None = None,
                 source: str | None = None, measure: str = "text", image: Any = None) -> pl.DataFrame:
    """(concept, count) of a vocabulary in the store, zeros included: samples that have
    the concept by ``measure`` (:mod:`curate.concepts.measures`; text: a caption of
    ``variant`` and ``source`` when given names it, from the latest
    ``concepts.text_match.v1`` run of ``mode``)."""
    from .measures import check_measure, pairs_sql

    if check_measure(measure) != "image":
        check_counted(store, vocabulary, mode)
    elif not store.has_table("concepts") or not store.execute(
            "SELECT count(*) FROM concepts WHERE vocabulary = ?", [vocabulary]).fetchall()[0][0]:
        raise ConfigError(f"vocabulary {vocabulary!r} is not in store {store.path}")
    sql, params = pairs_sql(store, measure, vocabulary, mode=mode, variant=variant, source=source, image=image)
    return store.df(
        "WITH vocab AS (SELECT DISTINCT concept FROM concepts WHERE vocabulary = $vocabulary), "
        f"hits AS (SELECT concept, count(DISTINCT uid) AS n FROM ({sql}) p GROUP BY concept) "
        "SELECT v.concept, coalesce(hits.n, 0)::BIGINT AS count FROM vocab v LEFT JOIN hits USING (concept) "
        "ORDER BY count DESC, v.concept", params)


def published_key(expr: pl.Expr) -> pl.Expr:
    """The paper's query normalisation: lower case, ``_`` read as a space, spaces collapsed."""
    return expr.str.to_lowercase().str.replace_all("_", " ").str.replace_all(r"\s+", " ").str.strip_chars()


def restrict_published(counts: pl.DataFrame, store: Store | None, vocabulary: str) -> pl.DataFrame:
    """Published counts of the concepts of ``vocabulary``, under the vocabulary's spelling.

    A vocabulary concept takes the count of the first published string (in the vector's
    order) whose normal form (:func:`published_key`) equals the concept's or one of its
    aliases'. Concepts with no published string are left out, not counted as zero (the
    vocabulary size minus the result's height says how many)."""
    from .vocab import vocabulary_entries

    entries = vocabulary_entries(store, vocabulary)
    keyed = counts.with_row_index("_order").with_columns(published_key(pl.col("concept")).alias("_key"))
    first = keyed.sort("_order").unique("_key", keep="first", maintain_order=True)
    lookup = dict(zip(first["_key"].to_list(), first["count"].to_list()))
    rows = []
    for concept, aliases in entries:
        for a in aliases:
            k = " ".join(a.lower().replace("_", " ").split())
            if k in lookup:
                rows.append((concept, lookup[k]))
                break
    return pl.DataFrame(rows, schema={"concept": pl.String, "count": pl.Int64}, orient="row")
