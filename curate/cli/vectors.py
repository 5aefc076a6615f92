"""``curate vectors``: embedding sets from the command line (list, import, export, drop),
a thin layer over :mod:`curate.vectors`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, cast

import click

from ..errors import ConfigError
from ..store import Store
from .common import show_table, store_option


@click.group()
def vectors() -> None:
    """Embedding sets: import, export, list (float16 shards in the store's vectors/)."""


@vectors.command("list")
@store_option
def vectors_list(store_path: Path) -> None:
    """The registered vector sets."""
    from ..vectors import sets_table

    with Store.open(store_path) as s:
        show_table(sets_table(s))


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
def vectors_import(name: str, path: Path, store_path: Path, fmt: str, kind: Literal["image", "text", "concept"] | None,
                   ids_path: Path | None, uids_path: Path | None, key: str, match: Literal["auto", "uid", "url", "key"],
                   variant: str, model: str | None, on_bad: Literal["error", "quarantine"] | None,
                   normalise: Literal["auto", "error"], replace: bool) -> None:
    """Import embeddings at PATH as set NAME (clip-retrieval folder, DataComp .npz, or .npy + --ids)."""
    from .. import vectors as V

    V.check_name(name)  # before the store is opened or any input is read
    if fmt == "auto":
        fmt = "clip-retrieval" if path.is_dir() else {".npz": "datacomp", ".npy": "npy"}.get(path.suffix.lower(), "")
        if not fmt:
            raise ConfigError(f"cannot tell the format of {path.name}; pass --format clip-retrieval|datacomp|npy")
    if fmt == "datacomp" and uids_path is None:
        raise ConfigError("datacomp format needs --uids PARQUET (the uid column in the .npz row order)")
    if fmt == "npy" and ids_path is None:
        raise ConfigError("npy format needs --ids FILE (.txt, one id per line, or a parquet)")
    with Store.open(store_path) as s:
        if fmt == "clip-retrieval":
            # --kind concept is passed on as given: import_clip_retrieval rejects it with a ConfigError
            clip_kind = cast(Literal["image", "text"], kind or "image")
            res = V.import_clip_retrieval(s, name, path, kind=clip_kind, match=match, variant=variant, model=model,
                                          on_bad=on_bad or "quarantine", replace=replace, normalise=normalise)
        elif fmt == "datacomp":
            assert uids_path is not None
            res = V.import_datacomp(s, name, path, uids_path, key=key, variant=variant, on_bad=on_bad or "quarantine",
                                    replace=replace, normalise=normalise)
        else:
            assert ids_path is not None
            res = V.import_npy(s, name, path, ids_path, kind=kind or "image", model=model, variant=variant,
                               on_bad=on_bad or "error", replace=replace, normalise=normalise)
    click.echo(res.summary())


@vectors.command("export")
@click.argument("name")
@click.argument("out", type=click.Path(path_type=Path))
@store_option
@click.option("--format", "fmt", type=click.Choice(["clip-retrieval", "datacomp"]), default="clip-retrieval",
              show_default=True, help="clip-retrieval: a folder OUT; datacomp: OUT.npz plus OUT.parquet (uid, url, text).")
@click.option("--text-set", default=None, metavar="SET",
              help="clip-retrieval: also write this text set as text_emb/, row-aligned with image set NAME and one "
                   "metadata/ (the layout clip-retrieval inference writes).")
@click.option("--shard-rows", type=int, default=None,
              help="clip-retrieval: rows per shard (default: the set's own shards).")
@click.option("--key", default=None, help="datacomp: the array NAME becomes (b32_img, b32_txt, l14_img, l14_txt; "
              "default l14_img, or l14_txt for a text set).")
@click.option("--with", "also", multiple=True, metavar="KEY=SET",
              help="datacomp: another set in the same shard, e.g. --with l14_txt=clip.x.text.raw (repeatable).")
def vectors_export(name: str, out: Path, store_path: Path, fmt: str, text_set: str | None, shard_rows: int | None,
                   key: str | None, also: tuple[str, ...]) -> None:
    """Write set NAME as a clip-retrieval embedding folder OUT (uid, url, caption metadata; with
    --text-set, image and text embeddings in one folder), or as a DataComp embedding shard
    (--format datacomp)."""
    import pyarrow.parquet as pq

    from ..vectors import check_name, export_clip_retrieval, export_datacomp, open_set

    for n in (name, text_set):
        if n is not None:
            check_name(n)
    with Store.open(store_path) as s:
        vs = open_set(s, name)
        if fmt == "datacomp":
            if text_set or shard_rows:
                raise ConfigError("--text-set and --shard-rows belong to --format clip-retrieval")
            sets = {key or ("l14_txt" if vs.kind == "text" else "l14_img"): name}
            for item in also:
                k, sep, v = item.partition("=")
                if not sep or not k or not v:
                    raise ConfigError(f"--with expects KEY=SET, got {item!r}")
                sets[k.strip()] = check_name(v.strip())
            npz, meta, rows = export_datacomp(s, out, sets)
            click.echo(f"exported {rows:,} samples ({', '.join(f'{k}={v}' for k, v in sets.items())}) to {npz} and {meta}")
            return
        if key or also:
            raise ConfigError("--key and --with belong to --format datacomp")
        export_clip_retrieval(s, name, out, text_set=text_set, shard_rows=shard_rows)
    metas = sorted((out / "metadata").glob("metadata_*.parquet"))
    rows = sum(pq.read_metadata(m).num_rows for m in metas)
    what = f"{vs.kind} vectors of {name!r}" + (f" with the text vectors of {text_set!r}" if text_set else "")
    click.echo(f"exported {rows:,} {what} to {out} ({len(metas)} shard(s))")


@vectors.command("drop")
@click.argument("name")
@store_option
def vectors_drop(name: str, store_path: Path) -> None:
    """Remove set NAME (its registry row and folder)."""
    from ..vectors import check_name, drop_set

    check_name(name)

    with Store.open(store_path) as s:
        drop_set(s, name)
    click.echo(f"dropped vector set {name!r}")
