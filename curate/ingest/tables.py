"""URL/caption tables: parquet, CSV, TSV (with or without header) and JSONL.

Column mapping uses img2dataset's vocabulary (``url_col``, ``caption_col``); every
other input column is kept in ``samples.extra`` (JSON) unless ``extra_cols`` narrows
it. Presets name the mapping of well-known sources:

* ``laion``: ``URL`` / ``TEXT`` (``WIDTH``/``HEIGHT`` become width/height when present)
* ``datacomp``: ``uid`` / ``url`` / ``text``, the ``uid`` is the sample's uid, score
  columns (``clip_b32_similarity_score``...) kept in ``extra``, ``sha256`` and
  ``original_width``/``original_height`` mapped
* ``cc3m``: TSV without header, caption TAB url

Parquet streams through DuckDB; CSV/TSV are parsed by DuckDB with quoting off for TSV
(CC3M captions contain quote characters) and lines that cannot be read (invalid UTF-8,
wrong number of fields) become rejects, one per line; JSONL is split into lines in Python
so each malformed line is rejected with its exact line number.

Row references: ``file:line N`` for CSV, TSV and JSONL, the 1-based line of the file the
record starts on (the header is line 1), and ``file:row N`` for parquet, the 1-based row
of the file. A CSV/TSV row's line is the header plus its row number when the file has
exactly one line per record; otherwise (quoted newlines, blank lines, rejected lines)
the lines are counted in Python. Should that count not match DuckDB's records (quoting
DuckDB and Python's ``csv`` read differently), the file's rows are ``file:record N``
(1-based, header not counted) instead, never a wrong line.
"""

from __future__ import annotations

import csv
import json
from array import array
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ..errors import ConfigError, InputError
from ..names import check_name
from ..store import Store, quote_ident
from .core import MAX_CAPTION_CHARS, Prepared, Variant, run_ingest
from .jsonrecords import iter_text_lines

TABLE_FORMATS = ("parquet", "csv", "tsv", "jsonl")
#: Columns pandas or writers leave behind that carry no data.
JUNK_COLUMNS = ("__index_level_0__",)


@dataclass(frozen=True)
class TableMapping:
    url_col: str | None = "url"
    caption_col: str | None = "caption"
    uid_col: str | None = None
    width_col: str | None = None
    height_col: str | None = None
    sha256_col: str | None = None
    variant: str = "raw"
    generator: str | None = "alt-text"
    extra_cols: tuple[str, ...] | None = None  # None: every unmapped column
    #: columns about the caption, not the sample (a captioner's prompt, its model, a
    #: score): kept in the caption's provenance, not in samples.extra
    caption_cols: tuple[str, ...] = ()
    input_format: str | None = None  # inferred from the file name
    header: bool = True
    optional: tuple[str, ...] = ()  # mapped columns that may be absent (presets)


PRESETS: dict[str, TableMapping] = {
    "laion": TableMapping(url_col="URL", caption_col="TEXT", width_col="WIDTH", height_col="HEIGHT",
                          optional=("width_col", "height_col")),
    "datacomp": TableMapping(url_col="url", caption_col="text", uid_col="uid", sha256_col="sha256",
                             width_col="original_width", height_col="original_height",
                             optional=("sha256_col", "width_col", "height_col")),
    "cc3m": TableMapping(url_col="column1", caption_col="column0", input_format="tsv", header=False),
    "img2dataset": TableMapping(url_col="url", caption_col="caption"),
}


def resolve_mapping(preset: str | None = None, **overrides: Any) -> TableMapping:
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset else TableMapping()
    kw = {k: v for k, v in overrides.items() if v is not None}
    for key in ("extra_cols", "caption_cols"):
        if key in kw and isinstance(kw[key], (list, str)):
            kw[key] = tuple(c for c in kw[key].split(",") if c) if isinstance(kw[key], str) else tuple(kw[key])
    if kw.get("input_format") and kw["input_format"] not in TABLE_FORMATS:
        raise ConfigError(f"unknown input format {kw['input_format']!r}; choose one of {', '.join(TABLE_FORMATS)}")
    if "variant" in kw:  # it names captions and becomes a file name (manifests, reports)
        check_name("caption variant", kw["variant"])
    # a column named explicitly is required even when the preset marks it optional
    optional = tuple(o for o in base.optional if o not in kw)
    return replace(base, **kw, optional=optional)


