"""``curate knowledge``: spaCy named entities per caption (``knowledge.spacy_ner.v1``) and
the knowledge audits (density, strict and lenient retention, entity support)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError
from ..store import Store
from .common import executor_options, max_rows_option, pairs, progress_option, run_options, show_table, store_option


@click.group()
def knowledge() -> None:
    """Knowledge scoring: spaCy named entities per caption, retention and entity support."""


@knowledge.command("score")
@store_option
@click.option("--model", default=None, help="spaCy pipeline (package or path; default en_core_web_sm).")
@click.option("--workers", type=int, default=None,
              help="Worker processes, one spaCy each (default: the machine's cores, at most 8).")
@click.option("--batch-size", default=1000, show_default=True, help="Captions per batch (one commit each).")
@click.option("--limit", type=int, default=None, help="Score at most this many pending captions, then stop.")
@click.option("-c", "--config", "config", multiple=True, metavar="KEY=VALUE",
              help="Stage config, e.g. -c case_fix=none -c knowledge_labels=[PERSON,ORG].")
@progress_option()
@executor_options
def knowledge_score(store_path: Path, model: str | None, workers: int | None, batch_size: int, limit: int | None,
                    config: tuple[str, ...], progress: bool | None, executor: str, ray_address: str | None,
                    gpus_per_worker: float) -> None:
    """Run knowledge.spacy_ner.v1 over the captions not scored yet (resumable)."""
    from ..registry import build_stage
    from ..runner import run_stage

    cfg = pairs(config, "--config")
    if model:
        cfg["model"] = model
    stage = build_stage("knowledge.spacy_ner.v1", cfg)
    if workers is None:
        import os

        workers = max(1, min(8, os.cpu_count() or 1))
    with Store.open(store_path) as s:
        res = run_stage(s, stage, run_options(executor, ray_address, gpus_per_worker, batch_size=batch_size,
                                              workers=workers, limit=limit, progress=progress))
    click.echo(res.summary())


KNOWLEDGE_REPORT = (
    ("Knowledge per variant (knowledge.by_variant)", "knowledge.by_variant", ()),
    ("Knowledge per source and variant (knowledge.by_source)", "knowledge.by_source", ()),
    ("Raw knowledge entities kept by other variants, strict (whole name) and lenient (a partial name counts) "
     "(knowledge.retention)", "knowledge.retention", ("raw",)),
    ("Where each variant's knowledge entities come from: the raw caption, the synthetic caption only, or neither "
     "(knowledge.support)", "knowledge.support", ("raw", "synthetic")),
    ("Captions per status (knowledge.status)", "knowledge.status", ()),
)


@knowledge.command("report")
@store_option
@click.option("--raw", default="raw", show_default=True, help="The variant holding the original alt-text.")
@click.option("--synthetic", default="synthetic", show_default=True, help="The synthetic-caption variant.")
@max_rows_option()
def knowledge_report(store_path: Path, raw: str, synthetic: str, max_rows: int) -> None:
    """Print the knowledge audits: density per variant and source, strict and lenient retention, entity support."""
    with Store.open(store_path, read_only=True) as s:
        if "caption_knowledge" not in s.tables():
            raise ConfigError(f"store {store_path} has no knowledge scores yet; run `curate knowledge score` first")
        given = {"raw": raw, "synthetic": synthetic}
        for title, qname, params in KNOWLEDGE_REPORT:
            click.echo(f"\n{title}")
            show_table(s.query(qname, **{p: given[p] for p in params}).pl(), max_rows)
