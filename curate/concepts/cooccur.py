"""Concept co-occurrence: which concepts of a vocabulary are found together.

* ``text``: pairs named in one caption (named query ``concepts.cooccurrence``);
* ``matched``: pairs both matched in one sample, image tag and caption at once
  (``concepts.cooccurrence_matched``).

:func:`cooccurrence` returns the pairs with their ``count`` (captions, or samples for
``matched``), the count of each concept alone and the lift; :func:`cooccurrence_plot`
draws the pair counts of the most frequent concepts as a symmetric heat map (log colour
scale; the diagonal is each concept's own count), PNG and SVG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..errors import ConfigError
from ..store import Store
from .audit import _pyplot, _save, check_counted
from .measures import ImageOptions, resolve_tagging

COOCCUR_MEASURES = ("text", "matched")


def cooccurrence(store: Store, vocabulary: str, *, measure: str = "text", mode: str = "phrase",
                 variant: str | None = None, image: ImageOptions | None = None) -> pl.DataFrame:
    """Pairs (concept_a < concept_b) with ``count``, ``count_a``, ``count_b``, ``lift``
    (and ``samples`` for text pairs), most frequent first."""
    if measure not in COOCCUR_MEASURES:
        raise ConfigError(f"co-occurrence measure must be one of {', '.join(COOCCUR_MEASURES)}, got {measure!r}")
    check_counted(store, vocabulary, mode)
    params: dict[str, Any] = {"vocabulary": vocabulary, "mode": mode, "variant": variant or ""}
    if measure == "text":
        df: pl.DataFrame = store.query("concepts.cooccurrence", **params).pl()
        return df.rename({"captions": "count", "captions_a": "count_a", "captions_b": "count_b"})
    opts = image or ImageOptions()
    iset, cset = resolve_tagging(store, vocabulary, opts)
    df = store.query("concepts.cooccurrence_matched", iset=iset, cset=cset, k=opts.k, min_score=opts.min_score,
                     **params).pl()
    return df.rename({"samples": "count", "samples_a": "count_a", "samples_b": "count_b"})


def cooccurrence_plot(pairs: pl.DataFrame, out: str | Path, *, top: int = 25, title: str = "") -> list[Path]:
    """Heat map of the pair counts among the ``top`` most frequent concepts that occur
    in a pair (each concept's own count on the diagonal); PNG and SVG."""
    if top < 2:
        raise ConfigError(f"top must be at least 2, got {top}")
    if pairs.height == 0:
        raise ConfigError("no two concepts occur together; nothing to plot")
    own = pl.concat([pairs.select(pl.col("concept_a").alias("concept"), pl.col("count_a").alias("n")),
                     pairs.select(pl.col("concept_b").alias("concept"), pl.col("count_b").alias("n"))]).unique()
    names = own.sort(["n", "concept"], descending=[True, False]).head(top)["concept"].to_list()
    pos = {c: i for i, c in enumerate(names)}
    m = np.zeros((len(names), len(names)))
    for c, n in own.filter(pl.col("concept").is_in(names)).iter_rows():
        m[pos[c], pos[c]] = n
    for a, b, n in pairs.filter(pl.col("concept_a").is_in(names) & pl.col("concept_b").is_in(names)).select(
            "concept_a", "concept_b", "count").iter_rows():
        m[pos[a], pos[b]] = m[pos[b], pos[a]] = n
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    size = max(4.0, 0.28 * len(names) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    shown = np.ma.masked_where(m == 0, m)
    im = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=1, vmax=max(1.0, float(m.max()))))
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="count (log scale; blank = never together)")
    ax.set_title(title or f"co-occurrence of the {len(names)} most frequent concepts", fontsize=10)
    try:
        return _save(fig, Path(out))
    finally:
        plt.close(fig)
