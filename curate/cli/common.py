"""What every CLI module shares: the ``--store`` option and the other options several
commands take (executor, progress, max rows), ``KEY=VALUE`` parsing, how a result table
prints, and how a failure or a signal becomes one line and an exit code
(:func:`invoke`). Command modules import from here, never from ``curate.cli`` itself."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import procs
from ..errors import ConfigError, CurateError, StoreError
from ..runs import disk_full
from ..store import DEFAULT_STORE

store_option = click.option(
    "--store", "store_path", envvar="CURATE_STORE", default=DEFAULT_STORE, show_default=True,
    type=click.Path(file_okay=False, path_type=Path), help="Store directory (env CURATE_STORE).",
)


def _configure_progress(ctx: click.Context, param: click.Parameter, value: bool | None) -> bool | None:
    from .. import progress

    progress.configure(value)
    return value


def progress_option(noun: str = "Progress bar", expose: bool = True) -> Callable[[Any], Any]:
    """``--progress/--no-progress`` (None: bars when stderr is a terminal). It sets
    :mod:`curate.progress` for the command; ``expose=False`` for commands that only need that."""
    return click.option("--progress/--no-progress", default=None, callback=_configure_progress, expose_value=expose,
                        help=f"{noun} (default: when stderr is a terminal).")


def max_rows_option(default: int = 40, help: str | None = None) -> Callable[[Any], Any]:
    """``--max-rows``: rows a printed table shows."""
    return click.option("--max-rows", default=default, show_default=True, help=help)


def executor_options(f: Any) -> Any:
    """``--executor``, ``--ray-address`` and ``--gpus-per-worker`` (see curate.runner),
    passed to the command as ``executor=dict(...)`` for :class:`curate.runner.RunOptions`."""
    opts = [
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: in-process or a process pool; ray: --workers Ray actors."),
        click.option("--ray-address", default=None,
                     help="With --executor ray: join this cluster ('auto', 'ray://host:10001') instead of starting Ray here."),
        click.option("--gpus-per-worker", type=float, default=0.0, show_default=True,
                     help="With --executor ray: GPUs reserved per actor."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def run_options(executor: str, ray_address: str | None, gpus_per_worker: float, **kw: Any) -> Any:
    """RunOptions from the CLI's values (errors are ConfigErrors, one line)."""
    from ..runner import RunOptions

    return RunOptions(executor=executor, ray_address=ray_address, gpus_per_worker=gpus_per_worker, **kw)


def parse_value(text: str) -> Any:
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
        return [parse_value(t.strip()) for t in text[1:-1].split(",") if t.strip()]
    return text


def pairs(items: tuple[str, ...], what: str) -> dict[str, Any]:
    """``KEY=VALUE`` items (of the option ``what``) as a dict of parsed values."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r} should be KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def show_table(table: Any, max_rows: int = 40, *, float_precision: int | None = None,
               thousands_separator: bool = False) -> None:
    """Print a polars DataFrame or an Arrow table as a box table without shape and dtypes,
    and say on stderr when rows were cut."""
    import polars as pl

    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)  # from_arrow of a table is a DataFrame (a Series only for an array)
    with pl.Config(tbl_rows=max_rows, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   float_precision=float_precision, thousands_separator=thousands_separator):
        click.echo(str(df))
    if df.height > max_rows:
        click.echo(f"({df.height:,} rows; showing at most {max_rows}, use --max-rows or --out)", err=True)


def invoke(group: click.Group, argv: list[str] | None = None) -> int:
    """Run ``group`` as the ``curate`` program; return the exit code. Expected failures
    (:class:`CurateError`) print one ``error: ...`` line and exit with their own code,
    never a traceback; click's usage errors print as click prints them. SIGINT (Ctrl-C)
    and SIGTERM stop the command the way Ctrl-C does (the batch in flight rolls back,
    the run is marked ``interrupted``, child processes are stopped), then print one
    ``interrupted`` line and exit 130 or 143. A write that finds the disk full prints
    one line and exits with :class:`StoreError`'s code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(k.startswith("_CURATE") and k.endswith("_COMPLETE") for k in os.environ):
        group.main(args=args, prog_name="curate")  # shell completion: click answers and exits
    try:
        with procs.handle_signals():
            with group.make_context("curate", args) as ctx:
                group.invoke(ctx)
    except click.exceptions.Exit as e:
        return e.exit_code
    except BaseException as e:  # noqa: BLE001 - each kind is reported below; the rest is re-raised
        return _report(e)
    return 0


def _report(e: BaseException) -> int:
    """Print one line for ``e`` and return the exit code; re-raise what is a bug."""
    intr = procs.as_interrupt(e)
    if intr is not None:  # checked first: any error raised while a signal was handled is its effect
        click.echo(f"interrupted ({intr.args[0]}): what was committed is kept; "
                   "run the same command again to resume", err=True)
        return intr.exit_code
    if isinstance(e, CurateError):
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    if isinstance(e, click.exceptions.Abort):
        click.echo("aborted", err=True)
        return 130
    if isinstance(e, click.ClickException):
        e.show()
        return e.exit_code
    full = disk_full(e)
    if full is None:
        raise e
    click.echo(f"error: the disk is full ({full}); free space and run the command again", err=True)
    return StoreError.exit_code
