"""COCO captions JSON (``captions_train2017.json`` / ``captions_val2017.json`` layout).

The file is one JSON object with ``images`` [{id, file_name, coco_url, width, height,
...}] and ``annotations`` [{id, image_id, caption}]; both lists are required. It is
parsed whole (COCO files are a few tens of MB).

* Each image becomes one sample: ``uid = sample_uid(source, source_id=str(id))`` (the
  image id is the source's own id), ``url`` = ``coco_url``, ``image_path`` =
  ``file_name`` resolved against the image root, ``width``/``height``; its other keys
  (license, flickr_url, date_captured, ...) go to ``samples.extra``.
* The image root is the option ``image_root`` (COCO's ``val2017/`` folder, say), else
  the folder of the captions file. A ``file_name`` is joined to it and normalised
  (:class:`~curate.ingest.jsonrecords.ImageRoot`), and ``image_path`` holds the
  absolute result; one that leaves the root (``../../etc/passwd``, or an absolute path
  elsewhere) is rejected (``image path escapes the input root``), and so are an empty one
  and one naming the root itself (``bad image path``).
* Each annotation becomes a caption of variant ``human`` (generator ``COCO annotators``)
  with provenance ``{"annotation_id": id}``.

Rejects, each with a reason: an entry that is not an object (``not a JSON object``), a
missing or null id/image_id/caption key (``missing key``), a value of the wrong type
(``wrong type``, e.g. a caption that is a number), a ``file_name`` outside the image
root (see above), an annotation whose image_id is not
among the images (``unknown image``), a repeated annotation id (``duplicate id``), a
caption repeating the text of another annotation of the same image (``duplicate
caption``: the two would be one caption, since captions are content-addressed), a
repeated image id (``duplicate row`` / ``duplicate id``). Images without a valid caption
are rejected by :func:`run_ingest` (``no valid caption``). A file nested more than
:data:`~curate.ingest.jsonrecords.MAX_JSON_DEPTH` levels is an :class:`InputError`.

On ``captions_val2017.json``: 5,000 images, 25,014 annotations, 4 of which repeat an
earlier caption of their image word for word, so 25,010 captions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..ids import sample_uid
from ..store import Store
from .core import IngestResult, Prepared, run_ingest
from .jsonrecords import (
    BadRecord,
    Collected,
    ImageRoot,
    dump_record,
    field,
    input_file,
    json_type,
    read_json_document,
)

IMAGE_KEYS = ("id", "coco_url", "file_name", "width", "height")


def prepare_coco(store: Store, path: str | Path, source: str, image_root: str | Path | None = None) -> Prepared:
    path = input_file(path)
    name = str(path.resolve())
    root = ImageRoot.of(image_root, path)
    doc = read_json_document(path)
    if not isinstance(doc, dict):
        raise InputError(f"{path.name}: expected a COCO captions object with images and annotations, got {json_type(doc)}")
    for key in ("images", "annotations"):
        if not isinstance(doc.get(key), list):
            got = "no such key" if key not in doc else json_type(doc[key])
            raise InputError(f"{path.name}: {key!r} must be a list (a COCO captions file has images and annotations); got {got}")

    out = Collected()
    images = []  # (row_ref, image id, checked fields, entry), in file order
    for i, img in enumerate(doc["images"]):
        ref = f"{name}:images[{i}]"
        try:
            if not isinstance(img, dict):
                raise BadRecord("not a JSON object", f"expected an object, got {json_type(img)}")
            image_id = field(img, "id", (int, str))
            file_name = field(img, "file_name", str, required=False)
            checked = dict(url=field(img, "coco_url", str, required=False),
                           image_path=None if file_name is None else root.path(file_name, "file_name"),
                           width=field(img, "width", int, required=False),
                           height=field(img, "height", int, required=False))
        except BadRecord as e:
            out.reject(ref, e.reason, e.detail, dump_record(img))
            continue
        images.append((ref, image_id, checked, img))
    known = {image_id for _, image_id, _, _ in images}

    by_image: dict[int | str, list[tuple[str, dict[str, Any]]]] = {}
    seen_ids: dict[int | str, str] = {}  # annotation id -> row_ref of its first use
    for j, ann in enumerate(doc["annotations"]):
        ref = f"{name}:annotations[{j}]"
        try:
            if not isinstance(ann, dict):
                raise BadRecord("not a JSON object", f"expected an object, got {json_type(ann)}")
            ann_id = field(ann, "id", (int, str))
            image_id = field(ann, "image_id", (int, str))
            if "caption" not in ann:
                raise BadRecord("missing key", "no 'caption'")
            if image_id not in known:
                raise BadRecord("unknown image", f"image_id {image_id!r} is not among the (valid) images")
            if ann_id in seen_ids:
                raise BadRecord("duplicate id", f"annotation id {ann_id!r} repeats {seen_ids[ann_id]}")
        except BadRecord as e:
            out.reject(ref, e.reason, e.detail, dump_record(ann), whole=False)  # a caption, not a record
            continue
        seen_ids[ann_id] = ref
        by_image.setdefault(image_id, []).append((ref, ann))

    for ref, image_id, checked, img in images:
        uid = str(sample_uid(source, source_id=str(image_id)))
        extra = {k: v for k, v in img.items() if k not in IMAGE_KEYS}
        if not out.row(ref, uid, dump_record(img), extra=extra or None, **checked):
            continue  # a repeated image id: its annotations went to the first image with that id
        for ann_ref, ann in by_image.pop(image_id, ()):
            out.caption(uid, ann_ref, "human", ann["caption"], "COCO annotators", {"annotation_id": ann["id"]})
    return out.plan("coco", source, {"input": name, "image_root": root.root}, records_in=len(doc["images"]))


def ingest_coco(store: Store, path: str | Path, source: str | None = None, *,
                image_root: str | Path | None = None) -> IngestResult:
    """Ingest a COCO captions JSON file (see the module docstring for the mapping).

    ``image_root``: the folder ``file_name`` is relative to (default: the file's folder)."""
    return run_ingest(store, prepare_coco(store, path, source or Path(path).stem, image_root))


__all__ = ["ingest_coco", "prepare_coco"]