def input_files(path: str | Path, fmt: str | None) -> tuple[list[Path], str]:
    p = Path(path)
    if p.is_dir():
        if fmt is None:
            for f in TABLE_FORMATS:
                if sorted(p.glob(f"*.{f}")):
                    fmt = f
                    break
            else:
                raise InputError(f"{p} holds no .parquet, .csv, .tsv or .jsonl files")
        files = sorted(p.glob(f"*.{fmt}"))
        if not files:
            raise InputError(f"{p} holds no .{fmt} files")
        return files, fmt
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    if fmt is None:
        suffix = p.suffix.lower().lstrip(".")
        fmt = {"txt": "tsv", "json": "jsonl", "ndjson": "jsonl"}.get(suffix, suffix)
        if is_parquet(p):  # parquet under another name (its bytes read as text would be junk rejects)
            fmt = "parquet"
        if fmt not in TABLE_FORMATS:
            raise InputError(f"cannot tell the format of {p.name}; pass --input-format ({', '.join(TABLE_FORMATS)})")
    return [p], fmt


def ingest_table(store: Store, path: str | Path, source: str | None = None, mapping: TableMapping | None = None,
                 **kw: Any) -> Any:
    """Ingest a URL/caption table (a file or a folder of files of one format)."""
    mapping = mapping or TableMapping()
    files, fmt = input_files(path, mapping.input_format)
    source = source or Path(path).stem
    plan = prepare_table(store, files, fmt, source, mapping, **kw)
    return run_ingest(store, plan)


def _check_columns(available: dict[str, str], mapping: TableMapping, files: list[Path]) -> dict[str, str | None]:
    """Map role -> input column, failing on a missing mapped column or a wrong type."""
    roles = {
        "url_col": mapping.url_col, "caption_col": mapping.caption_col, "uid_col": mapping.uid_col,
        "width_col": mapping.width_col, "height_col": mapping.height_col, "sha256_col": mapping.sha256_col,
    }
    resolved: dict[str, str | None] = {}
    for role, col in roles.items():
        if col is None:
            resolved[role] = None
            continue
        if col not in available:
            # No exact match: take the column that differs only in case (`url` for `URL`).
            # DuckDB's names are case-insensitive and it renames a second `url`/`URL`
            # column of one file to `URL_1`, so there is at most one.
            folded = [c for c in available if c.lower() == col.lower()]
            if folded:
                resolved[role] = folded[0]
                continue
            flag = "--" + role.replace("_", "-")
            if role in mapping.optional:
                resolved[role] = None
                continue
            raise InputError(
                f"{files[0].name}: column {col!r} (the {role.replace('_col', '')} column) is missing; "
                f"the input has {', '.join(available) or 'no columns'}; map another with {flag}"
            )
        resolved[role] = col
    text_roles = ("url_col", "caption_col", "uid_col", "sha256_col")
    for role in text_roles:
        col = resolved.get(role)
        if col is not None and available[col] not in ("VARCHAR", "JSON") and not (role == "uid_col" and _is_int(available[col])):
            raise InputError(
                f"{files[0].name}: column {col!r} (the {role.replace('_col', '')} column) has type {available[col]}, expected text"
            )
    for role in ("width_col", "height_col"):
        col = resolved.get(role)
        if col is not None and not _is_int(available[col]) and available[col] not in ("DOUBLE", "FLOAT", "VARCHAR"):
            raise InputError(f"{files[0].name}: column {col!r} has type {available[col]}, expected an integer")
    return resolved


def _is_int(t: str) -> bool:
    return t in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")


def _extras(available: dict[str, str], resolved: dict[str, str | None], mapping: TableMapping,
            skip: tuple[str, ...] = ()) -> list[str]:
    missing = [c for c in mapping.caption_cols if c not in available]
    if missing:
        raise InputError(f"caption column(s) {', '.join(missing)} not in the input ({', '.join(available)})")
    mapped = {c for c in resolved.values() if c} | set(mapping.caption_cols)
    if mapping.extra_cols is not None:
        missing = [c for c in mapping.extra_cols if c not in available]
        if missing:
            raise InputError(f"extra column(s) {', '.join(missing)} not in the input ({', '.join(available)})")
        return [c for c in mapping.extra_cols if c not in mapped]
    return [c for c in available if c not in mapped and c not in JUNK_COLUMNS and c not in skip]


#: The characters DuckDB's ``trim()`` removes: Unicode category Zs (found by testing every
#: BMP code point; tests/test_ingest_tables.py checks the list against trim itself).
TRIM_CODEPOINTS = (0x20, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000)


