"""``curate vectors``: embedding sets from the command line (list, import, export, drop),
a thin layer over :mod:`curate.vectors`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import click

from ..errors import ConfigError, InputError
from ..store import Store
from .common import show_table, store_option

if TYPE_CHECKING:
    import pyarrow as pa


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

    if fmt == "auto":
        fmt = "clip-retrieval" if path.is_dir() else {".npz": "datacomp", ".npy": "npy"}.get(path.suffix.lower(), "")
        if not fmt:
            raise ConfigError(f"cannot tell the format of {path.name}; pass --format clip-retrieval|datacomp|npy")
    with Store.open(store_path) as s:
        if fmt == "clip-retrieval":
            # --kind concept is passed on as given: import_clip_retrieval rejects it with a ConfigError
            clip_kind = cast(Literal["image", "text"], kind or "image")
            res = V.import_clip_retrieval(s, name, path, kind=clip_kind, match=match, variant=variant, model=model,
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


def _read_ids(path: Path) -> pa.ChunkedArray | list[str]:
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
    from ..vectors import export_clip_retrieval, export_datacomp, open_set

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
    from ..vectors import drop_set

    with Store.open(store_path) as s:
        drop_set(s, name)
    click.echo(f"dropped vector set {name!r}")
