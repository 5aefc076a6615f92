"""Image and matched concept frequency (Udandarao et al. 2024, section 2).

* **Concept embeddings.** :func:`embed_concepts` encodes each concept of a vocabulary
  with the CLIP text tower: every prompt template (``templates.json``, from
  clip_benchmark, ``{c}`` replaced by the concept) is embedded, the template embeddings
  are averaged and L2-normalised, the usual zero-shot classifier. The result is a
  ``concept`` vector set, ``concepts.<vocabulary>.<model_id>``.
* **Image tags.** :func:`curate.similarity.tags.tag` gives every image of an image set
  its top-``k`` concepts with exact cosine scores (table ``concept_tags``).
* **Image frequency** of a concept: the images that have it among their top ``k`` tags
  with a score of at least ``min_score``.
* **Matched frequency**: the samples whose image is tagged with the concept *and* one of
  whose captions (of ``variant``, or of any variant) names it (``concept_hits``, from
  ``curate concepts count``). This is the paper's main measure ("integrated").
* **Misalignment degree**: among samples that have both an image tag and a text concept,
  the share whose two concept sets do not meet. The paper's Table 3 reports it per
  pretraining set (CC3M 16.8%, LAION-400M 5.3%; ``curate sql -q
  concepts.published_misalignment``).

The RAM++ tagger the paper used is not part of open_clip; CLIP zero-shot tags are the
substitute, so image counts are comparable between stores tagged the same way, not with
the published RAM++ counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import polars as pl

from ..errors import ConfigError
from ..store import Store


def templates(name: str) -> list[str]:
    """Prompt templates: a dataset name in ``templates.json`` (e.g. ``imagenet1k``, 80
    templates) or ``simple`` (``a photo of a {c}.``)."""
    if name == "simple":
        return ["a photo of a {c}."]
    data = json.loads(resources.files("curate.concepts").joinpath("data/templates.json").read_text(encoding="utf-8"))
    if name not in data:
        raise ConfigError(f"unknown template set {name!r}; known: simple, {', '.join(sorted(data))}")
    return list(data[name])


def concept_set_name(vocabulary: str, model_id: str) -> str:
    """``concepts.<vocabulary>.<model_id>`` with the model id's other characters as ``_``
    (``ViT-B-32/openai`` -> ``ViT-B-32_openai``); the vocabulary name is checked, as it
    becomes part of the vector set's folder name."""
    from .vocab import check_name

    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in model_id)
    return f"concepts.{check_name(vocabulary)}.{safe}"


def embed_concepts(store: Store, vocabulary: str, clip: Any, *, model_id: str, template_set: str = "imagenet1k",
                   name: str | None = None, batch_size: int = 256) -> str:
    """Write the vocabulary's concept embeddings as a ``concept`` vector set; returns its
    name. ``clip`` is a :class:`curate.stages.clip.ClipModel`."""
    from .. import vectors
    from ..stages.concepts import _vocabulary_rows

    name = vectors.check_name(name or concept_set_name(vocabulary, model_id))  # before any text is encoded
    rows = _vocabulary_rows(store, vocabulary)
    concepts = sorted({c for c, _ in rows})
    tpl = templates(template_set)
    prompts = [t.replace("{c}", c) for c in concepts for t in tpl]
    emb = clip.encode_texts(prompts, batch_size=batch_size).reshape(len(concepts), len(tpl), -1).mean(axis=1)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    vectors.write_set(store, name, emb.astype(np.float32), concepts, kind="concept", model=model_id, replace=True,
                      config={"vocabulary": vocabulary, "templates": template_set, "n_templates": len(tpl)})
    return name


@dataclass
class ImageCounts:
    counts: pl.DataFrame  # concept, text, image, matched
    misalignment: float | None
    samples_both: int

    def summary(self) -> str:
        c = self.counts
        mis = "n/a" if self.misalignment is None else f"{self.misalignment:.1%}"
        return (f"{c.height:,} concepts: {int((c['image'] > 0).sum()):,} seen in images, {int((c['text'] > 0).sum()):,} "
                f"in text, {int((c['matched'] > 0).sum()):,} matched; misalignment {mis} over "
                f"{self.samples_both:,} samples with both")


#: (uid, concept) of every image whose top-$k tags of the latest tagging run of ($iset,
#: $cset) include the concept with score >= $min_score: the image side of the image and
#: matched counts, here and in the mixing weights (curate.mix.compile.weight_sql)
IMAGE_TAGS_SQL = """SELECT DISTINCT t.uid, t.concept FROM concept_tags t
    WHERE t.set_name = $iset AND t.concept_set = $cset AND t.rank <= $k AND t.score >= $min_score
      AND t.config_hash = (SELECT arg_max(config_hash, run_id) FROM concept_tags
                           WHERE set_name = $iset AND concept_set = $cset)"""


def image_counts(store: Store, vocabulary: str, concept_set: str, image_set: str, *, k: int = 5,
                 min_score: float = 0.0, variant: str | None = None, mode: str = "phrase") -> ImageCounts:
    """Text, image and matched counts per concept (zeros included) and the misalignment
    degree, from ``concept_tags`` of (image_set, concept_set) and ``concept_hits``."""
    if "concept_tags" not in store.tables():
        raise ConfigError("the store has no image tags; run `curate concepts image-count` (or `curate similarity tag`)")
    params: dict[str, Any] = {"vocabulary": vocabulary, "cset": concept_set, "iset": image_set, "k": k,
                              "min_score": min_score, "mode": mode}
    text_filter = "AND h.variant = $variant" if variant else ""
    if variant:
        params["variant"] = variant
    has_hits = "caption_concepts" in store.tables()
    text_cte = (f"SELECT DISTINCT h.uid, h.concept FROM concept_hits h WHERE h.vocabulary = $vocabulary "
                f"AND h.mode = $mode {text_filter}") if has_hits else \
        "SELECT NULL::UUID AS uid, NULL::VARCHAR AS concept WHERE false"
    ctes = f"""
        WITH img AS ({IMAGE_TAGS_SQL}),
        txt AS ({text_cte})"""
    counts = store.df(ctes + """,
        vocab AS (SELECT DISTINCT concept FROM concepts WHERE vocabulary = $vocabulary),
        ti AS (SELECT concept, count(*) AS n FROM txt GROUP BY concept),
        ii AS (SELECT concept, count(*) AS n FROM img GROUP BY concept),
        mi AS (SELECT concept, count(*) AS n FROM img SEMI JOIN txt USING (uid, concept) GROUP BY concept)
        SELECT v.concept, coalesce(ti.n, 0)::BIGINT AS text, coalesce(ii.n, 0)::BIGINT AS image,
               coalesce(mi.n, 0)::BIGINT AS matched
        FROM vocab v LEFT JOIN ti USING (concept) LEFT JOIN ii USING (concept) LEFT JOIN mi USING (concept)
        ORDER BY matched DESC, image DESC, text DESC, v.concept
    """, params)
    mis_sql = ctes + """,
        both_ AS (SELECT uid FROM img INTERSECT SELECT uid FROM txt),
        met AS (SELECT DISTINCT uid FROM img SEMI JOIN txt USING (uid, concept))
        SELECT (SELECT count(*) FROM both_), (SELECT count(*) FROM both_ ANTI JOIN met USING (uid))
    """
    both, disjoint = store.execute(mis_sql, params).fetchall()[0]
    return ImageCounts(counts, disjoint / both if both else None, both)