def url_sql(expr: str) -> str:
    """A url column as stored: trimmed, and NULL when empty. ``trim()`` runs only when the
    first or last character is one it removes; the result is that of
    ``nullif(trim(x), '')``, and the uid pass over a 2M-row parquet takes 0.44 s instead
    of 0.63 s (benchmarks/RESULTS.md)."""
    zs = ", ".join(str(c) for c in TRIM_CODEPOINTS)
    x = f"(({expr})::VARCHAR)"
    return f"nullif(CASE WHEN unicode({x}) IN ({zs}) OR unicode({x}[-1]) IN ({zs}) THEN trim({x}) ELSE {x} END, '')"


def caption_provenance_sql(caption_col: str | None, caption_cols: tuple[str, ...] = (), row_ref: str = "row_ref") -> str:
    """The provenance of a table caption: the input record it came from (``file:line N``
    or ``file:row N``), the column, and the values of the ``caption_cols``."""
    parts = [f"'record', {row_ref}", f"'column', {_sql_str(caption_col or '')}"]
    parts += [f"{_sql_str(c)}, {quote_ident(c)}" for c in caption_cols]
    return "json_object(" + ", ".join(parts) + ")"


def _row_select(resolved: dict[str, str | None], extras: list[str], row_ref: str, row_ord: str,
                shard: str = "NULL", key: str = "NULL", image_path: str = "NULL",
                caption_cols: tuple[str, ...] = ()) -> str:
    from ..ids import uid_from_id_sql, uid_sql

    def col(role: str) -> str | None:
        c = resolved.get(role)
        return quote_ident(c) if c else None

    url_col = col("url_col")
    url = url_sql(url_col) if url_col else None
    if col("uid_col"):
        uid = uid_from_id_sql(f"{col('uid_col')}::VARCHAR")
    elif url:
        uid = uid_sql(url)
    else:
        raise InputError("a table needs a url column or an id column to key its samples")
    width = f"TRY_CAST({col('width_col')} AS INTEGER)" if col("width_col") else "NULL::INTEGER"
    height = f"TRY_CAST({col('height_col')} AS INTEGER)" if col("height_col") else "NULL::INTEGER"
    sha = f"{col('sha256_col')}::VARCHAR" if col("sha256_col") else "NULL::VARCHAR"
    extra = extras_sql(extras)
    caption = f"{col('caption_col')}::VARCHAR" if col("caption_col") else "NULL::VARCHAR"
    return (
        f"SELECT {row_ref} AS row_ref, {row_ord} AS row_ord, {uid} AS uid, {url or 'NULL'}::VARCHAR AS url, "
        f"{shard}::VARCHAR AS image_shard, {key}::VARCHAR AS image_key, ({image_path})::VARCHAR AS image_path, "
        f"{sha} AS sha256, {width} AS width, {height} AS height, {extra} AS extra, {caption} AS _caption, "
        f"{caption_provenance_sql(resolved.get('caption_col'), caption_cols, row_ref)} AS _caption_prov"
    )


