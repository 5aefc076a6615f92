"""LaCLIP language rewrites (Fan et al., "Improving CLIP Training with Language Rewrites", NeurIPS 2023).

Two inputs give (original caption, rewrite, style) triples:

* **line-aligned text files**, as LaCLIP releases them: ``originals`` holds one original
  caption per line and the rewrite file holds the rewrite of line *n* on its line *n*,
  in one ``style`` (chatgpt, bard, mscoco, human, ...). A line-count mismatch is an
  :class:`InputError` raised before anything is written, never a silent shift.
* **pairs JSONL** (``.jsonl``): one ``{source_caption, rewritten_caption, strategy}``
  object per line (``pair_index`` is kept when present); the strategy is the style.

Each rewrite becomes a caption of variant ``rewrite``, generator ``LaCLIP <style>``,
provenance ``{style, file, line, rewrite_of[, pair_index]}``. The variant is always
``rewrite`` (``raw`` for created originals): a style never becomes a variant name.

**Matching.** A rewrite is a function of the original *text* (the LLM never saw the
image), so it is attached to every sample of ``source`` that has a caption of variant
``match_variant`` (default ``raw``) with exactly the original text; the match runs inside
the ingest transaction. An original that matches nothing is rejected (``original not in
store``) unless ``create=True``: then a sample is created for it with
``uid = sample_uid(source, record=<original text>)`` and the original as its ``raw``
caption (generator ``alt-text``). Re-running adds nothing either way.

Other rejects, each with a reason and ``file:line N`` as row_ref: a line that is not
UTF-8 (in either file), a pairs line that is not JSON, nested more than
:data:`~curate.ingest.jsonrecords.MAX_JSON_DEPTH` levels (``too deeply nested``) or not
an object, a missing key,
a value that is not a string (``wrong type``), an empty original (``empty original``),
and a line repeating an earlier (original, rewrite, style) (``duplicate row``). NULL,
empty and over-long rewrites are rejected by :func:`run_ingest`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import ConfigError, InputError
from ..ids import sample_uid
from ..store import Store
from .core import IngestResult, Prepared, run_ingest
from .jsonrecords import ArrowRows, BadRecord, dump_record, field, input_file, iter_json_lines, json_type

INPUT_SCHEMA = pa.schema([
    ("row_ref", pa.string()), ("row_ord", pa.int64()), ("original", pa.string()), ("rewrite", pa.string()),
    ("generator", pa.string()), ("provenance", pa.string()), ("raw_provenance", pa.string()), ("new_uid", pa.string()),
])
REJECT_SCHEMA = pa.schema([
    ("row_ref", pa.string()), ("reason", pa.string()), ("detail", pa.string()), ("record", pa.string()),
    ("whole", pa.bool_()),
])

# Every (input line, target sample) pair: existing samples whose caption has the original
# text, or (create) a new sample keyed by the original text.
_MATCHES = """
    WITH known AS (
        SELECT DISTINCT uid, text FROM captions WHERE source = $source AND variant = $match_variant
    )
    SELECT i.*, k.uid, false AS created FROM _curate_laclip_in i JOIN known k ON k.text = i.original
    UNION ALL
    SELECT i.*, i.new_uid::UUID, true FROM _curate_laclip_in i
    WHERE $create AND NOT EXISTS (SELECT 1 FROM known k WHERE k.text = i.original)
