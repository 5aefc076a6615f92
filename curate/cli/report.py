"""``curate report``: the store's audits as one self-contained HTML page
(:mod:`curate.report`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..store import Store
from .common import store_option


@click.command("report")
@store_option
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path),
              help="A manifest written by `curate mix` (with its sidecar): adds the pool-vs-manifest audit.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the page (default STORE/reports/report.html).")
def report(store_path: Path, manifest_path: Path | None, out: Path | None) -> None:
    """Write one self-contained HTML page: overview, knowledge, concept long tail, duplicates, manifest audit."""
    from ..report import write_report

    with Store.open(store_path, read_only=True) as s:
        path = write_report(s, out, manifest_path)
    click.echo(f"report: {path} ({path.stat().st_size / 1024:,.0f} KiB; open it in a browser, no server needed)")