def prepare_table(store: Store, files: list[Path], fmt: str, source: str, mapping: TableMapping,
                  max_caption_chars: int | None = None) -> Prepared:
    con = store.con
    file_list = [str(f.resolve()) for f in files]
    config = {"input": file_list, "input_format": fmt, "mapping": {k: v for k, v in mapping.__dict__.items()}}
    reader_rejects = None
    rows_where_ord = None
    register: dict[str, Any] = {}
    if fmt == "parquet":
        src, schemas = parquet_source(con, files)
        # every file must satisfy the mapping on its own (a later shard with a missing or
        # mistyped column is an error naming it, not a silent cast or a dropped column)
        for f, schema in schemas.items():
            _check_columns(schema, mapping, [f])
        available = merged_columns(schemas)
        resolved = _check_columns(available, mapping, files)
        extras = _extras(available, resolved, mapping)
        rows_sql = (_row_select(resolved, extras, PARQUET_ROW_REF, PARQUET_ROW_ORD, caption_cols=mapping.caption_cols)
                    + f" FROM {src}")
        rows_where_ord = PARQUET_ROWS_WHERE_ORD
    elif fmt in ("csv", "tsv"):
        delim = "\t" if fmt == "tsv" else ","
        quote = "''" if fmt == "tsv" else "'\"'"
        opts = (f"delim='{delim}', header={str(mapping.header).lower()}, all_varchar=true, quote={quote}, escape={quote}, "
                f"filename=true, store_rejects=true, rejects_table='_curate_csv_rejects', rejects_scan='_curate_csv_scans', "
                f"null_padding=false, strict_mode=true, max_line_size={MAX_CSV_LINE}")
        con.execute("DROP TABLE IF EXISTS _curate_csv_rejects")
        con.execute("DROP TABLE IF EXISTS _curate_csv_scans")
        probe = f"SELECT * EXCLUDE (filename) FROM read_csv($files, {opts}) LIMIT 0"
        available = _describe(con, probe, {"files": file_list}, files, fmt)
        resolved = _check_columns(available, mapping, files)
        extras = _extras(available, resolved, mapping)
        # parse once into a temp table (spills to the store's tmp/ when large)
        name = "_curate_csv_in"
        con.execute(f"DROP TABLE IF EXISTS {name}")
        con.execute("DROP TABLE IF EXISTS _curate_csv_rejects")
        # The temp table keeps the file's order (DuckDB preserves insertion order), so its
        # rowid is the input order; each file's rows are contiguous and numbered from its
        # first rowid. (A row_number() window without ORDER BY numbered rows differently
        # run to run on a parallel read of a large file: a different duplicate was kept,
        # reject rows pointed at other lines, and a re-ingest added captions.)
        try:
            con.execute(
                f"CREATE TEMP TABLE {name} AS SELECT *, list_position($files, filename)::BIGINT AS _file "
                f"FROM read_csv($files, {opts})",
                {"files": file_list},
            )
        except duckdb.Error as e:
            raise _read_error(e, files, fmt) from None
        has_rej = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = '_curate_csv_rejects'"
        ).fetchall()[0][0]
        # DuckDB's rejects, one per line (a line with too many fields gets one per extra
        # field): the last error of the line, which names the whole field count
        con.execute("CREATE OR REPLACE TEMP TABLE _curate_csv_rej (file_path VARCHAR, _file BIGINT, line BIGINT, "
                    "error_type VARCHAR, error_message VARCHAR, csv_line VARCHAR)")
        if has_rej:
            con.execute("""
                INSERT INTO _curate_csv_rej
                SELECT s.file_path, list_position($files, s.file_path)::BIGINT, r.line,
                       arg_max(r.error_type::VARCHAR, r.column_idx), arg_max(r.error_message, r.column_idx),
                       arg_max(r.csv_line, r.column_idx)
                FROM _curate_csv_rejects r JOIN _curate_csv_scans s USING (scan_id, file_id)
                GROUP BY ALL
            """, {"files": file_list})
            # After a quote that never closes DuckDB records one reject and reads no more of
            # that file: the rest would be lost in silence, so it is an error, with the line.
            lost = con.execute("SELECT file_path FROM _curate_csv_rej WHERE error_message ILIKE '%unterminated quote%' "
                               "LIMIT 1").fetchall()
            if lost:
                f = Path(lost[0][0])
                raise InputError((_csv_problem(f, fmt) or f"{f.name}: a quoted field is never closed")
                                 + "; nothing was written")
        first, line_map = _csv_lines(con, name, files, fmt, mapping.header)
        k = "(t.rowid - f._first + 1)"
        line = f"coalesce(m.line, {k} + f._hdr)" if line_map else f"{k} + f._hdr"
        row_ref = (f"parse_filename(t.filename) || CASE WHEN f._by_record THEN ':record ' || {k} "
                   f"ELSE ':line ' || {line} END")
        row_ord = f"(t._file << 40) + {k}"
        rows_sql = (_row_select(resolved, extras, row_ref, row_ord, caption_cols=mapping.caption_cols)
                    + f" FROM {name} AS t JOIN {first} AS f ON f._file = t._file"
                    + (f" LEFT JOIN {line_map} AS m ON m._file = t._file AND m.k = {k}" if line_map else ""))
        if has_rej:
            reader_rejects = (
                "SELECT parse_filename(r.file_path) || ':line ' || coalesce(m.line, r.line) AS row_ref, "
                "CASE r.error_type WHEN 'INVALID ENCODING' THEN 'not UTF-8' ELSE lower(r.error_type) END AS reason, "
                "r.error_message AS detail, r.csv_line AS record, true AS whole "
                "FROM _curate_csv_rej AS r LEFT JOIN _curate_csv_rejmap AS m ON m._file = r._file AND m.dline = r.line"
            )
    elif fmt == "jsonl":
        # Lines stream into a temp table (Python holds one chunk; DuckDB spills to the
        # store's tmp/ beyond memory_limit). The JSON is parsed three times (keys, per
        # chunk; the columns the ingest reads; the rejects), not once per pass of run_ingest.
        keys = _load_jsonl(con, files)
        if not keys:
            lines = con.execute("SELECT (SELECT count(*) FROM _curate_jsonl_in), "
                                "(SELECT count(*) FROM _curate_jsonl_bad)").fetchall()[0]
            what = ", ".join(f.name for f in files)
            if not sum(lines):
                raise InputError(f"{what}: no lines to read; nothing was written")
            raise InputError(f"{what}: no line is a JSON object with keys ({lines[0]:,} UTF-8 lines, "
                             f"{lines[1]:,} not UTF-8); nothing was written")
        available = {k: "VARCHAR" for k in keys}
        resolved = _check_columns(available, mapping, files)
        extras_cols = _extras(available, resolved, mapping)
        # values are extracted as text; a caption or url that is not a JSON string (a
        # number, true/false, an object or a list), or an id that is neither a string nor
        # an integer, is a reject, not a silent cast
        sel = []
        for c in [*resolved.values(), *mapping.caption_cols]:
            if c:
                sel.append(f"j->>{_json_ptr(c)} AS {quote_ident(c)}")
        allowed = {"url_col": "('VARCHAR', 'NULL')", "caption_col": "('VARCHAR', 'NULL')",
                   "uid_col": "('VARCHAR', 'BIGINT', 'UBIGINT', 'NULL')"}
        bad_type = " OR ".join(f"coalesce(json_type(j->{_json_ptr(c)}), 'NULL') NOT IN {allowed[r]}"
                               for r, c in resolved.items() if c and r in allowed) or "false"
        mapped_null = json.dumps({c: None for c in [*resolved.values(), *mapping.caption_cols] if c}, ensure_ascii=False)
        if mapping.extra_cols is not None:
            extra_expr = ("json_object(" + ", ".join(f"{_sql_str(e)}, j->{_json_ptr(e)}" for e in extras_cols) + ")"
                          if extras_cols else "NULL::JSON")
        else:
            extra_expr = f"nullif(json_merge_patch(j, {_sql_str(mapped_null)}), '{{}}')::JSON"
        parsed = "(SELECT file, line, text, try(json(text)) AS j FROM _curate_jsonl_in)"
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _curate_jsonl_rows AS "
            f"SELECT file, line, {', '.join(sel)}{', ' if sel else ''}{extra_expr} AS _extra "
            f"FROM {parsed} WHERE j IS NOT NULL AND json_type(j) = 'OBJECT' AND NOT ({bad_type})"
        )
        con.execute(
            "INSERT INTO _curate_jsonl_bad "
            "SELECT file, line, "
            "CASE WHEN j IS NULL THEN 'malformed JSON' "
            "WHEN json_type(j) <> 'OBJECT' THEN 'not a JSON object' ELSE 'wrong type' END, "
            "CASE WHEN j IS NULL THEN 'line is not valid JSON' "
            "WHEN json_type(j) <> 'OBJECT' THEN 'expected an object, got ' || json_type(j) "
            "ELSE 'a mapped field is not text (caption and url must be JSON strings, an id a string or integer)' "
            f"END, text FROM {parsed} WHERE j IS NULL OR json_type(j) <> 'OBJECT' OR ({bad_type})"
        )
        con.execute("DROP TABLE _curate_jsonl_in")
        rows_sql = _row_select(resolved, [], "parse_filename(file) || ':line ' || line",
                               "(list_position($files, file)::BIGINT << 40) + line", caption_cols=mapping.caption_cols)
        rows_sql = rows_sql.replace("NULL::JSON AS extra", "_extra AS extra") + " FROM _curate_jsonl_rows"
        reader_rejects = (
            "SELECT parse_filename(file) || ':line ' || line AS row_ref, reason, detail, text AS record, true AS whole "
            "FROM _curate_jsonl_bad"
        )
    else:
        raise ConfigError(f"unknown table format {fmt!r}; choose one of {', '.join(TABLE_FORMATS)}")
    variants = ([Variant(mapping.variant, "_caption", mapping.generator, provenance_sql="_caption_prov")]
                if resolved.get("caption_col") else [])
    return Prepared(
        fmt="table", source=source, config=config, rows_sql=rows_sql, variants=variants,
        reader_rejects_sql=reader_rejects, params={"files": file_list}, register=register,
        require_caption=bool(variants), rows_where_ord=rows_where_ord,
        max_caption_chars=max_caption_chars or MAX_CAPTION_CHARS,
    )