"""


def validate_options(originals: Any = None, style: str | None = None, **_: Any) -> None:
    """Rules across options, checked before any work (also by pipelines)."""
    if originals is None and style is not None:
        raise ConfigError("style is for line-aligned rewrite files; a pairs JSONL carries its own strategy per line")
    if originals is not None and not style:
        raise ConfigError("a line-aligned rewrite file needs its style (chatgpt, bard, mscoco, human, ...)")


def prepare_laclip(store: Store, path: str | Path, source: str, *, originals: str | Path | None = None,
                   style: str | None = None, match_variant: str = "raw", create: bool = False) -> Prepared:
    """Plan the ingest of a rewrite file: line-aligned text (``originals`` and ``style`` given)
    or pairs JSONL (neither given)."""
    path = input_file(path)
    validate_options(originals=originals, style=style)
    if originals is None:
        triples = _pairs(path)
        config: dict[str, Any] = {"input": str(path.resolve()), "input_format": "pairs jsonl"}
    else:
        originals = input_file(originals, "originals file")
        assert style is not None
        _check_aligned(originals, path)
        triples = _aligned(originals, path, style)
        config = {"input": str(path.resolve()), "originals": str(originals.resolve()), "style": style,
                  "input_format": "line-aligned text"}
    config.update(match_variant=match_variant, create=create)

    file_name = config["input"]
    rows, rejects = ArrowRows(INPUT_SCHEMA), ArrowRows(REJECT_SCHEMA)
    seen: dict[bytes, str] = {}  # md5 of (original, rewrite, style) -> row_ref of its first line
    n_lines = 0
    for ref, line, item in triples:
        n_lines += 1
        if isinstance(item, BadRecord):
            rejects.add(ref, item.reason, item.detail, item.record, True)
            continue
        original, rewrite, style_, extra = item
        key = hashlib.md5(json.dumps([original, rewrite, style_]).encode()).digest()
        if key in seen:
            rejects.add(ref, "duplicate row", f"same original, rewrite and style as {seen[key]}", rewrite, True)
            continue
        seen[key] = ref
        prov = {"style": style_, "file": file_name, "line": line, "rewrite_of": match_variant, **extra}
        raw_prov = {"file": config.get("originals", file_name), "line": line}
        rows.add(ref, line, original, rewrite, f"LaCLIP {style_}", json.dumps(prov, ensure_ascii=False),
                 json.dumps(raw_prov, ensure_ascii=False), str(sample_uid(source, record=original)))
    del seen

    m = f"({_MATCHES})"
    rows_sql = (
        "SELECT arg_min(row_ref, row_ord) AS row_ref, min(row_ord) AS row_ord, uid, NULL::VARCHAR AS url, "
        "NULL::VARCHAR AS image_shard, NULL::VARCHAR AS image_key, NULL::VARCHAR AS image_path, "
        "NULL::VARCHAR AS sha256, NULL::INTEGER AS width, NULL::INTEGER AS height, NULL::JSON AS extra "
        f"FROM {m} GROUP BY uid"
    )
    long_sql = (
        "SELECT uid, row_ref, 'rewrite' AS variant, rewrite AS text, generator, "
        "CASE WHEN created THEN json_merge_patch(provenance::JSON, '{\"rewrite_of\": \"raw\"}') "
        f"ELSE provenance::JSON END AS provenance FROM {m} "
        "UNION ALL "
        f"SELECT uid, row_ref, 'raw', original, 'alt-text', raw_provenance::JSON FROM {m} WHERE created"
    )
    rejects_sql = (
        "SELECT row_ref, reason, detail, record, whole FROM _curate_laclip_rej UNION ALL "
        "SELECT row_ref, 'original not in store', "
        "'no ' || $match_variant || ' caption of source ' || $source || ' has this text', original, true "
        "FROM _curate_laclip_in i WHERE NOT $create AND NOT EXISTS "
        "(SELECT 1 FROM captions c WHERE c.source = $source AND c.variant = $match_variant AND c.text = i.original)"
    )
    return Prepared(
        fmt="laclip", source=source, config=config, rows_sql=rows_sql, long_captions_sql=long_sql,
        reader_rejects_sql=rejects_sql, params={"match_variant": match_variant, "create": create},
        register={"_curate_laclip_in": rows.table(), "_curate_laclip_rej": rejects.table()},
        after=lambda con, run_id: {"input lines": n_lines},
    )


def ingest_laclip(store: Store, path: str | Path, source: str | None = None, *, originals: str | Path | None = None,
                  style: str | None = None, match_variant: str = "raw", create: bool = False) -> IngestResult:
    """Ingest LaCLIP rewrites into ``source`` (see the module docstring for matching and rejects).

    ``path`` is a rewrite text file (with ``originals`` and ``style``) or a pairs JSONL.
    """
    plan = prepare_laclip(store, path, source or Path(path).stem, originals=originals, style=style,
                          match_variant=match_variant, create=create)
    return run_ingest(store, plan)


Triple = tuple[str, int, "tuple[str, Any, str, dict[str, Any]] | BadRecord"]


def _pairs(path: Path) -> Iterator[Triple]:
    name = str(path.resolve())
    for line, obj, bad in iter_json_lines(path):
        ref = f"{name}:line {line}"
        if bad:
            yield ref, line, BadRecord(*bad)
            continue
        try:
            if not isinstance(obj, dict):
                raise BadRecord("not a JSON object", f"expected an object, got {json_type(obj)}")
            original = _original(field(obj, "source_caption", str))
            style = field(obj, "strategy", str)
            if "rewritten_caption" not in obj:
                raise BadRecord("missing key", "no 'rewritten_caption'")
            rewrite = obj["rewritten_caption"]
            if rewrite is not None and not isinstance(rewrite, str):
                raise BadRecord("wrong type", f"'rewritten_caption' is {json_type(rewrite)}, expected string")
        except BadRecord as e:
            yield ref, line, BadRecord(e.reason, e.detail, dump_record(obj)[:1000])
            continue
        extra = {"pair_index": obj["pair_index"]} if "pair_index" in obj else {}
        yield ref, line, (original, rewrite, style, extra)


def _aligned(originals: Path, rewrites: Path, style: str) -> Iterator[Triple]:
    name = str(rewrites.resolve())
    for line, (orig, rew) in enumerate(zip(_lines(originals), _lines(rewrites)), start=1):
        ref = f"{name}:line {line}"
        undecodable = [(f, v) for f, v in ((originals, orig), (rewrites, rew)) if isinstance(v, UnicodeDecodeError)]
        if undecodable:
            f, e = undecodable[0]
            yield ref, line, BadRecord("not UTF-8", f"{f.name} line {line}: invalid byte at position {e.start}",
                                       e.object[:1000].decode("utf-8", "replace"))
            continue
        assert isinstance(orig, str) and isinstance(rew, str)  # an undecodable line was yielded above
        try:
            original = _original(orig)
        except BadRecord as e:
            yield ref, line, BadRecord(e.reason, e.detail, rew)
            continue
        yield ref, line, (original, rew, style, {})


def _original(text: str | None) -> str:
    if text is None or not text.strip():
        raise BadRecord("empty original", "the original caption is empty, nothing to match")
    return text


def _lines(path: Path) -> Iterator[str | UnicodeDecodeError]:
    """The file's lines without line endings (a last line without newline counts); an
    undecodable line yields its UnicodeDecodeError."""
    with open(path, "rb") as fh:
        for raw in fh:
            raw = raw.rstrip(b"\r\n")
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield e


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def _check_aligned(originals: Path, rewrites: Path) -> None:
    n, m = _count_lines(originals), _count_lines(rewrites)
    if n != m:
        raise InputError(
            f"{rewrites.name} has {m:,} lines but {originals.name} has {n:,}; LaCLIP rewrite files are line-aligned "
            "with their originals, so nothing was written (check that both come from the same release)"
        )


__all__ = ["ingest_laclip", "prepare_laclip"]
