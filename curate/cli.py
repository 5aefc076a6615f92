"""The command line: a thin layer over the Python API. Every command takes ``--store``
(default ``$CURATE_STORE``, else ``./curate-store``). Expected failures print one line
(``error: ...``) and exit non-zero; they never print a traceback."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import duckdb

from . import __version__
from .errors import ConfigError, CurateError, QueryError
from .cli_common import executor_options, show_table, store_option
from .store import Store



def _parse_value(text: str) -> Any:
    """KEY=VALUE values: integers, floats, true/false, comma lists in [..], else text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.startswith("[") and text.endswith("]"):
        return [_parse_value(t.strip()) for t in text[1:-1].split(",") if t.strip()]
    return text


def _pairs(items: tuple[str, ...], what: str) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r} should be KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v)
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="curate")
@click.option("-v", "--verbose", count=True, help="Log progress to stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """curate: caption-variant stores, audits and training mixtures for image-text data."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")


@cli.command()
@click.argument("store_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@store_option
def init(store_dir: Path | None, store_path: Path) -> None:
    """Create a store (STORE_DIR, or --store)."""
    path = store_dir or store_path
    with Store.init(path) as s:
        click.echo(f"store ready at {path} (schema version {s.schema_version}, tables: {', '.join(s.tables())})")


@cli.command()
@store_option
def info(store_path: Path) -> None:
    """Tables, row counts and schema version of a store."""
    with Store.open(store_path) as s:
        click.echo(f"store {store_path} (schema version {s.schema_version})")
        for t, n in s.summary().items():
            click.echo(f"  {t:<22} {n:>12,}")


@cli.command()
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
    """Ingest PATH in FORMAT: table, img2dataset, capsfusion, laclip, gbc, coco."""
    from .ingest import FORMATS, ingest as do_ingest

    opts = _pairs(options, "--option")
    table_flags = {"preset": preset, "url_col": url_col, "caption_col": caption_col, "uid_col": uid_col,
                   "variant": variant, "generator": generator, "input_format": input_format,
                   "header": (False if no_header else None), "extra_cols": extra_cols}
    given = {k: v for k, v in table_flags.items() if v is not None}
    if fmt not in FORMATS:
        raise ConfigError(f"unknown ingest format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if given and fmt != "table":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"{flags} apply to the table format only; use -o KEY=VALUE for {fmt} options")
    from .errors import InputError
    from .ingest import validate_options

    # everything that can be checked is checked before the store is opened (or created)
    validate_options(fmt, {**given, **opts})
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    with Store.open(store_path, create=True) as s:
        res = do_ingest(s, fmt, path, source, **given, **opts)
    click.echo(res.summary())


def _print_table(df: Any, max_rows: int) -> None:
    show_table(df, max_rows)


@cli.command()
@click.argument("query_text", metavar="QUERY", required=False)
@store_option
@click.option("--query", "-q", "named", metavar="DOMAIN.NAME", help="Run a named query from sql/<domain>/.")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="Named query parameter.")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the result to this file.")
@click.option("--max-rows", default=40, show_default=True, help="Rows shown by the table format.")
@click.option("--list", "list_queries", is_flag=True, help="List the named queries with their documentation.")
def sql(query_text: str | None, store_path: Path, named: str | None, params: tuple[str, ...], fmt: str,
        out: Path | None, max_rows: int, list_queries: bool) -> None:
    """Run SQL (QUERY) or a named query against the store."""
    from .sqlfiles import named_queries

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
        rel = s.query(named, **_pairs(params, "--param")) if named else s.relation(query_text)
        if rel is None:
            click.echo("ok")
            return
        try:
            table = rel.to_arrow_table()
        except duckdb.Error as e:
            raise QueryError(" ".join(str(e).split())[:500]) from None
        if out is not None:
            _write(s, table, fmt if fmt != "table" else _fmt_from_suffix(out), out)
            click.echo(f"wrote {table.num_rows:,} rows to {out}", err=True)
        elif fmt == "table":
            import polars as pl

            _print_table(pl.from_arrow(table), max_rows)
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


@cli.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@store_option
@click.option("--print-config", is_flag=True, help="Print the resolved pipeline and exit.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
def run(pipeline_file: Path, store_path: Path, print_config: bool, progress: bool | None) -> None:
    """Validate PIPELINE_FILE whole, then run its ingest steps and stages."""
    from .pipeline import load_pipeline, run_pipeline

    pipe = load_pipeline(pipeline_file)
    if print_config:
        click.echo(json.dumps(pipe.resolved(), indent=2, default=str))
        return
    with Store.open(store_path, create=True) as s:
        run_pipeline(s, pipe, echo=click.echo, progress=progress)


@cli.command()
def stages() -> None:
    """List the registered stages and what they write."""
    from .registry import get_stage_class, stage_names

    for name in stage_names():
        cls = get_stage_class(name)
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        cols = ", ".join(cls.output_schema.names)
        click.echo(f"{name:<28} {cls.input_table}.{cls.key} -> {cls.output_table}({cols})  {doc}")


@cli.command()
@store_option
def check(store_path: Path) -> None:
    """Run the store invariants in sql/checks/; exits 1 if any is violated."""
    from .sqlfiles import named_queries

    bad = 0
    with Store.open(store_path, read_only=True) as s:
        for q in named_queries().values():
            if q.domain != "checks":
                continue
            n = s.execute(f"SELECT count(*) FROM ({q.sql})").fetchall()[0][0]
            click.echo(f"{'ok  ' if n == 0 else 'FAIL'} {q.qualname}" + (f" ({n:,} rows)" if n else ""))
            bad += n > 0
    if bad:
        raise CurateError(f"{bad} invariant(s) violated")


from .cli_concepts import concepts  # noqa: E402
from .cli_dedup import dedup  # noqa: E402
from .cli_mix import manifest_audit, mix  # noqa: E402

cli.add_command(concepts)
cli.add_command(dedup)
cli.add_command(mix)
cli.add_command(manifest_audit)

from .cli_similarity import attach as _attach_similarity  # noqa: E402

_attach_similarity(cli)

from .cli_clip import attach as _attach_clip  # noqa: E402

_attach_clip(cli)


@cli.group()
def knowledge() -> None:
    """Knowledge scoring: spaCy named entities per caption, retention and hallucination."""


@knowledge.command("score")
@store_option
@click.option("--model", default=None, help="spaCy pipeline (package or path; default en_core_web_sm).")
@click.option("--workers", type=int, default=None,
              help="Worker processes, one spaCy each (default: the machine's cores, at most 8).")
@click.option("--batch-size", default=1000, show_default=True, help="Captions per batch (one commit each).")
@click.option("--limit", type=int, default=None, help="Score at most this many pending captions, then stop.")
@click.option("-c", "--config", "config", multiple=True, metavar="KEY=VALUE",
              help="Stage config, e.g. -c case_fix=none -c knowledge_labels=[PERSON,ORG].")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@executor_options
def knowledge_score(store_path: Path, model: str | None, workers: int | None, batch_size: int, limit: int | None,
                    config: tuple[str, ...], progress: bool | None, executor: str, ray_address: str | None,
                    gpus_per_worker: float) -> None:
    """Run knowledge.spacy_ner.v1 over the captions not scored yet (resumable)."""
    from .cli_common import run_options
    from .registry import build_stage
    from .runner import run_stage

    cfg = _pairs(config, "--config")
    if model:
        cfg["model"] = model
    stage = build_stage("knowledge.spacy_ner.v1", cfg)
    if workers is None:
        import os

        workers = max(1, min(8, os.cpu_count() or 1))
    with Store.open(store_path) as s:
        res = run_stage(s, stage, run_options(executor, ray_address, gpus_per_worker, batch_size=batch_size,
                                              workers=workers, limit=limit, progress=progress))
    click.echo(res.summary())


KNOWLEDGE_REPORT = (
    ("Knowledge per variant (knowledge.by_variant)", "knowledge.by_variant", ()),
    ("Knowledge per source and variant (knowledge.by_source)", "knowledge.by_source", ()),
    ("Raw knowledge entities kept by other variants (knowledge.retention)", "knowledge.retention", ("raw",)),
    ("Entities supported by neither the raw nor the synthetic caption (knowledge.hallucinations)",
     "knowledge.hallucinations", ("raw", "synthetic")),
    ("Captions per status (knowledge.status)", "knowledge.status", ()),
)


@knowledge.command("report")
@store_option
@click.option("--raw", default="raw", show_default=True, help="The variant holding the original alt-text.")
@click.option("--synthetic", default="synthetic", show_default=True, help="The synthetic-caption variant.")
@click.option("--max-rows", default=40, show_default=True)
def knowledge_report(store_path: Path, raw: str, synthetic: str, max_rows: int) -> None:
    """Print the knowledge audits: density per variant and source, retention, hallucination."""
    with Store.open(store_path, read_only=True) as s:
        if "caption_knowledge" not in s.tables():
            raise ConfigError(f"store {store_path} has no knowledge scores yet; run `curate knowledge score` first")
        given = {"raw": raw, "synthetic": synthetic}
        for title, qname, params in KNOWLEDGE_REPORT:
            click.echo(f"\n{title}")
            _print_table(s.query(qname, **{p: given[p] for p in params}).pl(), max_rows)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="curate", standalone_mode=False)
    except CurateError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
