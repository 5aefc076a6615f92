"""``curate vectors`` and ``curate similarity``: embedding sets and the FAISS layer from
the command line, a thin layer over :mod:`curate.vectors` and :mod:`curate.similarity`.
Attached to the main CLI by :func:`attach` (``cli.add_command`` of both groups)."""

from __future__ import annotations

from pathlib import Path

import click

from .errors import ConfigError, InputError
from .cli_common import show_table, store_option
from .store import Store

device_option = click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
                             help="GPU when FAISS sees one (auto), else CPU.")


def _show(table, max_rows: int = 40) -> None:
    show_table(table, max_rows)

@click.group()
def vectors() -> None:
    """Embedding sets: import, export, list (float16 shards in the store's vectors/)."""


@vectors.command("list")
@store_option
def vectors_list(store_path: Path) -> None:
    """The registered vector sets."""
    from .vectors import sets_table

    with Store.open(store_path) as s:
        _show(sets_table(s))


@vectors.command("import")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@store_option
@click.option("--format", "fmt", type=click.Choice(["auto", "clip-retrieval", "datacomp", "npy"]), default="auto",
              show_default=True, help="auto: a folder is clip-retrieval, .npz DataComp, .npy a plain array.")
@click.option("--kind", type=click.Choice(["image", "text", "concept"]), default=None,
              help="What the vectors embed (default image; DataComp: from --key).")
@click.option("--ids", "ids_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="npy format: ids in row order, a .txt (one per line) or a parquet (its first column).")
@click.option("--uids", "uids_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="datacomp format: the parquet whose uid column follows the .npz rows.")
@click.option("--key", default="l14_img", show_default=True, help="datacomp format: b32_img, b32_txt, l14_img or l14_txt.")
@click.option("--match", type=click.Choice(["auto", "uid", "url", "key"]), default="auto", show_default=True,
              help="clip-retrieval format: the metadata column that finds the sample.")
@click.option("--variant", default="raw", show_default=True, help="Text vectors: the caption variant they embed.")
@click.option("--model", help="Embedding model name, recorded with the set.")
@click.option("--on-bad", type=click.Choice(["error", "quarantine"]), default=None,
              help="NaN/inf/zero or unmatched rows: fail, or leave out as rejects "
                   "(default: quarantine for clip-retrieval/datacomp, error for npy).")
@click.option("--normalise", type=click.Choice(["auto", "error"]), default="auto", show_default=True,
              help="Unnormalised vectors: normalise and report, or fail.")
@click.option("--replace", is_flag=True, help="Replace an existing set of this name (atomically).")
def vectors_import(name: str, path: Path, store_path: Path, fmt: str, kind: str | None, ids_path: Path | None,
                   uids_path: Path | None, key: str, match: str, variant: str, model: str | None, on_bad: str | None,
                   normalise: str, replace: bool) -> None:
    """Import embeddings at PATH as set NAME (clip-retrieval folder, DataComp .npz, or .npy + --ids)."""
    from . import vectors as V

    if fmt == "auto":
        fmt = "clip-retrieval" if path.is_dir() else {".npz": "datacomp", ".npy": "npy"}.get(path.suffix.lower(), "")
        if not fmt:
            raise ConfigError(f"cannot tell the format of {path.name}; pass --format clip-retrieval|datacomp|npy")
    with Store.open(store_path) as s:
        if fmt == "clip-retrieval":
            res = V.import_clip_retrieval(s, name, path, kind=kind or "image", match=match, variant=variant, model=model,
                                          on_bad=on_bad or "quarantine", replace=replace, normalise=normalise)
        elif fmt == "datacomp":
            if uids_path is None:
                raise ConfigError("datacomp format needs --uids PARQUET (the uid column in the .npz row order)")
            res = V.import_datacomp(s, name, path, uids_path, key=key, variant=variant, on_bad=on_bad or "quarantine",
                                    replace=replace, normalise=normalise)
        else:
            if ids_path is None:
                raise ConfigError("npy format needs --ids FILE (.txt, one id per line, or a parquet)")
            import numpy as np

            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise InputError(f"{path}: not a readable .npy file ({e})") from None
            ids = _read_ids(ids_path)
            res = V.write_set(s, name, np.asarray(arr), ids, kind=kind or "image", model=model,
                              variant=variant if kind == "text" else None, on_bad=on_bad or "error", replace=replace,
                              normalise=normalise, source=f"npy:{path}", stage="vectors.import_npy.v1")
    click.echo(res.summary())


def _read_ids(path: Path):
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".parquet":
        return pq.read_table(path).column(0).cast("string")
    return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@vectors.command("export")
@click.argument("name")
@click.argument("out", type=click.Path(path_type=Path))
@store_option
@click.option("--format", "fmt", type=click.Choice(["clip-retrieval", "datacomp"]), default="clip-retrieval",
              show_default=True, help="clip-retrieval: a folder OUT; datacomp: OUT.npz plus OUT.parquet (uid, url, text).")
@click.option("--key", default=None, help="datacomp: the array NAME becomes (b32_img, b32_txt, l14_img, l14_txt; "
              "default l14_img, or l14_txt for a text set).")
@click.option("--with", "also", multiple=True, metavar="KEY=SET",
              help="datacomp: another set in the same shard, e.g. --with l14_txt=clip.x.text.raw (repeatable).")
def vectors_export(name: str, out: Path, store_path: Path, fmt: str, key: str | None, also: tuple[str, ...]) -> None:
    """Write set NAME as a clip-retrieval embedding folder OUT (with uid, url, caption metadata), or as a
    DataComp embedding shard (--format datacomp)."""
    from .vectors import export_clip_retrieval, export_datacomp, open_set

    with Store.open(store_path) as s:
        vs = open_set(s, name)
        if fmt == "datacomp":
            sets = {key or ("l14_txt" if vs.kind == "text" else "l14_img"): name}
            for item in also:
                k, sep, v = item.partition("=")
                if not sep or not k or not v:
                    raise ConfigError(f"--with expects KEY=SET, got {item!r}")
                sets[k.strip()] = v.strip()
            npz, meta, rows = export_datacomp(s, out, sets)
            click.echo(f"exported {rows:,} samples ({', '.join(f'{k}={v}' for k, v in sets.items())}) to {npz} and {meta}")
            return
        if key or also:
            raise ConfigError("--key and --with belong to --format datacomp")
        export_clip_retrieval(s, name, out)
    click.echo(f"exported {vs.count:,} {vs.kind} vectors of {name!r} to {out} ({len(vs.shards)} shard(s))")


@vectors.command("drop")
@click.argument("name")
@store_option
def vectors_drop(name: str, store_path: Path) -> None:
    """Remove set NAME (its registry row and folder)."""
    from .vectors import drop_set

    with Store.open(store_path) as s:
        drop_set(s, name)
    click.echo(f"dropped vector set {name!r}")


@click.group()
def similarity() -> None:
    """FAISS indexes, semantic/near/exact duplicates, placeholders, target filter, tags."""


@similarity.command("index")
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
    from .similarity.index import create_index

    with Store.open(store_path) as s:
        index, folder, run_id = create_index(s, set_name, factory, name=name, nprobe=nprobe, ef_search=ef_search,
                                             train_rows=train_rows, device=device, float16=float16)
    click.echo(f"index {index.settings.name!r}: {factory} over {index.ntotal:,} vectors of {set_name!r} "
               f"(trained on {index.settings.train_rows:,}); {folder}; run {run_id}")


@similarity.command("semdedup")
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
                        keep: str, score: str | None, grouping: str, device: str) -> None:
    """Semantic dedup (SemDeDup) of SET into dedup_groups."""
    from .similarity.semdedup import semdedup

    with Store.open(store_path) as s:
        res = semdedup(s, set_name, eps=eps, n_clusters=n_clusters, niter=niter, seed=seed, keep=keep, score=score,
                       grouping=grouping, device=device)
    click.echo(res.summary())


@similarity.command("neardup")
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
                       nprobe: int | None, ef_search: int | None, keep: str, score: str | None, grouping: str,
                       device: str) -> None:
    """Near-duplicate images of SET by range search, into dedup_groups."""
    from .similarity.near import near_duplicates

    with Store.open(store_path) as s:
        res = near_duplicates(s, set_name, threshold=threshold, factory=factory, index_name=index_name, nprobe=nprobe,
                              ef_search=ef_search, keep=keep, score=score, grouping=grouping, device=device)
    click.echo(res.summary())


