"""``curate dedup``: caption dedup from the command line, a thin layer over
:mod:`curate.dedup`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click

from ..errors import ConfigError
from ..store import Store
from .common import max_rows_option, show_table, store_option


@click.group()
def dedup() -> None:
    """Exact and near-duplicate captions, repetition rates, distinct counts."""


@dedup.command()
@store_option
@click.option("--variant", "variants", multiple=True, help="Only this variant (repeatable; default all).")
@click.option("--across-variants", is_flag=True, help="Let groups cross variants (scope '*').")
@click.option("--threshold", default=0.8, show_default=True, help="Jaccard similarity of shingle sets.")
@click.option("--num-perm", default=128, show_default=True, help="MinHash permutations.")
@click.option("--shingle", default=3, show_default=True, help="Words per shingle.")
@click.option("--keep", type=click.Choice(["min_id", "longest", "shortest"]), default="min_id", show_default=True,
              help="Which member of a group is kept (min_id: smallest caption_id, a content hash, not input order; longest/shortest: by characters, ties by caption_id).")
@click.option("--grouping", type=click.Choice(["center", "components"]), default="center", show_default=True,
              help="center: every member is at least --threshold similar to the kept one; "
                   "components: connected components (chains allowed).")
@click.option("--edit-min-words", type=click.IntRange(min=0), default=4, show_default=True,
              help="One word inserted or deleted is a duplicate when the shorter caption has at least this many words "
                   "(0: off).")
@click.option("--seed", default=1, show_default=True, help="MinHash permutation seed (datasketch's).")
@click.option("--bands", type=int, help="LSH bands (with --rows; default from threshold and num_perm).")
@click.option("--rows", type=int, help="LSH rows per band.")
def captions(store_path: Path, variants: tuple[str, ...], across_variants: bool, threshold: float, num_perm: int,
             shingle: int, keep: Literal["min_id", "longest", "shortest"], grouping: Literal["center", "components"],
             edit_min_words: int, seed: int, bands: int | None, rows: int | None) -> None:
    """Find duplicate captions and write them to dedup_groups (a rerun replaces its config's rows)."""
    from ..dedup.text import dedup_captions

    with Store.open(store_path) as s:
        res = dedup_captions(s, variant=list(variants) or None, across_variants=across_variants,
                             threshold=threshold, num_perm=num_perm, shingle=shingle, keep=keep, seed=seed,
                             bands=bands, rows=rows, grouping=grouping, edit_min_words=edit_min_words)
    click.echo(res.summary())


@dedup.command()
@store_option
def report(store_path: Path) -> None:
    """Repetition rate per variant: exact in SQL, and exact + near from the latest dedup run."""
    with Store.open(store_path, read_only=True) as s:
        click.echo("Exact repetition per variant, normalised in SQL (curate sql -q dedup.exact_repetition)")
        show_table(s.query("dedup.exact_repetition").to_arrow_table())
        if not s.has_table("dedup_summary"):
            click.echo("no dedup run yet: run `curate dedup captions` for near duplicates")
            return
        click.echo("Repetition per scope, latest dedup run (curate sql -q dedup.repetition)")
        show_table(s.query("dedup.repetition").to_arrow_table())


@dedup.command()
@store_option
@click.option("--scope", default=None, help="A variant, or '*' for a run across variants (default: the first).")
@max_rows_option(20)
def groups(store_path: Path, scope: str | None, max_rows: int) -> None:
    """The largest duplicate groups of the latest dedup run of a scope."""
    with Store.open(store_path, read_only=True) as s:
        if not s.has_table("dedup_summary"):
            raise ConfigError("no dedup run in this store yet; run `curate dedup captions` first")
        scopes = [r[0] for r in s.execute("SELECT DISTINCT scope FROM dedup_summary ORDER BY 1").fetchall()]
        scope = scope if scope is not None else (scopes[0] if scopes else "*")
        if scope not in scopes:
            raise ConfigError(f"no dedup run covers scope {scope!r}; scopes: {', '.join(scopes) or 'none'}")
        show_table(s.query("dedup.groups", scope=scope).to_arrow_table().slice(0, max_rows), max_rows)


@dedup.command()
@store_option
@click.option("--value", type=click.Choice(["normalised", "text"]), default="normalised", show_default=True)
@click.option("--precision", "p", default=14, show_default=True, help="HyperLogLog precision p (4..16).")
@click.option("--exact", is_flag=True, help="Also count exactly (count DISTINCT) to compare.")
def distinct(store_path: Path, value: str, p: int, exact: bool) -> None:
    """Approximate distinct captions per variant (datasketch HyperLogLog)."""
    import pyarrow as pa

    from ..dedup.hll import distinct_counts

    with Store.open(store_path, read_only=True) as s:
        rows = distinct_counts(s, value=value, p=p, exact=exact)
    cols = {"variant": [r.variant for r in rows], "counted": [r.counted for r in rows],
            "approx_distinct": [round(r.approx_distinct) for r in rows]}
    if exact:
        cols["exact_distinct"] = [r.exact_distinct for r in rows]
        cols["error"] = [None if r.error is None else f"{r.error:+.2%}" for r in rows]
    show_table(pa.table(cols))
