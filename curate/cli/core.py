"""The store and pipeline commands: ``curate init``, ``info``, ``ingest``, ``sql``, ``run``,
``stages`` and ``check``."""

from __future__ import annotations

import inspect
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import duckdb

from ..errors import ConfigError, CurateError, QueryError
from ..ingest import FORMATS, ingest_function  # the format registry; importing it imports no reader
from ..store import Store
from .common import max_rows_option, pairs, progress_option, show_table, store_option


@click.command()
@click.argument("store_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@store_option
def init(store_dir: Path | None, store_path: Path) -> None:
    """Create a store (STORE_DIR, or --store)."""
    path = store_dir or store_path
    with Store.init(path) as s:
        click.echo(f"store ready at {path} (schema version {s.schema_version}, tables: {', '.join(s.tables())})")


@click.command()
@store_option
def info(store_path: Path) -> None:
    """Tables, row counts and schema version of a store."""
    with Store.open(store_path) as s:
        click.echo(f"store {store_path} (schema version {s.schema_version})")
        for t, n in s.summary().items():
            click.echo(f"  {t:<22} {n:>12,}")


def format_description(fmt: str) -> str:
    """One line on what ingest format ``fmt`` reads: the first sentence of its reader's
    docstring, without the leading "Ingest", a "(see the module docstring ...)" pointer
    and RST markup."""
    try:
        reader = ingest_function(fmt)
    except ImportError as e:  # a reader whose module cannot be imported here
        return f"(reader not importable: {e})"
    paragraph = " ".join((inspect.getdoc(reader) or "").split("\n\n")[0].split())
    line = re.split(r"(?<=[.;])\s", paragraph, maxsplit=1)[0].rstrip(".;")
    line = re.sub(r"\s*\(see the module docstring[^)]*\)", "", line).replace("``", "")
    line = re.sub(r"^Ingest\s+", "", line)
    return line[:1].upper() + line[1:]


class IngestCommand(click.Command):
    """``curate ingest``, whose help lists every format of :data:`curate.ingest.FORMATS`
    with its reader's description (read when the help is shown, so readers are imported
    only then)."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        with formatter.section("Formats"):
            formatter.write_dl([(fmt, format_description(fmt)) for fmt in FORMATS])


@click.command(cls=IngestCommand, help=f"Ingest PATH in FORMAT: {', '.join(FORMATS)}.")
@click.argument("fmt", metavar="FORMAT")
@click.argument("path", type=click.Path(path_type=Path))
@store_option
@click.option("--source", help="Source name (default: the file or folder name). Part of every derived uid.")
@click.option("--preset", help="Table column mapping preset: laion, datacomp, cc3m, img2dataset.")
@click.option("--url-col", help="Table column holding the image URL.")
@click.option("--caption-col", help="Table column holding the caption.")
@click.option("--uid-col", help="Table column holding the source's own sample id.")
@click.option("--variant", help="Caption variant name for a table's captions (default raw).")
@click.option("--generator", help="Who wrote a table's captions (default alt-text).")
@click.option("--input-format", help="parquet, csv, tsv or jsonl (default: from the file name).")
@click.option("--no-header", is_flag=True, default=None, help="CSV/TSV without a header row (columns column0, column1, ...).")
@click.option("--extra-cols", help="Comma-separated input columns to keep in samples.extra (default: all unmapped).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="A format-specific option.")
def ingest(fmt: str, path: Path, store_path: Path, source: str | None, preset: str | None, url_col: str | None,
           caption_col: str | None, uid_col: str | None, variant: str | None, generator: str | None,
           input_format: str | None, no_header: bool | None, extra_cols: str | None, options: tuple[str, ...]) -> None:
    from ..ingest import ingest as do_ingest

    opts = pairs(options, "--option")
    table_flags = {"preset": preset, "url_col": url_col, "caption_col": caption_col, "uid_col": uid_col,
                   "variant": variant, "generator": generator, "input_format": input_format,
                   "header": (False if no_header else None), "extra_cols": extra_cols}
    given = {k: v for k, v in table_flags.items() if v is not None}
    if fmt not in FORMATS:
        raise ConfigError(f"unknown ingest format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if given and fmt != "table":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"{flags} apply to the table format only; use -o KEY=VALUE for {fmt} options")
    from ..errors import InputError
    from ..ingest import validate_options

    # everything that can be checked is checked before the store is opened (or created)
    validate_options(fmt, {**given, **opts})
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    with Store.open(store_path, create=True) as s:
        res = do_ingest(s, fmt, path, source, **given, **opts)
    click.echo(res.summary())
    if res.rejected and not (res.samples_added or res.captions_added or res.already_present):
        # the rejects are recorded (rows with reasons), but a run that added nothing from
        # an input whose every record was refused is a failure a script must see
        hint = ""
        if fmt == "laclip" and str(opts.get("create", "")).lower() not in ("true", "1", "yes"):
            hint = ("; LaCLIP rewrites attach to existing samples whose raw caption is the original text: ingest "
                    "the originals into this source first, or pass -o create=true to make a sample of each original")
        raise InputError(f"nothing was added from {path}: every one of its {res.rows_in:,} records was rejected "
                         f"({res.rejected:,} rejects); see `curate sql --query store.rejects`{hint}")


@click.command()
@click.argument("query_text", metavar="QUERY", required=False)
@store_option
@click.option("--query", "-q", "named", metavar="DOMAIN.NAME", help="Run a named query from sql/<domain>/.")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="Named query parameter.")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the result to this file.")
@max_rows_option(40, "Rows shown by the table format.")
@click.option("--list", "list_queries", is_flag=True, help="List the named queries with their documentation.")
def sql(query_text: str | None, store_path: Path, named: str | None, params: tuple[str, ...], fmt: str,
        out: Path | None, max_rows: int, list_queries: bool) -> None:
    """Run SQL (QUERY) or a named query against the store."""
    from ..sqlfiles import named_queries

    if list_queries:
        for q in named_queries().values():
            ps = " ".join(f"--param {p}=..." for p in q.params)
            click.echo(f"{q.qualname} {ps}".rstrip())
            for line in q.doc.splitlines():
                click.echo(f"    {line}")
        return
    if bool(query_text) == bool(named):
        raise ConfigError("give either a QUERY or --query DOMAIN.NAME (see `curate sql --list`)")
    if fmt == "parquet" and out is None:
        raise ConfigError("--format parquet needs --out FILE")
    with Store.open(store_path, read_only=True) as s:
        if named:
            result = s.query(named, **pairs(params, "--param"))
        else:
            assert query_text is not None  # exactly one of QUERY and --query, checked above
            result = s.relation(query_text)
        # duckdb's sql() returns None for text that holds no statement (only a comment, say), though
        # its stub, and so Store.relation and Store.query, says it always returns a relation
        rel: duckdb.DuckDBPyRelation | None = result
        if rel is None:
            click.echo("ok")
            return
        try:
            table = rel.to_arrow_table()
        except duckdb.Error as e:
            raise QueryError(" ".join(str(e).split())[:500]) from None
        # SQL lets a result repeat a column name (SELECT 1 AS a, 2 AS a); polars and the writers need
        # unique ones. A repeat becomes name_1, name_2, ... (the first number no column of the result
        # already has); names compare case-insensitively, as DuckDB's do.
        names: list[str] = []
        taken = {n.lower() for n in table.column_names}
        for n in table.column_names:
            if n.lower() in {m.lower() for m in names}:
                k = 1
                while f"{n}_{k}".lower() in taken:
                    k += 1
                taken.add(f"{n}_{k}".lower())
                n = f"{n}_{k}"
            names.append(n)
        if names != table.column_names:
            renamed = [f"{old} -> {new}" for old, new in zip(table.column_names, names) if old != new]
            table = table.rename_columns(names)
            click.echo(f"note: repeated column names renamed: {', '.join(renamed)}", err=True)
        if out is not None:
            _write(s, table, fmt if fmt != "table" else _fmt_from_suffix(out), out)
            click.echo(f"wrote {table.num_rows:,} rows to {out}", err=True)
        elif fmt == "table":
            import polars as pl

            show_table(pl.from_arrow(table), max_rows)
        else:
            with tempfile.TemporaryDirectory() as d:
                tmp = Path(d) / f"out.{fmt}"
                _write(s, table, fmt, tmp)
                click.echo(tmp.read_text(encoding="utf-8"), nl=False)


def _fmt_from_suffix(out: Path) -> str:
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in ("csv", "json", "parquet"):
        raise ConfigError(f"cannot tell the output format of {out.name}; pass --format csv|json|parquet")
    return suffix


def _write(store: Store, table: Any, fmt: str, out: Path) -> None:
    """Write with DuckDB's own writers: nested columns, HUGEINT and DECIMAL come out right."""
    out.parent.mkdir(parents=True, exist_ok=True)
    options = {"parquet": "FORMAT parquet, COMPRESSION zstd", "csv": "FORMAT csv, HEADER true",
               "json": "FORMAT json, ARRAY true"}[fmt]
    cur = store.con.cursor()
    try:
        cur.register("_curate_out", table)
        cur.execute(f"COPY (SELECT * FROM _curate_out) TO '{_sql_str(out)}' ({options})")
    except duckdb.Error as e:
        raise QueryError(" ".join(str(e).split())[:500]) from None
    finally:
        cur.close()


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


@click.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@store_option
@click.option("--print-config", is_flag=True, help="Print the resolved pipeline and exit.")
@progress_option("Progress bars")
def run(pipeline_file: Path, store_path: Path, print_config: bool, progress: bool | None) -> None:
    """Validate PIPELINE_FILE whole, then run its ingest steps and stages."""
    from ..pipeline import load_pipeline, run_pipeline

    pipe = load_pipeline(pipeline_file)
    if print_config:
        click.echo(json.dumps(pipe.resolved(), indent=2, default=str))
        return
    with Store.open(store_path, create=True) as s:
        run_pipeline(s, pipe, echo=click.echo, progress=progress)


@click.command()
def stages() -> None:
    """List the registered stages and what they write."""
    from ..registry import get_stage_class, stage_names

    for name in stage_names():
        cls = get_stage_class(name)
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        cols = ", ".join(cls.output_schema.names)
        click.echo(f"{name:<28} {cls.input_table}.{cls.key} -> {cls.output_table}({cols})  {doc}")


@click.command()
@store_option
def check(store_path: Path) -> None:
    """Run the store invariants in sql/checks/; exits 1 if any is violated. A violated one
    prints how many rows break it and, on the next line, its first row as an example."""
    from ..sqlfiles import named_queries

    bad = 0
    with Store.open(store_path, read_only=True) as s:
        for q in named_queries().values():
            if q.domain != "checks":
                continue
            n = s.execute(f"SELECT count(*) FROM ({q.sql})").fetchall()[0][0]
            click.echo(f"{'ok  ' if n == 0 else 'FAIL'} {q.qualname}" + (f" ({n:,} rows)" if n else ""))
            if n:
                cur = s.execute(f"SELECT * FROM ({q.sql}) LIMIT 1")
                names = [d[0] for d in cur.description or []]
                first = cur.fetchall()[0]
                shown = ", ".join(f"{k}={str(v)[:200]}" for k, v in zip(names, first))
                click.echo(f"     e.g. {shown}")
            bad += n > 0
    if bad:
        raise CurateError(f"{bad} invariant(s) violated")
