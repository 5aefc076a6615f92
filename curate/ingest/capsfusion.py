"""CapsFusion triples: one image described three ways (raw alt-text, BLIP synthetic, LLM-fused).

Inputs:

* the CapsFusion-120M release: parquet files (one, or a folder of them) with the columns
  ``image_url``, ``laion_2b``, ``laion_coco`` and ``capsfusion``. They stream through
  DuckDB like a parquet table (bounded memory); other columns are kept in
  ``samples.extra``. A missing caption column, or one that is not text, is a one-line
  error;
* upstream's ``example_data.json`` (a JSON array of objects) or JSONL (one object per
  line); which one is told by the first non-blank character (``[`` or ``{``). A JSON
  array is parsed whole, so give very large inputs as JSONL or parquet.

Keys and column names match without regard to case (``Image_URL`` is ``image_url``), in
JSON as in parquet, where DuckDB's names are case-insensitive; an exact match wins. Every
parquet shard is checked on its own; shards whose columns differ are read by name.

Each record becomes one sample and up to three captions (key -> variant, generator):

* ``laion_2b`` -> ``raw``, ``alt-text``
* ``laion_coco`` -> ``synthetic``, ``BLIP (LAION-COCO)``
* ``capsfusion``, or upstream's misspelling ``capsfuion_official`` -> ``fused``,
  ``CapsFusion LLM`` (``capsfusion`` wins when both are present)

The uid: ``sample_uid(source, url=image_url)`` when the record has an image url (trimmed
as table urls are); otherwise (the example file has no urls, and the release could not
pair every caption with one) the record is keyed by its two upstream captions,
``sample_uid(source, record=record_key(laion_2b, laion_coco))``, where the key is the
two captions' MD5 hex digests (``-`` for a missing one) joined by 0x1F. The fused caption
is derived from the other two, so a re-fused release maps onto the same samples. The
same record gives the same uid from JSON, JSONL or parquet (tested).

Rejects, each with a reason: a record that is not an object (``not a JSON object``), a
missing key (``missing key``; the other variants of the record are kept), a caption or
image url that is not a string (``wrong type``), a record with no image url and neither
``laion_2b`` nor ``laion_coco`` (``missing key`` in JSON, ``no url or id`` in parquet:
nothing to key it by), a repeated record (``duplicate row``, or ``duplicate id`` when
the captions differ), and in JSONL a line that is not UTF-8, not JSON or nested more than
:data:`~curate.ingest.jsonrecords.MAX_JSON_DEPTH` levels (``too deeply nested``; a JSON
array nested that deep is an :class:`InputError`). NULL, empty and over-long captions are
rejected by :func:`run_ingest`. Variant names are fixed (``raw``, ``synthetic``,
``fused``), never taken from the data.

"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..ids import SEP, sample_uid, uid_from_record_sql, uid_sql
from ..store import Store, quote_ident
from .core import IngestResult, Prepared, Variant, run_ingest
from .jsonrecords import Collected, _first_char, dump_record, input_file, iter_json_lines, json_type, read_json_document
from .tables import (
    PARQUET_ROW_ORD,
    PARQUET_ROW_REF,
    PARQUET_ROWS_WHERE_ORD,
    TRIM_CODEPOINTS,
    extras_sql,
    input_files,
    is_parquet,
    merged_columns,
    parquet_source,
    url_sql,
)

CAPSFUSION_KEYS = {
    "laion_2b": ("raw", "alt-text"),
    "laion_coco": ("synthetic", "BLIP (LAION-COCO)"),
    "capsfusion": ("fused", "CapsFusion LLM"),
    "capsfuion_official": ("fused", "CapsFusion LLM"),
}
FUSED_KEYS = ("capsfusion", "capsfuion_official")
URL_KEYS = ("image_url",)
_TRIM = "".join(map(chr, TRIM_CODEPOINTS))


def record_key(raw: str | None, synthetic: str | None) -> str:
    """The key of a record without an image url: its two upstream captions' MD5 hex
    digests (``-`` for a missing one), joined by 0x1F. :data:`RECORD_KEY_SQL` is the twin."""
    def h(t: str | None) -> str:
        return "-" if t is None else hashlib.md5(t.encode("utf-8")).hexdigest()
    return f"{h(raw)}{SEP}{h(synthetic)}"


#: SQL twin of :func:`record_key` over two VARCHAR expressions.
RECORD_KEY_SQL = "coalesce(md5({raw}), '-') || chr(31) || coalesce(md5({synthetic}), '-')"


def prepare_capsfusion(store: Store, path: str | Path, source: str) -> Prepared:
    p = Path(path)
    if p.is_dir() or p.suffix.lower() == ".parquet" or is_parquet(p):
        files, fmt = input_files(p, "parquet" if p.is_dir() else None)
        return _prepare_parquet(store, files, source)
    path = input_file(path)
    name = str(path.resolve())
    out = Collected()
    n = 0
    if _first_char(path) == "[":
        records = read_json_document(path)
        for n, rec in enumerate(records, start=1):
            _add_record(out, source, f"{name}:[{n - 1}]", rec)
        input_format = "json array"
    else:
        for line, rec, bad in iter_json_lines(path):
            n += 1
            ref = f"{name}:line {line}"
            if bad:
                out.reject(ref, *bad)
            else:
                _add_record(out, source, ref, rec)
        input_format = "jsonl"
    return out.plan("capsfusion", source, {"input": name, "input_format": input_format}, records_in=n)


def _prepare_parquet(store: Store, files: list[Path], source: str) -> Prepared:
    """The CapsFusion-120M parquet layout, as SQL over the files (streamed, like a table)."""
    con = store.con
    file_list = [str(f.resolve()) for f in files]
    src, schemas = parquet_source(con, files)
    # every shard is checked on its own: a later shard without a caption column, or with
    # one that is not text, is an error naming it (never a silent cast or NULLs)
    for f, schema in schemas.items():
        _capsfusion_columns(f, schema)
    available = merged_columns(schemas)
    cols, url_col = _capsfusion_columns(files[0], available)
    q = {k: quote_ident(c) for k, c in cols.items()}
    url = url_sql(quote_ident(url_col)) if url_col else "NULL::VARCHAR"
    key = RECORD_KEY_SQL.format(raw=q["laion_2b"], synthetic=q["laion_coco"])
    uid = (f"CASE WHEN {url} IS NOT NULL THEN {uid_sql(url)} "
           f"WHEN {q['laion_2b']} IS NOT NULL OR {q['laion_coco']} IS NOT NULL THEN {uid_from_record_sql(key)} END")
    used = {c.lower() for c in (*cols.values(), url_col) if c}
    extra = extras_sql([c for c in available if c.lower() not in used])
    rows_sql = (
        f"SELECT {PARQUET_ROW_REF} AS row_ref, {PARQUET_ROW_ORD} AS row_ord, {uid} AS uid, "
        f"{url}::VARCHAR AS url, NULL::VARCHAR AS image_shard, NULL::VARCHAR AS image_key, NULL::VARCHAR AS image_path, "
        f"NULL::VARCHAR AS sha256, NULL::INTEGER AS width, NULL::INTEGER AS height, {extra} AS extra, "
        f"{q['laion_2b']} AS _raw, {q['laion_coco']} AS _synthetic, {q['capsfusion']} AS _fused FROM {src}"
    )
    variants = [Variant(CAPSFUSION_KEYS[k][0], f"_{CAPSFUSION_KEYS[k][0]}", CAPSFUSION_KEYS[k][1])
                for k in ("laion_2b", "laion_coco", "capsfusion")]
    return Prepared(
        fmt="capsfusion", source=source,
        config={"input": file_list, "input_format": "parquet", "columns": {**cols, "image_url": url_col}},
        rows_sql=rows_sql, variants=variants, params={"files": file_list},
        rows_where_ord=PARQUET_ROWS_WHERE_ORD,
    )


def _capsfusion_columns(f: Path, schema: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """The caption columns (role -> column) and the image url column of one parquet schema,
    matched without regard to case as DuckDB does; a missing or non-text one is an error."""
    lower = {c.lower(): c for c in schema}

    def find(*names: str) -> str | None:
        return next((lower[n] for n in names if n in lower), None)

    cols = {"laion_2b": find("laion_2b"), "laion_coco": find("laion_coco"), "capsfusion": find(*FUSED_KEYS)}
    missing = [k if k != "capsfusion" else "capsfusion (or capsfuion_official)" for k, c in cols.items() if c is None]
    if missing:
        shown = list(schema)[:20]
        more = f" and {len(schema) - 20:,} more" if len(schema) > 20 else ""
        raise InputError(
            f"{f.name}: CapsFusion column(s) {', '.join(missing)} missing; the input has "
            f"{', '.join(shown) or 'no columns'}{more} (for a single caption column use `curate ingest table`)"
        )
    url_col = find(*URL_KEYS)
    for c in [*cols.values(), url_col]:
        if c is not None and schema[c] not in ("VARCHAR", '"NULL"'):  # an all-null column has type NULL
            raise InputError(f"{f.name}: column {c!r} has type {schema[c]}, expected text")
    return cols, url_col  # type: ignore[return-value]


def ingest_capsfusion(store: Store, path: str | Path, source: str | None = None) -> IngestResult:
    """Ingest CapsFusion parquet (the 120M release's layout), a JSON array or JSONL (see the
    module docstring for the mapping)."""
    return run_ingest(store, prepare_capsfusion(store, path, source or Path(path).stem))


def _add_record(out: Collected, source: str, ref: str, rec: Any) -> None:
    if not isinstance(rec, dict):
        out.reject(ref, "not a JSON object", f"expected an object, got {json_type(rec)}", dump_record(rec))
        return
    # keys match without regard to case, as parquet columns do (an exact match wins)
    lower: dict[str, str] = {}
    for k in rec:
        lower.setdefault(k.lower(), k)

    def find(*names: str) -> str | None:
        return next((n for n in names if n in rec), None) or next((lower[n] for n in names if n in lower), None)

    keys = {"laion_2b": find("laion_2b"), "laion_coco": find("laion_coco"), "capsfusion": find(*FUSED_KEYS)}
    url_key = find(*URL_KEYS)
    raw = rec.get(keys["laion_2b"]) if keys["laion_2b"] else None
    synthetic = rec.get(keys["laion_coco"]) if keys["laion_coco"] else None
    fused = rec.get(keys["capsfusion"]) if keys["capsfusion"] else None
    url = rec.get(url_key) if url_key else None
    if url is not None and not isinstance(url, str):
        out.reject(ref, "wrong type", f"{url_key} is {json_type(url)}, expected a string", dump_record(rec))
        return
    url = (url or "").strip(_TRIM) or None  # as url_sql trims a parquet url
    if url is not None:
        uid = str(sample_uid(source, url=url))
    elif isinstance(raw, str) or isinstance(synthetic, str):
        uid = str(sample_uid(source, record=record_key(raw if isinstance(raw, str) else None,
                                                       synthetic if isinstance(synthetic, str) else None)))
    else:
        out.reject(ref, "missing key", "needs image_url, laion_2b or laion_coco (the sample is keyed by them)",
                   dump_record(rec))
        return
    fingerprint = json.dumps([url, raw, synthetic, fused], ensure_ascii=False)
    used = {k for k in (*keys.values(), url_key) if k}
    extra = {k: v for k, v in rec.items() if k not in used}
    if not out.row(ref, uid, fingerprint, url=url, extra=extra or None):
        return
    for role, k in keys.items():
        variant, generator = CAPSFUSION_KEYS[role]
        if k is None:
            shown = "capsfusion or capsfuion_official" if role == "capsfusion" else role
            out.reject(ref, "missing key", f"no {shown} (variant {variant})", dump_record(rec))
            continue
        out.caption(uid, ref, variant, rec[k], generator, None, what=k)
