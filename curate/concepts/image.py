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
* **Misalignment degree** (named query ``concepts.misalignment``): a sample is misaligned
  when its image has a concept and its captions name one, but none of the image's
  concepts is named. The paper's Table 3 divides their number by all samples (CC3M
  16.8%, LAION-400M 5.3%; ``curate sql -q concepts.published_misalignment``);
  ``share_of_both`` divides by the samples that have both.

The RAM++ tagger the paper used is not part of open_clip; CLIP zero-shot tags are the
substitute, so image counts are comparable between stores tagged the same way, not with
the published RAM++ counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
    misalignment: float | None          # share of the samples with both whose concepts do not meet
    samples_both: int
    degrees: dict[str, Any] = field(default_factory=dict)   # the row of concepts.misalignment

    def summary(self) -> str:
        c = self.counts
        mis = "n/a" if self.misalignment is None else f"{self.misalignment:.1%}"
        d = self.degrees
        paper = ""
        if d.get("degree_conservative") is not None:
            paper = (f"; the paper's degree {d['degree_conservative']:.2%} of all {d['samples']:,} samples "
                     f"({d['degree_extracted']:.2%} of the larger of image-tagged and text-named samples)")
        return (f"{c.height:,} concepts: {int((c['image'] > 0).sum()):,} seen in images, {int((c['text'] > 0).sum()):,} "
                f"in text, {int((c['matched'] > 0).sum()):,} matched; misalignment {mis} over "
                f"{self.samples_both:,} samples with both{paper}")


#: (uid, concept) of every image whose top-$k tags of the latest tagging run of ($iset,
#: $cset) include the concept with score >= $min_score: the image side of the image and
#: matched counts, here and in the mixing weights (curate.mix.compile.weight_sql); the
#: named query concepts.image_tags is the same relation (tested equal)
IMAGE_TAGS_SQL = """SELECT DISTINCT t.uid, t.concept FROM concept_tags t
    WHERE t.set_name = $iset AND t.concept_set = $cset AND t.rank <= $k AND t.score >= $min_score
      AND t.config_hash = (SELECT arg_max(config_hash, run_id) FROM concept_tags
                           WHERE set_name = $iset AND concept_set = $cset)"""


def image_counts(store: Store, vocabulary: str, concept_set: str, image_set: str, *, k: int = 5,
                 min_score: float = 0.0, variant: str | None = None, mode: str = "phrase") -> ImageCounts:
    """Text, image and matched counts per concept (zeros included) and the misalignment
    degree, from ``concept_tags`` of (image_set, concept_set) and ``concept_hits``: the
    named queries ``concepts.image_counts`` and ``concepts.misalignment``."""
    if "concept_tags" not in store.tables():
        raise ConfigError("the store has no image tags; run `curate concepts image-count` (or `curate similarity tag`)")
    _ensure_hits(store)
    params: dict[str, Any] = {"vocabulary": vocabulary, "cset": concept_set, "iset": image_set, "k": k,
                              "min_score": min_score, "mode": mode, "variant": variant or ""}
    counts = store.query("concepts.image_counts", **params).pl()
    row = store.query("concepts.misalignment", **params).pl().row(0, named=True)
    both = int(row["samples_both"])
    return ImageCounts(counts, row["share_of_both"], both, row)


def _ensure_hits(store: Store) -> None:
    """An empty ``concept_hits`` where no text has been counted yet, so image counts run
    on tags alone (text and matched are then 0)."""
    if "concept_hits" not in {r[0] for r in store.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}:
        if store.read_only:
            raise ConfigError("the store has no text counts; run `curate concepts count` first")
        store.execute("CREATE VIEW concept_hits AS SELECT NULL::UUID AS caption_id, NULL::UUID AS uid, "
                      "NULL::VARCHAR AS source, NULL::VARCHAR AS variant, NULL::VARCHAR AS vocabulary, "
                      "NULL::VARCHAR AS mode, NULL::VARCHAR AS concept WHERE false")