def _describe(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any], files: list[Path] | None = None,
              fmt: str | None = None) -> dict[str, str]:
    try:
        rows = con.execute(f"DESCRIBE {sql}", params).fetchall()
    except duckdb.Error as e:
        raise _read_error(e, files, fmt) from None
    return {r[0]: r[1] for r in rows}


def _read_error(e: Exception, files: list[Path] | None = None, fmt: str | None = None) -> InputError:
    """One line for a reader error. For CSV/TSV the file itself is examined first (an
    unclosed quote, a line over ``max_line_size``; DuckDB's message for both lists every
    fix it can think of, "max_line_size" among them, whatever the cause), so the
    message names the real cause and its line. Otherwise DuckDB's first line, without
    its list of possible fixes."""
    if fmt in ("csv", "tsv"):
        for f in files or []:
            problem = _csv_problem(f, fmt)
            if problem:
                return InputError(problem + "; nothing was written")
    msg = str(e).split("Possible fixes:")[0].split("\n\n")[0]
    return InputError(f"cannot read the input: {' '.join(msg.split())[:300]}")


def _csv_problem(path: Path, fmt: str) -> str | None:
    """What makes a CSV/TSV file unreadable, with its 1-based line, or None: a quote that
    opens a field and never closes (CSV), or a line longer than :data:`MAX_CSV_LINE`."""
    if fmt == "csv":
        old = csv.field_size_limit(MAX_CSV_LINE)
        try:
            with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
                reader = csv.reader(fh, strict=True)
                start = 1
                while True:
                    start = reader.line_num + 1
                    try:
                        next(reader)
                    except StopIteration:
                        break
                    except csv.Error as e:
                        if "unexpected end of data" in str(e):
                            return (f"{path.name} line {start}: a quoted field opens on this line and is never closed "
                                    "(the rest of the file would be one value); close it, and double any quote "
                                    'inside a quoted field ("")')
                        if "field larger than field limit" in str(e):
                            return (f"{path.name} line {start}: a field longer than {MAX_CSV_LINE // 2**20} MB starts "
                                    "on this line (a quote that is never closed?)")
                        # a stray quote inside a field: DuckDB rejects that line, read on
        finally:
            csv.field_size_limit(old)
    with open(path, "rb") as fb:
        n = 0
        while True:
            chunk = fb.readline(MAX_CSV_LINE + 2)
            if not chunk:
                return None
            n += 1
            if len(chunk.rstrip(b"\r\n")) > MAX_CSV_LINE:
                return (f"{path.name} line {n} is longer than {MAX_CSV_LINE // 2**20} MB, the most curate reads from "
                        "one CSV/TSV line; split or fix that line")
            while not chunk.endswith(b"\n"):  # the rest of a long line
                chunk = fb.readline(MAX_CSV_LINE)
                if not chunk:
                    return None


