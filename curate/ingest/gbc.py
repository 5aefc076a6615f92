"""GBC (Graph-Based Captioning, apple/ml-gbc) graphs as JSONL, one graph per line.

A graph is ``{vertices, img_url, img_path, original_caption, short_caption,
detail_caption, img_size, ...}``; each vertex is ``{vertex_id, label, bbox, descs, ...}``
and each description ``{text, label, ...}`` (label: detail, short, hardcode, relation,
composition, original). The file is read line by line.

* Each graph becomes one sample. ``uid = sample_uid(source, url=img_url)`` when
  ``img_url`` is set, else ``sample_uid(source, source_id=img_path)`` (the path as
  written); ``url`` = ``img_url``, ``image_path`` = ``img_path`` resolved against the
  image root, ``width``/``height`` = ``img_size`` (upstream stores PIL's ``(width,
  height)``). Other scalar top-level keys (such as ``mask_inside_threshold``) go to
  ``samples.extra``.
* The image root is the option ``image_root`` (for upstream's files, the ml-gbc checkout:
  their paths read ``data/images/wiki/...``), else the folder of the JSONL file. An
  ``img_path`` is joined to it and normalised
  (:class:`~curate.ingest.jsonrecords.ImageRoot`), and ``image_path`` holds the absolute
  result; a graph whose ``img_path`` leaves the root is rejected (``image path escapes
  the input root``), as is one with an empty path (``bad image path``).
* Each vertex description becomes a caption of variant ``gbc_<description label>``
  (``gbc_detail``, ``gbc_short``, ``gbc_hardcode``, ``gbc_relation``,
  ``gbc_composition``, ...), generator ``GBC``, provenance ``{vertex_id, vertex_label,
  desc_index, bbox}`` plus the description's other non-null fields that are not lists
  (``full_label``, ``statistics``, ``clip_scores``, ``toxicity_scores``).
* Variant names become file names later (vector sets), so a label that does not make a
  safe name (:func:`curate.names.is_name`) of at most :data:`MAX_VARIANT` (50)
  characters is normalised by :func:`curate.names.normalise` and cut to fit
  (``../../evil`` -> ``gbc_evil``, ``a b`` -> ``gbc_a_b``); the original label is kept
  in the provenance as ``desc_label`` and the summary line counts the renamed labels. A
  label with nothing left (``///``, an empty string) is rejected (``bad label``).
* The image-level captions become variants too: ``short_caption`` ->
  ``gbc_short_caption``, ``detail_caption`` -> ``gbc_detail_caption`` (generator
  ``GBC``) and ``original_caption`` -> ``raw`` (generator ``alt-text``). As in upstream's
  ``GbcGraph``, a null one is taken from the image vertex's first (valid) description with
  label short/detail/original; one that is absent both ways is simply not there (no reject).
  They repeat the image vertex's texts, under a variant a mixing policy can pick.

Rejects, each with a reason and the line (and vertex/description) in ``row_ref``: a line
that is not UTF-8, not JSON (``malformed JSON``) or not an object; a graph with neither
img_url nor img_path, or without a ``vertices`` list (``missing key`` / ``wrong type``);
a vertex or description that is not an object, lacks ``descs``/``text``/``label``, or has
a caption that is not a string (``wrong type``); an image path outside the root or a
label with no safe name (see above); a line nested more than
:data:`~curate.ingest.jsonrecords.MAX_JSON_DEPTH` levels (``too deeply nested``); a
repeated graph (``duplicate row`` /
``duplicate id``); a description repeating the text of another of the same variant in
the graph (``duplicate caption``). NULL, empty and over-long texts are rejected by
:func:`run_ingest`.

On apple/ml-gbc's ``wiki_gbc_graphs.jsonl`` (and its ``_with_clip`` twin, same graphs,
same uids and texts): 19 graphs, 231 vertices, 459 descriptions, plus 19 short and 19
detail image captions, so 497 captions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeGuard

from ..ids import sample_uid
from ..names import is_name, normalise
from ..store import Store
from .core import IngestResult, Prepared, run_ingest
from .jsonrecords import (
    BadRecord,
    Collected,
    ImageRoot,
    dump_record,
    field,
    input_file,
    iter_json_lines,
    json_type,
)

GENERATOR = "GBC"
#: top-level key -> (variant, generator, the image vertex's description label it repeats)
IMAGE_CAPTIONS = {
    "original_caption": ("raw", "alt-text", "original"),
    "short_caption": ("gbc_short_caption", GENERATOR, "short"),
    "detail_caption": ("gbc_detail_caption", GENERATOR, "detail"),
}
MAPPED = ("vertices", "img_url", "img_path", "img_size", *IMAGE_CAPTIONS)
PREFIX = "gbc_"
#: Longest variant a label becomes. Far above upstream's labels (``composition``), and short
#: enough that the vector-set names made of it (``clip.<model>.text.<variant>``) stay names.
MAX_VARIANT = 50


def prepare_gbc(store: Store, path: str | Path, source: str, image_root: str | Path | None = None) -> Prepared:
    path = input_file(path)
    name = str(path.resolve())
    root = ImageRoot.of(image_root, path)
    out = Collected()
    variants = _Variants()
    n = 0
    for line, graph, bad in iter_json_lines(path):
        n += 1
        ref = f"{name}:line {line}"
        if bad:
            out.reject(ref, *bad)
            continue
        try:
            _add_graph(out, source, ref, graph, root, variants)
        except BadRecord as e:
            out.reject(ref, e.reason, e.detail, dump_record(graph))
    plan = out.plan("gbc", source, {"input": name, "image_root": root.root}, records_in=n)
    if variants.renamed:
        shown = ", ".join(f"{label[:40]!r} -> {v}" for label, v in list(variants.renamed.items())[:3])
        more = ", ..." if len(variants.renamed) > 3 else ""
        summary = {f"GBC labels renamed to safe variant names ({shown}{more}; the label is in provenance desc_label)":
                   len(variants.renamed)}
        plan.after = lambda con, run_id: summary
    return plan


def ingest_gbc(store: Store, path: str | Path, source: str | None = None, *,
               image_root: str | Path | None = None) -> IngestResult:
    """Ingest a GBC graph JSONL file (see the module docstring for the mapping).

    ``image_root``: the folder ``img_path`` is relative to (default: the file's folder)."""
    return run_ingest(store, prepare_gbc(store, path, source or Path(path).stem, image_root))


class _Variants:
    """Description label -> variant name, remembering the labels that had to be renamed."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.renamed: dict[str, str] = {}

    def of(self, label: str) -> str:
        variant = self.names.get(label)
        if variant is None:
            variant = PREFIX + label
            if not label or not is_name(variant, max_len=MAX_VARIANT):
                safe = normalise(label, max_len=MAX_VARIANT - len(PREFIX))
                if not safe:
                    raise BadRecord("bad label", f"description label {label[:200]!r} has no letter or digit "
                                    "to make a variant name of")
                variant = PREFIX + safe
                self.renamed[label] = variant
            self.names[label] = variant
        return variant


def _add_graph(out: Collected, source: str, ref: str, graph: Any, root: ImageRoot, variants: _Variants) -> None:
    if not isinstance(graph, dict):
        raise BadRecord("not a JSON object", f"expected an object, got {json_type(graph)}")
    vertices = field(graph, "vertices", list)
    url = field(graph, "img_url", str, required=False)
    img_path = field(graph, "img_path", str, required=False)
    if url is None and img_path is None:
        raise BadRecord("missing key", "needs img_url or img_path (the sample is keyed by them)")
    uid = str(sample_uid(source, url=url) if url is not None else sample_uid(source, source_id=img_path))
    image_path = None if img_path is None else root.path(img_path, "img_path")
    size = graph.get("img_size")
    width, height = size if _is_size(size) else (None, None)
    extra = {k: v for k, v in graph.items() if k not in MAPPED and not isinstance(v, (list, dict))}
    if not out.row(ref, uid, dump_record(graph), url=url, image_path=image_path, width=width, height=height,
                   extra=extra or None):
        return

    image_descs: dict[str, Any] = {}  # description label -> text, of the image vertex
    for i, vertex in enumerate(vertices):
        vref = f"{ref} vertices[{i}]"
        try:
            if not isinstance(vertex, dict):
                raise BadRecord("not a JSON object", f"vertex is {json_type(vertex)}, expected an object")
            descs = field(vertex, "descs", list)
            vertex_id = vertex.get("vertex_id")
            vertex_label = vertex.get("label")
        except BadRecord as e:
            out.reject(vref, e.reason, e.detail, dump_record(vertex))
            continue
        for k, desc in enumerate(descs):
            dref = f"{ref} vertex {vertex_id!r} desc {k}"
            try:
                if not isinstance(desc, dict):
                    raise BadRecord("not a JSON object", f"description is {json_type(desc)}, expected an object")
                label = field(desc, "label", str)
                if "text" not in desc:
                    raise BadRecord("missing key", "no 'text'")
                variant = variants.of(label)
            except BadRecord as e:
                out.reject(dref, e.reason, e.detail, dump_record(desc))
                continue
            if vertex_label == "image" and isinstance(desc["text"], str) and desc["text"].strip():
                image_descs.setdefault(label, desc["text"])
            prov = {"vertex_id": vertex_id, "vertex_label": vertex_label, "desc_index": k, "bbox": vertex.get("bbox")}
            prov.update({key: v for key, v in desc.items()
                         if key not in ("text", "label") and v is not None and not isinstance(v, list)})
            if variant != PREFIX + label:
                prov["desc_label"] = label
            out.caption(uid, dref, variant, desc["text"], GENERATOR, prov, what="text")

    for key, (variant, generator, desc_label) in IMAGE_CAPTIONS.items():
        text, prov = graph.get(key), {"field": key}
        if text is None:
            text, prov = image_descs.get(desc_label), {"field": key, "from_vertex_label": "image"}
        if text is not None:
            out.caption(uid, f"{ref} {key}", variant, text, generator, prov, what=key)


def _is_size(size: Any) -> TypeGuard[list[int]]:
    return (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size))


__all__ = ["ingest_gbc", "prepare_gbc"]
