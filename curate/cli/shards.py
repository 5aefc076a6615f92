"""``curate shards``: webdataset shards from a training manifest, a thin layer over
:mod:`curate.shards`. Option defaults are :class:`curate.shards.ShardOptions`'s."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from ..errors import ConfigError, InputError
from ..store import CATALOG, Store
from .common import progress_option, store_option


def _default(name: str) -> object:
    from ..shards import ShardOptions

    return getattr(ShardOptions(), name)


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@store_option
@click.option("--shard-size", type=int, default=_default("shard_size"), show_default=True, help="Samples per shard.")
@click.option("--workers", type=int, default=_default("workers"), show_default=True,
              help="Writer processes, each writing whole shards.")
@click.option("--seed", type=int, default=None, help="Shuffle, repeat and caption seed (default: the manifest's).")
@click.option("--shuffle-buffer", type=int, default=_default("shuffle_buffer"), show_default=True,
              help="Samples in the seeded shuffle buffer (0: manifest order).")
@click.option("--repeat/--no-repeat", default=_default("repeat"), show_default=True,
              help="Honour weights by repetition (floor(w) copies + a seeded draw of the fraction).")
@click.option("--repeat-factor", type=float, default=_default("repeat_factor"), show_default=True,
              help="Copies per unit of weight.")
@click.option("--max-repeats", type=int, default=_default("max_repeats"), show_default=True,
              help="At most this many copies of one row.")
@click.option("--verify-images", is_flag=True, help="Decode every image first; undecodable ones are excluded.")
@click.option("--reencode", type=click.Choice(["jpeg"]), default=None,
              help="Re-encode images that are not JPEG or exceed --max-size (default: stored bytes as they are).")
@click.option("--max-size", type=int, default=None, help="With --reencode: longest side in pixels.")
@click.option("--jpeg-quality", type=int, default=_default("jpeg_quality"), show_default=True,
              help="With --reencode: JPEG quality.")
@click.option("--caption-epoch", type=int, default=_default("caption_epoch"), show_default=True,
              help="Draw the .txt captions of this epoch (one shard folder per epoch for open_clip 3.3.0).")
@click.option("--caption-slots", type=int, default=None,
              help="Slot keys c0..cK-1 in each .json (default: the smallest exact K up to 60).")
@click.option("--image-root", type=click.Path(file_okay=False), default=None,
              help="Folder that relative image paths are relative to (default: the current folder).")
@click.option("--overwrite", is_flag=True, help="Replace shards of another manifest or other options in OUT.")
@progress_option()
def shards(manifest: Path, out: Path, store_path: Path, shard_size: int, workers: int, seed: int | None,
           shuffle_buffer: int, repeat: bool, repeat_factor: float, max_repeats: int, verify_images: bool,
           reencode: str | None, max_size: int | None, jpeg_quality: int, caption_epoch: int,
           caption_slots: int | None, image_root: str | None, overwrite: bool, progress: bool | None) -> None:
    """Write webdataset shards {00000..N}.tar of MANIFEST into the folder OUT, with
    sizes.json, per-shard stats and the shards.json sidecar (resumable: run it again)."""
    from ..shards import shard_options, write_shards
    from ..shards.read import open_manifest

    opts = shard_options({
        "shard_size": shard_size, "workers": workers, "seed": seed, "shuffle_buffer": shuffle_buffer,
        "repeat": repeat, "repeat_factor": repeat_factor, "max_repeats": max_repeats, "verify_images": verify_images,
        "reencode": reencode, "max_size": max_size, "jpeg_quality": jpeg_quality, "caption_epoch": caption_epoch,
        "caption_slots": caption_slots, "image_root": image_root, "overwrite": overwrite}, "curate shards")
    m = open_manifest(manifest)
    if m.needs_store:
        if not (store_path / CATALOG).exists():
            raise ConfigError(f"{manifest.name} has no image_shard/image_key columns (the json format): give the store "
                              f"it came from with --store (no store at {store_path})")
        with Store.open(store_path, read_only=True) as store:
            res = write_shards(m, out, opts, store=store, progress=progress)
    else:
        res = write_shards(m, out, opts, progress=progress)
    click.echo(res.summary())
    oc = res.sidecar["open_clip"]
    if res.counts["samples"]:
        click.echo("open_clip 3.3.0 (.txt captions): " + shlex.join(oc["args"]))
        click.echo("open_clip main (.json caption slots): add " + shlex.join(oc["json_text_args"]))
    click.echo(f"sidecar: {res.out / 'shards.json'}")
    if res.counts["rows"] and not res.counts["samples"]:
        raise InputError(f"no sample was written: none of the {res.counts['rows']:,} manifest rows has a readable "
                         "image (see excluded_rows in shards.json)")