def _csv_lines(con: duckdb.DuckDBPyConnection, table: str, files: list[Path], fmt: str,
               header: bool) -> tuple[str, str | None]:
    """The 1-based line each CSV/TSV row starts on. Creates ``_curate_csv_first`` (per
    file: first rowid, header lines, whether rows are numbered by record instead), and,
    for files that are not one line per record, ``_curate_csv_lines (_file, k, line)``
    for their rows and ``_curate_csv_rejmap (_file, dline, line)`` for their rejects
    (DuckDB numbers a rejected line by records and blank lines, not by lines).
    Returns the first table's name and the second's, or None when no file needs it."""
    hdr = 1 if header else 0
    con.execute(f"CREATE OR REPLACE TEMP TABLE _curate_csv_first AS SELECT _file, min(rowid) AS _first, "
                f"count(*) AS _n, {hdr} AS _hdr, false AS _by_record FROM {table} GROUP BY _file")
    con.execute("CREATE OR REPLACE TEMP TABLE _curate_csv_rejmap (_file BIGINT, dline BIGINT, line BIGINT)")
    rows = dict(con.execute("SELECT _file, _n FROM _curate_csv_first").fetchall())
    rejected: dict[int, list[int]] = {}
    for i, line in con.execute("SELECT _file, line FROM _curate_csv_rej ORDER BY 1, 2").fetchall():
        rejected.setdefault(i, []).append(line)
    import numpy as np

    parts: list[pa.Table] = []
    rejparts: list[pa.Table] = []
    by_record = []
    for i, f in enumerate(files, start=1):
        n, rej = rows.get(i, 0), rejected.get(i, [])
        if not rej and _physical_lines(f) == hdr + n:
            continue  # one line per record: the line is the header plus the row number
        found = _record_starts(f, fmt, header, set(rej))
        if found is None or len(found[0]) != n or len(found[1]) != len(set(rej)):
            by_record.append(i)
            continue
        starts, rejmap = found
        parts.append(pa.table({"_file": np.full(n, i, np.int64), "k": np.arange(1, n + 1, dtype=np.int64),
                               "line": np.frombuffer(starts, np.int64) if n else np.zeros(0, np.int64)}))
        rejparts.append(pa.table({"_file": pa.array([i] * len(rejmap), pa.int64()),
                                  "dline": pa.array(list(rejmap), pa.int64()),
                                  "line": pa.array(list(rejmap.values()), pa.int64())}))
    if by_record:
        con.execute("UPDATE _curate_csv_first SET _by_record = true WHERE list_contains(?, _file)", [by_record])
    if not parts:
        return "_curate_csv_first", None
    for target, tables in (("_curate_csv_lines", parts), ("_curate_csv_rejmap", rejparts)):
        con.register("_curate_csv_map_in", pa.concat_tables(tables))
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {target} AS SELECT * FROM _curate_csv_map_in")
        finally:
            con.unregister("_curate_csv_map_in")
    return "_curate_csv_first", "_curate_csv_lines"


