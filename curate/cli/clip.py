"""`curate download` (img2dataset, then ingest) and `curate embed` (open_clip embeddings
and CLIP scores). Thin wrappers over :mod:`curate.download` and :mod:`curate.stages.clip`."""

from __future__ import annotations

from pathlib import Path

import click

from ..store import Store
from .common import executor_options, pairs, progress_option, run_options, show_table, store_option


@click.command()
@store_option
@click.option("--source", required=True, help="Store source whose samples' URLs to download (and to ingest under).")
@click.option("--urls", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A URL file (parquet/csv/tsv/jsonl with url[, caption, uid]) instead of the store's samples.")
@click.option("--out", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="img2dataset output folder (webdataset shards in list-<hash>/ per URL list); rerun the command to resume.")
@click.option("--img2dataset-python", envvar="CURATE_IMG2DATASET_PYTHON",
              help="Python with img2dataset installed, e.g. .venv-img2dataset/bin/python "
                   "(env CURATE_IMG2DATASET_PYTHON; default: this Python).")
@click.option("--image-size", default=256, show_default=True)
@click.option("--resize-mode", default="border", show_default=True, help="img2dataset resize_mode.")
@click.option("--processes", default=1, show_default=True)
@click.option("--threads", default=16, show_default=True)
@click.option("--timeout", default=10, show_default=True, help="Seconds per URL.")
@click.option("--shard-size", default=10_000, show_default=True, help="Samples per shard.")
@click.option("--option", "options", multiple=True, help="Another img2dataset option, KEY=VALUE (repeatable).")
@click.option("--retry-failed", is_flag=True,
              help="Download again only the samples whose last attempt failed with a --retry-status class.")
@click.option("--retry-status", "retry_status", multiple=True, metavar="STATUS",
              help="With --retry-failed: what to retry (repeatable, replaces the default timeout, 5xx, 429): "
                   "an HTTP status (404), 4xx, 5xx, timeout, connection, resize, other or all.")
@progress_option()
def download(store_path: Path, source: str, urls: Path | None, output: Path, img2dataset_python: str | None,
             image_size: int, resize_mode: str, processes: int, threads: int, timeout: int, shard_size: int,
             options: tuple[str, ...], retry_failed: bool, retry_status: tuple[str, ...],
             progress: bool | None) -> None:
    """Download images with img2dataset and ingest the result (statuses in `downloads`)."""
    from ..download import RETRY_DEFAULT, check_retry_status
    from ..download import download as run
    from ..errors import ConfigError

    if retry_status and not retry_failed:
        raise ConfigError("--retry-status needs --retry-failed")
    selectors = check_retry_status(retry_status or RETRY_DEFAULT)
    opts = {"image_size": image_size, "resize_mode": resize_mode, "processes_count": processes,
            "thread_count": threads, "timeout": timeout, "number_sample_per_shard": shard_size,
            **pairs(options, "--option")}
    with Store.open(store_path) as store:
        res = run(store, output, source=source, urls=urls, img2dataset_python=img2dataset_python, options=opts,
                  retry_failed=retry_failed, retry_status=selectors, progress=progress)
        click.echo(res.summary())
        if res.errors:
            import pyarrow as pa

            show_table(pa.table({"error": list(res.errors), "urls": list(res.errors.values())}), max_rows=10)


@click.command()
@store_option
@click.option("--model", default="ViT-B-32", show_default=True, help="open_clip model name.")
@click.option("--pretrained", default="laion2b_s34b_b79k", show_default=True,
              help="open_clip pretrained tag, or a local checkpoint file (offline machines; known by the sha256 of "
                   "its bytes, not its path).")
@click.option("--model-config", type=click.Path(dir_okay=False, exists=True),
              help="An open_clip model JSON config to register first (its file stem is the model name).")
@click.option("--model-id", help="The model label in clip_scores and vector sets (default MODEL/TAG).")
@click.option("--images-only", is_flag=True, help="Embed sample images only (clip.embed_image.v1, no captions).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True)
@click.option("--batch-size", default=1024, show_default=True, help="Rows per committed batch.")
@click.option("--model-batch-size", default=256, show_default=True, help="Images/texts per forward pass.")
@click.option("--decode-workers", default=-1, show_default=True, help="DataLoader decode processes (-1: cores - 1).")
@click.option("--workers", default=1, show_default=True, help="Runner processes (each loads the model).")
@click.option("--threads", type=int, help="torch CPU threads per process.")
@click.option("--limit", type=int, help="Process at most this many pending rows (resumable).")
@click.option("--finalize-only", is_flag=True, help="Only register the vectors of committed rows (after a pipeline run).")
@progress_option()
@executor_options
def embed(store_path: Path, model: str, pretrained: str, model_config: str | None, model_id: str | None,
          images_only: bool, device: str, precision: str, batch_size: int, model_batch_size: int,
          decode_workers: int, workers: int, threads: int | None, limit: int | None, finalize_only: bool,
          progress: bool | None, executor: str, ray_address: str | None, gpus_per_worker: float) -> None:
    """CLIP image/text embeddings and the CLIP score of every caption (clip.score.v1)."""
    from ..stages.clip import ClipImage, ClipScore, finalize_vectors
    from ..stages.clip import embed as run

    cls = ClipImage if images_only else ClipScore
    given = {"model": model, "pretrained": pretrained, "model_config": model_config, "model_id": model_id,
             "device": device, "precision": precision, "model_batch_size": model_batch_size,
             "decode_workers": decode_workers, "threads": threads}
    stage = cls.from_config({k: v for k, v in given.items() if v is not None})
    assert isinstance(stage, (ClipImage, ClipScore))  # from_config builds a cls; it is typed as returning a Stage
    with Store.open(store_path) as store:
        if finalize_only:
            sets = finalize_vectors(store, stage)
        else:
            out = run(store, stage, run_options(executor, ray_address, gpus_per_worker, batch_size=batch_size,
                                                workers=workers, progress=progress, limit=limit))
            click.echo(out["run"].summary())
            click.echo(f"{out['images']:,} images ({out['images_per_s']:,.1f} images/s), "
                       f"{out['texts']:,} texts ({out['texts_per_s']:,.1f} texts/s)")
            click.echo(f"weights sha256 {out['weights_sha256'] or '(none: the tag has no locally cached file)'}, "
                       f"device {out['device']}")
            sets = out["sets"]
        for s in sets:
            click.echo(s.summary())
        if not images_only:
            show_table(store.query("clip.status").to_arrow_table(), max_rows=20)
