"""What every CLI module shares: the ``--store`` option, the executor options of the
commands that run a stage, and how a result table prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .store import DEFAULT_STORE

store_option = click.option(
    "--store", "store_path", envvar="CURATE_STORE", default=DEFAULT_STORE, show_default=True,
    type=click.Path(file_okay=False, path_type=Path), help="Store directory (env CURATE_STORE).",
)


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
    from .runner import RunOptions

    return RunOptions(executor=executor, ray_address=ray_address, gpus_per_worker=gpus_per_worker, **kw)


def show_table(table: Any, max_rows: int = 40, *, float_precision: int | None = None,
               thousands_separator: bool = False) -> None:
    """Print a polars DataFrame or an Arrow table as a box table without shape and dtypes,
    and say on stderr when rows were cut."""
    import polars as pl

    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    with pl.Config(tbl_rows=max_rows, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   float_precision=float_precision, thousands_separator=thousands_separator):
        click.echo(str(df))
    if df.height > max_rows:
        click.echo(f"({df.height:,} rows; showing at most {max_rows}, use --max-rows or --out)", err=True)