def _physical_lines(path: Path) -> int:
    """Lines of a file: its newline bytes, plus one for a last line without one."""
    n, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def _record_starts(path: Path, fmt: str, header: bool, rejected: set[int]) -> tuple[array[int], dict[int, int]] | None:
    """Read a CSV/TSV file's records as DuckDB does (blank lines skipped, TSV unquoted) and
    return the start line of each data row, in order, and for each rejected record
    (numbered as DuckDB numbers it: records and blank lines so far) its start line.
    None when the file does not read as records here."""
    starts: array[int] = array("q")
    rejmap: dict[int, int] = {}
    seen = 0  # records and blank lines so far, DuckDB's numbering of a rejected line
    need_header = header
    old = csv.field_size_limit(MAX_CSV_LINE)
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            if fmt == "tsv":
                reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            else:
                reader = csv.reader(fh)
            while True:
                start = reader.line_num + 1
                try:
                    record = next(reader)
                except StopIteration:
                    break
                seen += 1
                if not record:
                    continue
                if need_header:
                    need_header = False
                elif seen in rejected:
                    rejmap[seen] = start
                else:
                    starts.append(start)
    except (csv.Error, OSError):
        return None
    finally:
        csv.field_size_limit(old)
    return starts, rejmap


#: A parquet row's reference (its 1-based row in the file), its order key (file index in
#: the high bits) and the filter that reads back given rows by their number inside their
#: file (a superset across files; rows are then matched on row_ord), over
#: ``read_parquet(..., filename, file_row_number)``.
PARQUET_ROW_REF = "parse_filename(filename) || ':row ' || (file_row_number + 1)"
PARQUET_ROW_ORD = "(list_position($files, filename)::BIGINT << 40) + file_row_number"
PARQUET_ROWS_WHERE_ORD = "file_row_number IN (SELECT row_ord & ((1::BIGINT << 40) - 1) FROM ({ords}))"


def is_parquet(path: Path) -> bool:
    """A file that starts and ends with parquet's magic bytes."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PAR1":
                return False
            fh.seek(-4, 2)
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


def parquet_source(con: duckdb.DuckDBPyConnection, files: list[Path]) -> tuple[str, dict[Path, dict[str, str]]]:
    """Check every parquet file and read its schema; return the ``read_parquet`` source to
    use (by column name across files when their schemas differ) and each file's columns."""
    schemas: dict[Path, dict[str, str]] = {}
    for f in files:
        _check_parquet(f)
        cols = _describe(con, "SELECT * FROM read_parquet($f)", {"f": str(f.resolve())})
        taken = [c for c in cols if c.lower() in ("filename", "file_row_number")]
        if taken:
            raise InputError(f"{f.name}: a column is named {taken[0]!r}, which curate's parquet reader uses for the row "
                             "reference; rename it (e.g. with duckdb COPY ... TO) and ingest again")
        schemas[f] = cols
    union = len({tuple((c.lower(), t) for c, t in s.items()) for s in schemas.values()}) > 1
    src = f"read_parquet($files, filename=true, file_row_number=true{', union_by_name=true' if union else ''})"
    return src, schemas


