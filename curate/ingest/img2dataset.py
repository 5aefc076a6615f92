"""img2dataset output folders: downloaded images become samples, every outcome is kept.

An img2dataset output folder holds, per shard ``NNNNN``, the metadata of **every** input
row in ``NNNNN.parquet`` (status ``success``, ``failed_to_download`` or
``failed_to_resize``, with ``error_message``), the shard's counters in
``NNNNN_stats.json`` and the images of the successful rows in one of three layouts:

* ``webdataset``: ``NNNNN.tar`` with members ``{key}.jpg|.txt|.json``;
* ``parquet``: the image bytes in a binary column (``jpg``, the ``encode_format``) of
  ``NNNNN.parquet`` itself;
* ``files``: ``NNNNN/{key}.jpg|.txt|.json``.

Only the parquet files are read for metadata (never the tars). What lands where:

* a ``success`` row becomes a sample. Its image reference is ``image_shard`` = the
  shard's tar (or parquet) and ``image_key`` = the key, or ``image_path`` = the image
  file for ``files``. ``width``/``height`` are ``original_width``/``original_height``,
  the size of the image the URL served (as for LAION's ``WIDTH`` and DataComp's
  ``original_width``); the resized size is in ``downloads``. ``sha256`` is
  img2dataset's hash of the downloaded bytes. The ``caption`` column becomes the
  ``raw`` caption (generator ``alt-text``); other saved columns go to ``extra``; the
  image bytes column and img2dataset's own columns do not.
* **every** row, success or failure, goes to ``downloads`` with its status and
  error message; each shard's ``_stats.json`` to ``download_shards``.
* a success whose uid is already a sample without an image (the URL table was ingested
  first under the same source, or carries DataComp uids) is *linked*: the sample gets
  the image reference, and sha256/width/height where it had none. With DataComp uids the
  URL table may have been ingested under another source name: a sample of another
  source with the same uid *and the same url* is that sample (already present, linked).
  A uid of another url, or of another source's sample without that url, is a ``uid
  conflict`` reject like in every format, and is not linked.

The uid follows :mod:`curate.ids`: a saved ``uid`` column (DataComp) is the uid,
otherwise the hash of source and url. img2dataset's ``key`` is not an identity (a new
download renumbers it). Ingesting the same folder twice adds nothing: samples by uid,
``downloads`` by (source, shard, key), ``download_shards`` by (source, shard).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ..errors import InputError
from ..ids import uid_from_id_sql, uid_sql
from ..names import check_name
from ..store import Store, quote_ident
from .core import MAX_CAPTION_CHARS, IngestResult, Prepared, Variant, _p, run_ingest
from .tables import TableMapping, _check_columns, _check_parquet, _describe, _extras, _row_select

#: Columns img2dataset writes for its own use (main.py reserves these names); they go
#: to ``downloads`` or to sample columns, never to ``samples.extra``. (An ``md5`` or
#: ``sha512`` from ``compute_hash`` has no other home, so it stays in ``extra``.)
OWN_COLUMNS = ("key", "caption", "url", "width", "height", "original_width", "original_height", "status",
               "error_message", "exif", "sha256")
REQUIRED_COLUMNS = ("url", "key", "status", "error_message")
_SHARD = re.compile(r"^(\d+)(\.parquet|\.tar|\.tfrecord|_stats\.json)?$")
_NOT_IMAGE = (".txt", ".json")


@dataclass(frozen=True)
class Shard:
    """One img2dataset shard: its metadata parquet, where its images are, its stats."""

    name: str        # "00000"
    meta: Path       # NNNNN.parquet (every input row)
    layout: str      # webdataset | parquet | files
    data: Path       # the tar, the parquet itself, or the NNNNN/ folder
    stats: str       # NNNNN_stats.json, checked to be a JSON object
    ext: str | None  # image file extension (files layout)


def validate_options(variant: str = "raw", **_: Any) -> None:
    """Rules checked before any work (also by pipelines): the variant names captions and
    becomes a file name, so it must be a name."""
    check_name("caption variant", variant)


def find_shards(folder: str | Path, skip_incomplete: bool = False) -> list[Shard]:
    """The shards of an img2dataset output folder, checked; :class:`InputError` on
    anything that is not complete img2dataset output (nothing is read twice later)."""
    import pyarrow.parquet as pq

    root = Path(folder)
    if not root.exists():
        raise InputError(f"{root} does not exist")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; expected an img2dataset output folder (NNNNN.parquet, NNNNN_stats.json)")
    by_name: dict[str, dict[str, Path]] = {}
    others: list[str] = []
    for entry in sorted(root.iterdir()):
        m = _SHARD.match(entry.name)
        if m and (m.group(2) or entry.is_dir()):
            by_name.setdefault(m.group(1), {})[m.group(2) or "/"] = entry
        elif entry.name != "_tmp":  # img2dataset's work folder
            others.append(entry.name)
    if not by_name:
        if not others:
            raise InputError(f"{root} is empty; expected an img2dataset output folder (NNNNN.parquet, NNNNN_stats.json)")
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise InputError(f"{root} is not img2dataset output: no NNNNN.parquet shard metadata with NNNNN_stats.json "
                         f"(found {shown})")

    shards = []
    for name in sorted(by_name, key=lambda n: (int(n), n)):
        parts = by_name[name]
        meta = parts.get(".parquet")
        if meta is None:
            present = next(iter(parts.values()))
            raise InputError(f"{present.name} has no {name}.parquet beside it: img2dataset writes every shard's "
                             f"metadata there (an unfinished shard, or the file was removed)")
        if "_stats.json" not in parts:
            if skip_incomplete:
                continue
            raise InputError(f"shard {name} has no {name}_stats.json: img2dataset did not finish it; re-run img2dataset "
                             f"on {root} (its incremental mode completes it) or pass skip_incomplete=True")
        stats = _read_stats(parts["_stats.json"])
        _check_parquet(meta)
        schema = pq.read_schema(meta)
        missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
        if missing:
            raise InputError(f"{meta.name} is not img2dataset shard metadata: no column(s) {', '.join(missing)} "
                             f"(it has {', '.join(schema.names)})")
        if ".tfrecord" in parts:
            raise InputError(f"{parts['.tfrecord'].name}: img2dataset's tfrecord output is not supported; "
                             f"download with output_format webdataset, parquet or files")
        ext = None
        if ".tar" in parts:
            layout, data = "webdataset", parts[".tar"]
        elif "/" in parts:
            layout, data = "files", parts["/"]
            ext = _image_ext(data)
            if ext is None and json.loads(stats).get("successes", 0):
                raise InputError(f"{data} holds no image files although {name}_stats.json counts successes")
        elif any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in schema):
            layout, data = "parquet", meta
        elif json.loads(stats).get("successes", 0) == 0:
            # a shard where every download failed: its image folder is empty, and empty
            # folders do not survive git, zip or many copy tools; nothing points into it
            layout, data = "files", root / name
        else:
            raise InputError(f"shard {name} has no images: no {name}.tar, no {name}/ folder and no image column in "
                             f"{meta.name} (output_format dummy?)")
        shards.append(Shard(name, meta.resolve(), layout, data.resolve(), stats, ext))
    if not shards:
        raise InputError(f"{root} holds no finished shard (every shard lacks its _stats.json)")
    return shards


def _read_stats(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
        value = json.loads(text)
    except UnicodeDecodeError:
        raise InputError(f"{path.name} is not UTF-8 text; expected img2dataset's shard stats JSON") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path.name} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                         f"expected img2dataset's shard stats") from None
    if not isinstance(value, dict):
        raise InputError(f"{path.name} holds a JSON {type(value).__name__}, expected an object with count, successes, ...")
    return json.dumps(value)


def _image_ext(folder: Path) -> str | None:
    """The image extension used in a ``files`` shard folder (img2dataset's encode_format)."""
    with os.scandir(folder) as it:
        for e in it:
            suffix = os.path.splitext(e.name)[1]
            if suffix and suffix not in _NOT_IMAGE and e.is_file():
                return suffix.lstrip(".")
    return None


def prepare_img2dataset(store: Store, folder: str | Path, source: str, caption_col: str | None = "caption",
                        uid_col: str | None = "uid", variant: str = "raw", generator: str | None = "alt-text",
                        require_caption: bool = False, skip_incomplete: bool = False,
                        max_caption_chars: int | None = None) -> Prepared:
    """Plan the ingest of an img2dataset output folder (nothing is written here).

    ``caption_col``/``uid_col`` name saved columns; the defaults are used when present
    (no ``caption`` column: samples without captions), a name given otherwise must
    exist; ``None`` ignores the column. ``require_caption=False`` keeps a downloaded
    image whose caption is empty as a sample (its empty caption is still a reject);
    ``True`` drops it like a URL table row. ``skip_incomplete`` skips shards that have
    no ``_stats.json`` (img2dataset did not finish them) instead of failing.
    """
    shards = find_shards(folder, skip_incomplete)
    metas = [str(s.meta) for s in shards]
    table = pa.table({
        "meta": metas,
        "shard": [str(s.data) for s in shards],
        "ord": pa.array(range(len(shards)), pa.int64()),
        "layout": [s.layout for s in shards],
        "ext": pa.array([s.ext for s in shards], pa.string()),
        "stats": [s.stats for s in shards],
    })
    con = store.con
    src = "read_parquet($i2d_files, filename='_i2d_file', file_row_number=true, union_by_name=true)"
    available = _describe(con, f"SELECT * EXCLUDE (_i2d_file, file_row_number) FROM {src}", {"i2d_files": metas})
    mapping = TableMapping(
        url_col="url", caption_col=caption_col, uid_col=uid_col,
        width_col="original_width" if "original_width" in available else "width",
        height_col="original_height" if "original_height" in available else "height",
        sha256_col="sha256" if "sha256" in available else None,
        variant=variant, generator=generator,
        # the default caption/uid columns are used when present; a name given otherwise must exist
        optional=("width_col", "height_col") + tuple(
            role for role, given, default in (("caption_col", caption_col, "caption"), ("uid_col", uid_col, "uid"))
            if given == default),
    )
    resolved = _check_columns(available, mapping, [shards[0].meta])
    images = tuple(c for c, t in available.items() if t == "BLOB")
    extras = _extras(available, resolved, mapping, skip=OWN_COLUMNS + images)

    # Every row of every shard with its shard's facts. The image bytes are never selected,
    # and DuckDB reads only the columns a statement uses.
    kept = ", ".join(f"p.{quote_ident(c)}" for c in available if c not in images)
    base = (
        f"SELECT {kept}, p.file_row_number, s.shard AS _i2d_shard, s.ord AS _i2d_ord, s.layout AS _i2d_layout, "
        f"s.ext AS _i2d_ext FROM {src} AS p JOIN _i2d_shards AS s ON s.meta = p._i2d_file"
    )
    image_shard = "CASE WHEN _i2d_layout = 'files' THEN NULL ELSE _i2d_shard END"
    image_path = "CASE WHEN _i2d_layout = 'files' THEN _i2d_shard || '/' || key || '.' || _i2d_ext END"
    select = _row_select(resolved, extras, row_ref="parse_filename(_i2d_shard) || ':' || key",
                         row_ord="(_i2d_ord << 32) + file_row_number", shard=image_shard, key="key",
                         image_path=image_path)
    rows_sql = select + f" FROM ({base}) WHERE status = 'success'"

    uid_col_in = resolved.get("uid_col")
    uid_expr = uid_from_id_sql(f"{quote_ident(uid_col_in)}::VARCHAR") if uid_col_in else uid_sql("url")

    def col(name: str, cast: str) -> str:
        return f"TRY_CAST({quote_ident(name)} AS {cast})" if name in available else f"NULL::{cast}"

    downloads_sql = (
        f"SELECT {uid_expr} AS uid, url::VARCHAR AS url, _i2d_shard AS shard, key::VARCHAR AS key, "
        f"status::VARCHAR AS status, error_message::VARCHAR AS error_message, "
        + ", ".join(f"{col(c, 'INTEGER')} AS {c}" for c in ("width", "height", "original_width", "original_height"))
        + f", {col('sha256', 'VARCHAR')} AS sha256, {col('exif', 'VARCHAR')} AS exif FROM ({base})"
    )
    params = {"i2d_files": metas}

    def after(con: duckdb.DuckDBPyConnection, run_id: int) -> dict[str, int]:
        return _record_downloads(con, rows_sql, downloads_sql, {"source": source, "run_id": run_id, **params})

    config = {
        "input": str(Path(folder).resolve()), "shards": len(shards),
        "layouts": sorted({s.layout for s in shards}), "caption_col": resolved.get("caption_col"),
        "uid_col": resolved.get("uid_col"), "width": mapping.width_col, "height": mapping.height_col,
        "require_caption": require_caption, "skip_incomplete": skip_incomplete,
    }
    variants = [Variant(variant, "_caption", generator)] if resolved.get("caption_col") else []
    return Prepared(
        fmt="img2dataset", source=source, config=config, rows_sql=rows_sql, variants=variants, params=params,
        require_caption=require_caption and bool(variants), register={"_i2d_shards": table}, after=after,
        max_caption_chars=max_caption_chars or MAX_CAPTION_CHARS, same_url_links_sources=True,
    )


def _record_downloads(con: duckdb.DuckDBPyConnection, rows_sql: str, downloads_sql: str,
                      params: dict[str, Any]) -> dict[str, int]:
    """Inside the ingest transaction: outcomes, shard stats, then links to existing samples.

    Returns counts of what this run added: ``downloads`` (outcome rows), ``failed
    downloads`` (of them), ``shards`` (stats rows) and ``linked`` samples."""

    def run(sql: str) -> duckdb.DuckDBPyConnection:
        return con.execute(sql, _p(params, sql))

    run(f"""
        INSERT INTO downloads (uid, source, url, shard, key, status, error_message, width, height,
                               original_width, original_height, sha256, exif, run_id)
        SELECT d.uid, $source, d.url, d.shard, d.key, d.status, d.error_message, d.width, d.height,
               d.original_width, d.original_height, d.sha256, d.exif, $run_id
        FROM ({downloads_sql}) AS d
        ANTI JOIN (SELECT shard, key FROM downloads WHERE source = $source) AS x USING (shard, key)
    """)
    ok, failed = run("SELECT count(*) FILTER (status = 'success'), count(*) FILTER (status IS DISTINCT FROM 'success') "
                     "FROM downloads WHERE run_id = $run_id").fetchall()[0]
    shards = run("""
        INSERT INTO download_shards (source, shard, stats, run_id)
        SELECT $source, s.shard, s.stats::JSON, $run_id FROM _i2d_shards AS s
        ANTI JOIN (SELECT shard FROM download_shards WHERE source = $source) AS x USING (shard)
    """).fetchall()[0][0]
    # A sample that exists without an image (its URL table came first) gets this download's
    # image; the first success by input order wins when a uid repeats. Values the sample
    # already has (sha256, size from the URL table) are kept. Rows run_ingest rejected
    # (_in_drop: a uid conflict, a repeated uid) link nothing.
    linked = run(f"""
        UPDATE samples AS s SET image_shard = r.image_shard, image_key = r.image_key, image_path = r.image_path,
               sha256 = coalesce(s.sha256, r.sha256), width = coalesce(s.width, r.width),
               height = coalesce(s.height, r.height)
        FROM (SELECT DISTINCT ON (uid) uid, image_shard, image_key, image_path, sha256, width, height
              FROM ({rows_sql}) AS x ANTI JOIN _in_drop USING (row_ord) ORDER BY uid, row_ord) AS r
        WHERE s.uid = r.uid AND s.image_shard IS NULL AND s.image_path IS NULL
    """).fetchall()[0][0]
    return {"linked": linked, "downloads": ok + failed, "failed downloads": failed, "shards": shards}


def ingest_img2dataset(store: Store, folder: str | Path, source: str | None = None, caption_col: str | None = "caption",
                       uid_col: str | None = "uid", variant: str = "raw", generator: str | None = "alt-text",
                       require_caption: bool = False, skip_incomplete: bool = False,
                       max_caption_chars: int | None = None) -> IngestResult:
    """Ingest an img2dataset output folder (see the module docstring); ``source``
    defaults to the folder's name. Use the source name of the URL table the download
    was made from, so that its samples are linked rather than added again (with
    DataComp-style ``uid`` columns the uid alone links them)."""
    source = source or Path(folder).resolve().name
    plan = prepare_img2dataset(store, folder, source, caption_col=caption_col, uid_col=uid_col, variant=variant,
                               generator=generator, require_caption=require_caption,
                               skip_incomplete=skip_incomplete, max_caption_chars=max_caption_chars)
    return run_ingest(store, plan)


__all__ = ["Shard", "find_shards", "ingest_img2dataset", "prepare_img2dataset"]
