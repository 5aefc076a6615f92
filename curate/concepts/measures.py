"""The three concept frequencies of Udandarao et al. 2024 as one relation each: the
(uid, concept) pairs of the samples that have a concept by

* ``text``: one of its captions (of the variant, when given) names the concept
  (``concept_hits``, from ``curate concepts count``);
* ``image``: its image is tagged with the concept (named query ``concepts.image_tags``:
  top ``k`` tags with a score of at least ``min_score``, from ``concept_tags``);
* ``matched``: both at once (``concepts.matched_hits``, the paper's "integrated" count).

A sample's source restricts all three; the variant restricts the captions (text and
matched; for ``image`` it picks which caption a tail manifest shows). Counts, the tail
builder and co-occurrence read these relations, so each measure means the same
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..sqlfiles import get_query
from ..store import Store

MEASURES = ("text", "image", "matched")


@dataclass(frozen=True)
class ImageOptions:
    """Which tags count: the image vector set and concept set of a tagging run
    (``None``: the only one there is for the vocabulary), top ``k``, ``min_score``."""

    image_set: str | None = None
    concept_set: str | None = None
    k: int = 5
    min_score: float = 0.0


def check_measure(measure: str) -> str:
    if measure not in MEASURES:
        raise ConfigError(f"count measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    return measure


def resolve_tagging(store: Store, vocabulary: str, opts: ImageOptions) -> tuple[str, str]:
    """(image_set, concept_set) of ``opts``, the unnamed ones filled from ``concept_tags``
    when exactly one tagging run of the vocabulary's concept sets fits."""
    if opts.k < 1:
        raise ConfigError(f"k must be at least 1, got {opts.k}")
    if "concept_tags" not in store.tables():
        raise ConfigError("the store has no image tags; run `curate concepts image-count` (or `curate similarity tag`)")
    pairs = store.execute("SELECT DISTINCT set_name, concept_set FROM concept_tags ORDER BY 1, 2").fetchall()
    fit = [(i, c) for i, c in pairs
           if (opts.image_set is None or i == opts.image_set)
           and (c == opts.concept_set if opts.concept_set is not None else c.startswith(f"concepts.{vocabulary}."))]
    if len(fit) == 1:
        return fit[0]
    have = ", ".join(f"{i} x {c}" for i, c in pairs) or "none"
    if not fit:
        raise ConfigError(f"no image tags of vocabulary {vocabulary!r}"
                          + (f" with image set {opts.image_set!r}" if opts.image_set else "")
                          + (f" and concept set {opts.concept_set!r}" if opts.concept_set else "")
                          + f"; tagged (image set x concept set): {have}")
    raise ConfigError(f"several image taggings fit vocabulary {vocabulary!r} ({', '.join(f'{i} x {c}' for i, c in fit)});"
                      " name one with --image-set and --concept-set")


def pairs_sql(store: Store, measure: str, vocabulary: str, *, mode: str = "phrase", variant: str | None = None,
              source: str | None = None, image: ImageOptions | None = None) -> tuple[str, dict[str, Any]]:
    """SQL of the distinct (uid, concept) pairs of ``measure``, and its parameters."""
    check_measure(measure)
    params: dict[str, Any] = {"vocabulary": vocabulary, "mode": mode, "variant": variant or ""}
    if measure == "text":
        sql = ("SELECT DISTINCT uid, concept FROM concept_hits WHERE vocabulary = $vocabulary AND mode = $mode "
               "AND ($variant = '' OR variant = $variant)")
    else:
        iset, cset = resolve_tagging(store, vocabulary, image or ImageOptions())
        opts = image or ImageOptions()
        params.update(iset=iset, cset=cset, k=opts.k, min_score=opts.min_score)
        sql = get_query("concepts.image_tags" if measure == "image" else "concepts.matched_hits").sql
        if measure == "image":
            params = {k: v for k, v in params.items() if k not in ("mode", "variant")}
        sql = f"SELECT uid, concept FROM ({sql}) x SEMI JOIN (SELECT DISTINCT concept FROM concepts " \
              "WHERE vocabulary = $vocabulary) v USING (concept)"
    if source:
        params["source"] = source
        sql = f"SELECT p.* FROM ({sql}) p SEMI JOIN samples s ON s.uid = p.uid AND s.source = $source"
    return sql, params


def measure_label(measure: str, image: ImageOptions | None) -> str:
    if measure == "text":
        return ""
    o = image or ImageOptions()
    return f" {measure}(k={o.k}" + (f", min_score={o.min_score:g}" if o.min_score else "") + ")"