@similarity.command("exact")
@store_option
@click.option("--min-urls", default=20, show_default=True, help="A sha256 behind this many distinct URLs is a placeholder.")
@click.option("--keep", type=click.Choice(["first", "score"]), default="first", show_default=True)
@click.option("--score", help="TABLE.COLUMN keyed by uid, for --keep score.")
def similarity_exact(store_path: Path, min_urls: int, keep: str, score: str | None) -> None:
    """Exact duplicate images by samples.sha256, and placeholder images."""
    from .similarity.near import exact_duplicates

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
    from .similarity.near import merge_captions

    with Store.open(store_path) as s:
        res = merge_captions(s, kind, run_id, suffix=suffix)
    click.echo(f"{res['added']:,} captions merged into kept samples ({res['candidates']:,} captions of dropped "
               f"duplicates, {res['already_on_kept']:,} already on the kept sample)")


@similarity.command("tag")
@click.argument("set_name", metavar="SET")
@click.argument("concept_set", metavar="CONCEPTS")
@store_option
@click.option("--k", "k", default=5, show_default=True, help="Concepts per image.")
@click.option("--factory", default="Flat", show_default=True, help="Index over the concepts.")
@device_option
def similarity_tag(set_name: str, concept_set: str, store_path: Path, k: int, factory: str, device: str) -> None:
    """Zero-shot tags: the top-k concepts of every image of SET (into concept_tags)."""
    from .similarity.tags import tag

    with Store.open(store_path) as s:
        res = tag(s, set_name, concept_set, k=k, factory=factory, device=device)
    click.echo(res.summary())


@similarity.command("target")
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
    from .similarity.target import target_filter

    with Store.open(store_path) as s:
        res = target_filter(s, set_name, reference_set, n_clusters=n_clusters, niter=niter, seed=seed, device=device)
    click.echo(res.summary())


@similarity.command("report")
@store_option
@click.option("--max-rows", default=40, show_default=True)
def similarity_report(store_path: Path, max_rows: int) -> None:
    """Duplicate groups per kind and run (similarity.groups_summary)."""
    with Store.open(store_path, read_only=True) as s:
        if not s.has_table("dedup_groups"):
            raise ConfigError(f"store {store_path} has no duplicate groups yet; run `curate similarity semdedup` first")
        click.echo("Duplicate groups per kind and config, latest run (curate sql -q similarity.groups_summary)")
        _show(s.query("similarity.groups_summary").to_arrow_table(), max_rows)


def attach(cli: click.Group) -> None:
    """Add ``curate vectors`` and ``curate similarity`` to the main CLI."""
    cli.add_command(vectors)
    cli.add_command(similarity)
