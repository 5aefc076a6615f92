"""CapsFusion triples: one image described three ways (raw alt-text, BLIP synthetic, LLM-fused).

Input: upstream's ``example_data.json`` (a JSON array of objects) or JSONL (one object per
line); which one is told by the first non-blank character (``[`` or ``{``). A JSON array
is parsed whole, so give very large inputs as JSONL, which is read line by line.

Each record becomes one sample and up to three captions (key -> variant, generator):

* ``laion_2b`` -> ``raw``, ``alt-text``
* ``laion_coco`` -> ``synthetic``, ``BLIP (LAION-COCO)``
* ``capsfusion``, or upstream's misspelling ``capsfuion_official`` -> ``fused``,
  ``CapsFusion LLM`` (``capsfusion`` wins when both are present)

Other keys are kept in ``samples.extra``.

Records carry no url or id, so the uid hashes the record:
``uid = sample_uid(source, record=json.dumps([laion_2b, laion_coco], ensure_ascii=False,
separators=(",", ":")))``. The image is identified by its two upstream captions; the
fused caption is derived from them, so a re-fused release maps onto the same samples.

Rejects, each with a reason: a record that is not an object (``not a JSON object``), a
missing key (``missing key``; the other variants of the record are kept), a caption that
is not a string (``wrong type``), a record with neither ``laion_2b`` nor ``laion_coco``
(``missing key``: nothing to key it by), a repeated record (``duplicate row``, or
``duplicate id`` when only the fused caption differs), and in JSONL a line that is not
UTF-8 or not JSON. NULL, empty and over-long captions are rejected by :func:`run_ingest`.

"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from ..ids import sample_uid
from ..store import Store
from .core import IngestResult, Prepared, run_ingest
from .jsonrecords import (Collected, _first_char, dump_record, input_file, iter_json_lines, json_type,
                          read_json_document)

CAPSFUSION_KEYS = {
    "laion_2b": ("raw", "alt-text"),
    "laion_coco": ("synthetic", "BLIP (LAION-COCO)"),
    "capsfusion": ("fused", "CapsFusion LLM"),
    "capsfuion_official": ("fused", "CapsFusion LLM"),
}
FUSED_KEYS = ("capsfusion", "capsfuion_official")


def prepare_capsfusion(store: Store, path: str | Path, source: str) -> Prepared:
    path = input_file(path)
    name = str(path.resolve())
    out = Collected()
    if _first_char(path) == "[":
        records = read_json_document(path)
        for i, rec in enumerate(records):
            _add_record(out, source, f"{name}:[{i}]", rec)
        input_format = "json array"
    else:
        for line, rec, bad in iter_json_lines(path):
            ref = f"{name}:line {line}"
            if bad:
                out.reject(ref, *bad)
            else:
                _add_record(out, source, ref, rec)
        input_format = "jsonl"
    return out.plan("capsfusion", source, {"input": name, "input_format": input_format})


def ingest_capsfusion(store: Store, path: str | Path, source: str | None = None) -> IngestResult:
    """Ingest a CapsFusion JSON array or JSONL file (see the module docstring for the mapping)."""
    return run_ingest(store, prepare_capsfusion(store, path, source or Path(path).stem))


def _add_record(out: "Collected", source: str, ref: str, rec: Any) -> None:
    if not isinstance(rec, dict):
        out.reject(ref, "not a JSON object", f"expected an object, got {json_type(rec)}", dump_record(rec))
        return
    fused_key = next((k for k in FUSED_KEYS if k in rec), None)
    raw, synthetic = rec.get("laion_2b"), rec.get("laion_coco")
    if not isinstance(raw, str) and not isinstance(synthetic, str):
        out.reject(ref, "missing key", "needs laion_2b or laion_coco (the sample is keyed by them)", dump_record(rec))
        return
    key = json.dumps([raw, synthetic], ensure_ascii=False, separators=(",", ":"))
    uid = str(sample_uid(source, record=key))
    fingerprint = json.dumps([raw, synthetic, rec.get(fused_key) if fused_key else None], ensure_ascii=False)
    extra = {k: v for k, v in rec.items() if k not in ("laion_2b", "laion_coco", fused_key)}
    if not out.row(ref, uid, fingerprint, extra=extra or None):
        return
    for k in ("laion_2b", "laion_coco", fused_key or "capsfusion"):
        variant, generator = CAPSFUSION_KEYS[k]
        if k not in rec:
            shown = "capsfusion or capsfuion_official" if k == "capsfusion" else k
            out.reject(ref, "missing key", f"no {shown} (variant {variant})", dump_record(rec))
            continue
        out.caption(uid, ref, variant, rec[k], generator, None, what=k)