def merged_columns(schemas: dict[Path, dict[str, str]]) -> dict[str, str]:
    """Every file's columns, once each, in order of first appearance; names that differ only
    in case are one column, as DuckDB reads them."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for schema in schemas.values():
        for c, t in schema.items():
            if c.lower() not in seen:
                seen.add(c.lower())
                out[c] = t
    return out


def _check_parquet(path: Path) -> None:
    """A truncated or corrupt parquet file fails here with a one-line error, before any write."""
    import pyarrow.parquet as pq

    try:
        _ = pq.ParquetFile(path).metadata
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise InputError(f"{path.name} is not a readable parquet file (truncated or corrupt?): {str(e).splitlines()[0]}") from None


JSONL_CHUNK = 50_000
JSONL_CHUNK_CHARS = 16_000_000
#: longest CSV/TSV line read (DuckDB's default is 2 MB); a longer caption than
#: max_caption_chars still becomes a reject, a longer line fails the file with its number
MAX_CSV_LINE = 32 * 2**20


def extras_sql(columns: list[str]) -> str:
    """The input columns kept in ``samples.extra``, as a JSON object expression."""
    if not columns:
        return "NULL::JSON"
    return "json_object(" + ", ".join(f"{_sql_str(c)}, {quote_ident(c)}" for c in columns) + ")"


def _sql_str(s: str) -> str:
    """``s`` as a SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def _json_ptr(key: str) -> str:
    """A JSON Pointer to a top-level key, as a SQL literal: any key, quotes and dots included."""
    return _sql_str("/" + key.replace("~", "~0").replace("/", "~1"))


def _load_jsonl(con: duckdb.DuckDBPyConnection, files: list[Path]) -> list[str]:
    """Stream JSONL files into the temp tables ``_curate_jsonl_in (file, line, text)`` and
    ``_curate_jsonl_bad`` (lines that are not UTF-8), one chunk of lines at a time; return
    the keys of the JSON objects in order of first appearance (found chunk by chunk, so a
    file of wide lines is never parsed whole at once)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _curate_jsonl_in (file VARCHAR, line BIGINT, text VARCHAR)")
    con.execute("CREATE OR REPLACE TEMP TABLE _curate_jsonl_bad "
                "(file VARCHAR, line BIGINT, reason VARCHAR, detail VARCHAR, text VARCHAR)")
    keys: dict[str, None] = {}

    def flush(table: str, cols: dict[str, list[Any]]) -> None:
        if cols["line"]:
            con.register("_curate_jsonl_chunk", pa.table(cols))
            try:
                if table == "_curate_jsonl_in":  # a chunk holds lines of one file, in order
                    for (k,) in con.execute(
                        "SELECT k FROM (SELECT unnest(json_keys(j)) AS k, line FROM "
                        "(SELECT try(json(text)) AS j, line FROM _curate_jsonl_chunk) "
                        "WHERE j IS NOT NULL AND json_type(j) = 'OBJECT') GROUP BY k ORDER BY min(line), k"
                    ).fetchall():
                        keys.setdefault(k)
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _curate_jsonl_chunk")
            finally:
                con.unregister("_curate_jsonl_chunk")
        for v in cols.values():
            v.clear()

    good: dict[str, list[Any]] = {"file": [], "line": [], "text": []}
    bad: dict[str, list[Any]] = {"file": [], "line": [], "reason": [], "detail": [], "text": []}
    for f in files:
        name = str(f.resolve())
        chars = 0
        for i, text, problem in iter_text_lines(f):
            if problem is not None:
                reason, detail, record = problem
                for k, v in zip(("file", "line", "reason", "detail", "text"), (name, i, reason, detail, record)):
                    bad[k].append(v)
                if len(bad["line"]) >= JSONL_CHUNK:
                    flush("_curate_jsonl_bad", bad)
                continue
            assert text is not None  # iter_text_lines gives text exactly when there is no problem
            good["file"].append(name)
            good["line"].append(i)
            good["text"].append(text)
            chars += len(text)
            # a chunk is bounded in lines and in characters, so wide lines do not pile up
            if len(good["line"]) >= JSONL_CHUNK or chars >= JSONL_CHUNK_CHARS:
                flush("_curate_jsonl_in", good)
                chars = 0
        flush("_curate_jsonl_in", good)
    flush("_curate_jsonl_bad", bad)
    return list(keys)


__all__ = ["PRESETS", "TableMapping", "ingest_table", "prepare_table", "resolve_mapping", "input_files"]
