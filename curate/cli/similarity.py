"""``curate similarity``: the FAISS layer from the command line (indexes, semantic, near
and exact duplicates, caption merge, tags, target filter, report), a thin layer over
:mod:`curate.similarity`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click

from ..errors import ConfigError
from ..store import Store
from .common import max_rows_option, progress_option, show_table, store_option

device_option = click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
                             help="GPU when FAISS sees one (auto), else CPU.")


@click.group()
def similarity() -> None:
    """FAISS indexes, semantic/near/exact duplicates, placeholders, target filter, tags."""


@similarity.command("index")
@progress_option("Progress bars", expose=False)
@click.argument("set_name", metavar="SET")
@store_option
@click.option("--factory", default="Flat", show_default=True, help="FAISS factory: Flat, IVF1024,Flat, HNSW32, IVF1024,PQ64.")
@click.option("--name", help="Index name under indexes/ (default SET.factory).")
@click.option("--nprobe", type=int, help="IVF lists probed per query (saved with the index).")
@click.option("--ef-search", type=int, help="HNSW efSearch (saved with the index).")
@click.option("--train-rows", type=int, help="Training sample size (default max(100k, 64 x nlist)).")
@click.option("--float16", is_flag=True, help="GPU only: store the GPU copy in float16.")
@device_option
def similarity_index(set_name: str, store_path: Path, factory: str, name: str | None, nprobe: int | None,
                     ef_search: int | None, train_rows: int | None, float16: bool, device: str) -> None:
    """Build and save a FAISS index over SET."""
    from ..similarity.index import create_index

    with Store.open(store_path) as s:
        index, folder, run_id = create_index(s, set_name, factory, name=name, nprobe=nprobe, ef_search=ef_search,
                                             train_rows=train_rows, device=device, float16=float16)
    click.echo(f"index {index.settings.name!r}: {factory} over {index.ntotal:,} vectors of {set_name!r} "
               f"(trained on {index.settings.train_rows:,}); {folder}; run {run_id}")


@similarity.command("semdedup")
@progress_option("Progress bars", expose=False)
@click.argument("set_name", metavar="SET")
@store_option
@click.option("--eps", default=0.05, show_default=True, help="Duplicates: cosine > 1 - eps (SemDeDup).")
@click.option("--clusters", "n_clusters", type=int, help="k-means clusters (default one per 1,000 vectors).")
@click.option("--niter", default=20, show_default=True, help="k-means iterations.")
@click.option("--seed", default=1, show_default=True)
@click.option("--keep", type=click.Choice(["farthest", "nearest", "score", "first"]), default="farthest",
              show_default=True, help="Kept member: farthest from / nearest to the centroid, highest --score, first ingested.")
@click.option("--score", help="TABLE.COLUMN keyed by the set's id, for --keep score (e.g. a CLIP score).")
@click.option("--grouping", type=click.Choice(["center", "components"]), default="center", show_default=True)
@device_option
def similarity_semdedup(set_name: str, store_path: Path, eps: float, n_clusters: int | None, niter: int, seed: int,
                        keep: Literal["farthest", "nearest", "score", "first"], score: str | None,
                        grouping: Literal["center", "components"], device: str) -> None:
    """Semantic dedup (SemDeDup) of SET into dedup_groups."""
    from ..similarity.semdedup import semdedup

    with Store.open(store_path) as s:
        res = semdedup(s, set_name, eps=eps, n_clusters=n_clusters, niter=niter, seed=seed, keep=keep, score=score,
                       grouping=grouping, device=device)
    click.echo(res.summary())


@similarity.command("neardup")
@progress_option("Progress bars", expose=False)
@click.argument("set_name", metavar="SET")
@store_option
@click.option("--threshold", default=0.95, show_default=True, help="Near duplicates: cosine > threshold.")
@click.option("--factory", default="Flat", show_default=True, help="Index built for the search (ignored with --index).")
@click.option("--index", "index_name", help="A saved index over SET (curate similarity index).")
@click.option("--nprobe", type=int)
@click.option("--ef-search", type=int)
@click.option("--keep", type=click.Choice(["first", "score"]), default="first", show_default=True)
@click.option("--score", help="TABLE.COLUMN keyed by the set's id, for --keep score.")
@click.option("--grouping", type=click.Choice(["center", "components"]), default="center", show_default=True)
@device_option
def similarity_neardup(set_name: str, store_path: Path, threshold: float, factory: str, index_name: str | None,
                       nprobe: int | None, ef_search: int | None, keep: Literal["first", "score"], score: str | None,
                       grouping: Literal["center", "components"], device: str) -> None:
    """Near-duplicate images of SET by range search, into dedup_groups."""
    from ..similarity.near import near_duplicates

    with Store.open(store_path) as s:
        res = near_duplicates(s, set_name, threshold=threshold, factory=factory, index_name=index_name, nprobe=nprobe,
                              ef_search=ef_search, keep=keep, score=score, grouping=grouping, device=device)
    click.echo(res.summary())


@similarity.command("exact")
@store_option
@click.option("--min-urls", default=20, show_default=True, help="A sha256 behind this many distinct URLs is a placeholder.")
@click.option("--keep", type=click.Choice(["first", "score"]), default="first", show_default=True)
@click.option("--score", help="TABLE.COLUMN keyed by uid, for --keep score.")
def similarity_exact(store_path: Path, min_urls: int, keep: Literal["first", "score"], score: str | None) -> None:
    """Exact duplicate images by samples.sha256, and placeholder images."""
    from ..similarity.near import exact_duplicates

    with Store.open(store_path) as s:
        res = exact_duplicates(s, min_urls=min_urls, keep=keep, score=score)
    click.echo(res.summary())


@similarity.command("merge-captions")
@store_option
@click.option("--kind", default="image_semantic", show_default=True,
              help="Group kind: image_semantic (semdedup), image_near (neardup) or image_exact (exact).")
@click.option("--run-id", type=int, default=None, help="One grouping run (default: the latest of --kind).")
@click.option("--suffix", default="_dup", show_default=True, help="Merged captions get variant <variant><suffix>.")
def similarity_merge_captions(store_path: Path, kind: str, run_id: int | None, suffix: str) -> None:
    """Caption-aware merge: the captions of dropped duplicate images join the kept sample as extra variants."""
    from ..similarity.near import merge_captions

    with Store.open(store_path) as s:
        res = merge_captions(s, kind, run_id, suffix=suffix)
    click.echo(f"{res['added']:,} captions merged into kept samples ({res['candidates']:,} captions of dropped "
               f"duplicates, {res['already_on_kept']:,} already on the kept sample)")


@similarity.command("tag")
@progress_option("Progress bars", expose=False)
@click.argument("set_name", metavar="SET")
@click.argument("concept_set", metavar="CONCEPTS")
@store_option
@click.option("--k", "k", default=5, show_default=True, help="Concepts per image.")
@click.option("--factory", default="Flat", show_default=True, help="Index over the concepts.")
@device_option
def similarity_tag(set_name: str, concept_set: str, store_path: Path, k: int, factory: str, device: str) -> None:
    """Zero-shot tags: the top-k concepts of every image of SET (into concept_tags)."""
    from ..similarity.tags import tag

    with Store.open(store_path) as s:
        res = tag(s, set_name, concept_set, k=k, factory=factory, device=device)
    click.echo(res.summary())


@similarity.command("target")
@progress_option("Progress bars", expose=False)
@click.argument("set_name", metavar="SET")
@click.argument("reference_set", metavar="REFERENCE")
@store_option
@click.option("--clusters", "n_clusters", default=1000, show_default=True, help="k-means clusters of SET.")
@click.option("--niter", default=20, show_default=True)
@click.option("--seed", default=1, show_default=True)
@device_option
def similarity_target(set_name: str, reference_set: str, store_path: Path, n_clusters: int, niter: int, seed: int,
                      device: str) -> None:
    """DataComp image-based filter: select SET's clusters nearest to REFERENCE vectors."""
    from ..similarity.target import target_filter

    with Store.open(store_path) as s:
        res = target_filter(s, set_name, reference_set, n_clusters=n_clusters, niter=niter, seed=seed, device=device)
    click.echo(res.summary())


@similarity.command("report")
@store_option
@max_rows_option()
def similarity_report(store_path: Path, max_rows: int) -> None:
    """Duplicate groups per kind and run (similarity.groups_summary)."""
    with Store.open(store_path, read_only=True) as s:
        if not s.has_table("dedup_groups"):
            raise ConfigError(f"store {store_path} has no duplicate groups yet; run `curate similarity semdedup` first")
        click.echo("Duplicate groups per kind and config, latest run (curate sql -q similarity.groups_summary)")
        show_table(s.query("similarity.groups_summary").to_arrow_table(), max_rows)
