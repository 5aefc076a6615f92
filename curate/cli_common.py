"""What every CLI module shares: the ``--store`` option and how a result table prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .store import DEFAULT_STORE

store_option = click.option(
    "--store", "store_path", envvar="CURATE_STORE", default=DEFAULT_STORE, show_default=True,
    type=click.Path(file_okay=False, path_type=Path), help="Store directory (env CURATE_STORE).",
)


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
