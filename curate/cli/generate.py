"""``curate generate``: caption variants made by models behind an OpenAI-compatible server
(``fuse``, ``rewrite``) or by rules (``subcaptions``), and ``serve-check`` of a server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..store import Store
from .common import pairs, progress_option, show_table, store_option


@click.group()
def generate() -> None:
    """Generate caption variants (VLM captions, CapsFusion fusion, LaCLIP rewrites, VeCLIP, sub-captions) as
    ordinary variants."""


def _model_options(f: Any) -> Any:
    opts = [
        click.option("--url", "base_url", default=None,
                     help="The OpenAI-compatible server (vLLM, llama.cpp's llama-server, ...); default "
                          "$OPENAI_BASE_URL, else http://127.0.0.1:8000/v1."),
        click.option("--model", default=None, help="The served model to use (default: the server's only/first one)."),
        click.option("--template", default=None, help="A bundled template name or a template TOML file."),
        click.option("--concurrency", type=int, default=None, help="Requests in flight (default 8)."),
        click.option("--max-tokens", type=int, default=None, help="Completion tokens per output."),
        click.option("--temperature", type=float, default=None, help="Sampling temperature."),
        click.option("--seed", type=int, default=None, help="Base seed (each request's seed derives from it)."),
        click.option("--stop", multiple=True, help="A stop sequence (repeat for several)."),
        click.option("--logit-bias", multiple=True, metavar="TOKEN_ID=BIAS",
                     help="OpenAI logit_bias entry, e.g. 2=-100 (repeat for several)."),
        click.option("--guard-min-retention", default=None,
                     help="Knowledge guard threshold in [0, 1], or 'off' (default 0.8)."),
        click.option("--guard-final", type=click.Choice(["flag", "fallback"]), default=None,
                     help="After the guard's retries: keep the output flagged, or fall back to the raw caption."),
        click.option("--guard-retries", type=int, default=None,
                     help="Regenerations with the stricter template before --guard-final (default 1)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _run_options(f: Any) -> Any:
    opts = [
        click.option("--batch-size", type=int, default=None,
                     help="Inputs per committed batch (default: 8 x --concurrency, at least 64)."),
        click.option("--limit", type=int, default=None, help="Generate for at most this many pending inputs."),
        click.option("--dry-run", is_flag=True, help="Print pending inputs, estimated tokens and time; write nothing."),
        click.option("--preview", type=int, default=None, metavar="N",
                     help="Generate for N pending inputs and print input and output side by side; write nothing."),
        click.option("-c", "--config", "config", multiple=True, metavar="KEY=VALUE",
                     help="Any stage config field, e.g. -c max_input_tokens=256."),
        progress_option(),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _model_config(base_url: str | None, model: str | None, template: str | None, concurrency: int | None,
                  max_tokens: int | None, temperature: float | None, seed: int | None, stop: tuple[str, ...],
                  logit_bias: tuple[str, ...], guard_min_retention: str | None, guard_final: str | None,
                  guard_retries: int | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"base_url": base_url} if base_url else {}
    if stop:
        cfg["stop"] = list(stop)
    if logit_bias:
        bias = {}
        for item in logit_bias:
            tok, sep, val = item.partition("=")
            try:
                bias[str(int(tok))] = float(val)
            except ValueError:
                raise click.BadParameter(f"expected TOKEN_ID=BIAS, got {item!r}", param_hint="--logit-bias") from None
            if not sep:
                raise click.BadParameter(f"expected TOKEN_ID=BIAS, got {item!r}", param_hint="--logit-bias")
        cfg["logit_bias"] = bias
    for k, v in (("model", model), ("template", template), ("concurrency", concurrency), ("max_tokens", max_tokens),
                 ("temperature", temperature), ("seed", seed), ("guard_final", guard_final),
                 ("guard_retries", guard_retries)):
        if v is not None:
            cfg[k] = v
    if guard_min_retention is not None:
        if guard_min_retention.lower() == "off":
            cfg["guard_min_retention"] = None
        else:
            try:
                cfg["guard_min_retention"] = float(guard_min_retention)
            except ValueError:
                raise click.BadParameter(f"expected a number in [0, 1] or 'off', got {guard_min_retention!r}",
                                         param_hint="--guard-min-retention") from None
    return cfg


def _go(store_path: Path, name: str, cfg: dict[str, Any], batch_size: int | None, limit: int | None, dry_run: bool,
        preview: int | None, progress: bool | None) -> None:
    from ..generate.run import dry_run as do_dry_run
    from ..generate.run import preview as do_preview
    from ..registry import build_stage
    from ..runner import RunOptions, run_stage
    from ..stages.generate import _Generated

    stage = build_stage(name, cfg)
    assert isinstance(stage, _Generated)
    with Store.open(store_path) as s:
        rate = None
        if preview is not None:
            p = do_preview(s, stage, preview)
            if not p.rows:
                click.echo("nothing pending")
            else:
                import polars as pl

                show_table(pl.DataFrame(p.rows), max_rows=max(40, len(p.rows)))
                click.echo(f"preview: {len(p.rows)} outputs in {p.seconds:.2f}s, {p.tokens_per_s:,.0f} completion "
                           "tokens/s; nothing was written")
                rate = p.tokens_per_s or None
        if dry_run:
            for line in do_dry_run(s, stage, rate=rate).lines():
                click.echo(line)
        if dry_run or preview is not None:
            return
        batch_size = batch_size or stage.preferred_batch_size() or 64
        res = run_stage(s, stage, RunOptions(batch_size=batch_size, limit=limit, progress=progress))
        click.echo(res.summary())
        rows = s.con.execute(
            "SELECT o.status, coalesce(o.action, '-') AS action, count(*) AS outputs FROM "
            "(SELECT unnest(outputs) AS o FROM generations WHERE run_id = ?) GROUP BY ALL ORDER BY outputs DESC",
            [res.run_id]).fetchall()
        if rows:
            click.echo("outputs: " + ", ".join(f"{n:,} {st}" + (f" ({a})" if a not in ("-", "generated") else "")
                                               for st, a, n in rows))
        none = s.con.execute(
            "SELECT status, count(*) FROM generations WHERE run_id = ? AND len(outputs) = 0 GROUP BY ALL "
            "ORDER BY 2 DESC, 1", [res.run_id]).fetchall() if s.has_table("generations") else []
        if none:
            click.echo(f"inputs with no output: {sum(n for _, n in none):,} ("
                       + ", ".join(f"{n:,} {st}" for st, n in none) + ")")
        guard = s.con.execute("""
            SELECT last_action, count(*) AS samples, count(*) FILTER (WHERE regenerated) AS regenerated FROM (
                SELECT input_id, arg_max(action, attempt) AS last_action, bool_or(action = 'regenerate') AS regenerated
                FROM generation_guard WHERE run_id = ? GROUP BY input_id, index)
            GROUP BY ALL ORDER BY samples DESC""", [res.run_id]).fetchall() if s.has_table("generations") else []
        if guard:
            click.echo("guard (the last decision per output): " + ", ".join(
                f"{n:,} {a}" + (f" ({r:,} after regenerating)" if r else "") for a, n, r in guard))


@generate.command("fuse")
@store_option
@click.option("--raw", "raw_variant", default="raw", show_default=True, help="The alt-text variant.")
@click.option("--synthetic", "synthetic_variant", default="synthetic", show_default=True,
              help="The synthetic caption variant fused with it.")
@click.option("--variant", default="fused", show_default=True, help="The variant the fused captions get.")
@_model_options
@_run_options
def fuse_cmd(store_path: Path, raw_variant: str, synthetic_variant: str, variant: str, batch_size: int | None,
             limit: int | None, dry_run: bool, preview: int | None, config: tuple[str, ...], progress: bool | None,
             **model: Any) -> None:
    """CapsFusion: fuse each raw caption with the sample's synthetic caption (generate.fuse.v1, resumable)."""
    cfg = {**_model_config(**model), "raw_variant": raw_variant, "synthetic_variant": synthetic_variant,
           "variant": variant, **pairs(config, "--config")}
    _go(store_path, "generate.fuse.v1", cfg, batch_size, limit, dry_run, preview, progress)


@generate.command("rewrite")
@store_option
@click.option("--of", "of_variant", default="raw", show_default=True, help="The variant whose captions are rewritten.")
@click.option("--variant", default="rewrite", show_default=True, help="The variant the rewrites get.")
@click.option("-k", "k", type=int, default=4, show_default=True, help="Rewrites per caption.")
@click.option("--examples", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSONL of in-context input/output pairs (LaCLIP's meta_input_output_pairs.jsonl works).")
@click.option("--n-examples", type=int, default=3, show_default=True, help="In-context examples per request.")
@_model_options
@_run_options
def rewrite_cmd(store_path: Path, of_variant: str, variant: str, k: int, examples: Path | None, n_examples: int,
                batch_size: int | None, limit: int | None, dry_run: bool, preview: int | None, config: tuple[str, ...],
                progress: bool | None, **model: Any) -> None:
    """LaCLIP: k rewrites of each caption with in-context examples (generate.rewrite.v1, resumable)."""
    cfg = {**_model_config(**model), "of_variant": of_variant, "variant": variant, "k": k, "n_examples": n_examples,
           **({"examples": str(examples)} if examples else {}), **pairs(config, "--config")}
    _go(store_path, "generate.rewrite.v1", cfg, batch_size, limit, dry_run, preview, progress)


@generate.command("caption")
@store_option
@click.option("--variant", default="synthetic", show_default=True, help="The variant the captions get.")
@click.option("--backend", type=click.Choice(["openai", "transformers"]), default="openai", show_default=True,
              help="A VLM behind --url, or an in-process transformers captioner (--local-model).")
@click.option("--local-model", default=None,
              help="transformers backend: a model folder (save_pretrained) or a hub id in the local cache.")
@click.option("--device", default=None, help="transformers backend: cpu, cuda, cuda:1 (default: cuda when present).")
@click.option("--max-image-side", type=int, default=None,
              help="Shrink larger images to this long side before sending (default 1024).")
@click.option("--source", "sources", multiple=True, help="Only samples of this source (repeat for several).")
@_model_options
@_run_options
def caption_cmd(store_path: Path, variant: str, backend: str, local_model: str | None, device: str | None,
                max_image_side: int | None, sources: tuple[str, ...], batch_size: int | None, limit: int | None,
                dry_run: bool, preview: int | None, config: tuple[str, ...], progress: bool | None,
                **model: Any) -> None:
    """Caption each sample's image (generate.caption.v1, resumable): a VLM or BLIP-class model."""
    cfg = {**_model_config(**model), "variant": variant, "backend": backend, "sources": list(sources)}
    for k, v in (("local_model", local_model), ("device", device), ("max_image_side", max_image_side)):
        if v is not None:
            cfg[k] = v
    cfg.update(pairs(config, "--config"))
    _go(store_path, "generate.caption.v1", cfg, batch_size, limit, dry_run, preview, progress)


@generate.command("vec")
@store_option
@click.option("--raw", "raw_variant", default="raw", show_default=True, help="The alt-text variant.")
@click.option("--variant", default="vec", show_default=True, help="The variant the fused captions get.")
@click.option("--vlm-url", default=None, help="The VLM's server (default: --url).")
@click.option("--vlm-model", default=None, help="The VLM's served model (default: its only/first one).")
@click.option("--vlm-template", default=None, help="The VLM step's template (default vec-caption-v1).")
@click.option("--vlm-max-tokens", type=int, default=None, help="Completion tokens of the VLM's caption (default 128).")
@_model_options
@_run_options
def vec_cmd(store_path: Path, raw_variant: str, variant: str, vlm_url: str | None, vlm_model: str | None,
            vlm_template: str | None, vlm_max_tokens: int | None, batch_size: int | None, limit: int | None, dry_run: bool,
            preview: int | None, config: tuple[str, ...], progress: bool | None, **model: Any) -> None:
    """VeCLIP: a VLM's visual-enriched caption fused with the alt-text by an LLM (generate.vec.v1, resumable)."""
    cfg = {**_model_config(**model), "raw_variant": raw_variant, "variant": variant}
    for k, v in (("vlm_base_url", vlm_url), ("vlm_model", vlm_model), ("vlm_template", vlm_template),
                 ("vlm_max_tokens", vlm_max_tokens)):
        if v is not None:
            cfg[k] = v
    cfg.update(pairs(config, "--config"))
    _go(store_path, "generate.vec.v1", cfg, batch_size, limit, dry_run, preview, progress)


@generate.command("subcaptions")
@store_option
@click.option("--of", "of_variants", multiple=True, default=("synthetic",), show_default=True,
              help="Variant(s) whose captions are split (repeat for several).")
@click.option("--variant", default="subcap", show_default=True, help="The variant the pieces get.")
@click.option("--no-sentences", is_flag=True, help="No sentence splits (prefixes only).")
@click.option("--prefix-words", default="", help="Comma list of word budgets for prefixes, e.g. 10,20.")
@click.option("--min-words", type=int, default=3, show_default=True, help="Pieces shorter than this are dropped.")
@click.option("--batch-size", default=2000, show_default=True, help="Captions per committed batch.")
@click.option("--limit", type=int, default=None, help="Split at most this many pending captions.")
@progress_option()
def subcaptions_cmd(store_path: Path, of_variants: tuple[str, ...], variant: str, no_sentences: bool,
                    prefix_words: str, min_words: int, batch_size: int, limit: int | None,
                    progress: bool | None) -> None:
    """Sentence splits and word-budget prefixes of long captions (generate.subcaptions.v1, resumable)."""
    try:
        budgets = tuple(int(x) for x in prefix_words.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {prefix_words!r}",
                                 param_hint="--prefix-words") from None
    cfg = {"of_variants": list(of_variants), "variant": variant, "sentences": not no_sentences,
           "prefix_words": list(budgets), "min_words": min_words}
    _go(store_path, "generate.subcaptions.v1", cfg, batch_size, limit, False, None, progress)


@generate.command("export-distill")
@store_option
@click.option("--task", type=click.Choice(["fuse", "rewrite", "vec"]), default="fuse", show_default=True,
              help="Whose outputs become pairs.")
@click.option("--variant", default=None, help="Only outputs of this variant.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The chat-format JSONL to write.")
@click.option("--include-flagged", is_flag=True, help="Also outputs the knowledge guard flagged.")
@click.option("--min-retention", type=float, default=None,
              help="Only outputs whose guard retention is at least this (0-1).")
@click.option("--rule", "guard_rule", type=click.Choice(["strict", "lenient"]), default="strict", show_default=True,
              help="Which retention --min-retention reads.")
@click.option("--template", default=None, help="The template file the outputs were made with (when not bundled).")
@click.option("--no-metadata", is_flag=True, help="Write only the messages.")
@click.option("--no-system", is_flag=True, help="Leave the system message out.")
def export_distill_cmd(store_path: Path, task: str, variant: str | None, out: Path, include_flagged: bool,
                       min_retention: float | None, guard_rule: str, template: str | None, no_metadata: bool,
                       no_system: bool) -> None:
    """Write (inputs -> accepted output) pairs as chat JSONL, to fine-tune a small model on them (CapsFusion)."""
    from ..generate.distill import export_distill

    with Store.open(store_path) as s:
        res = export_distill(s, out, task=task, variant=variant, include_flagged=include_flagged,
                             min_retention=min_retention, guard_rule=guard_rule, template=template,
                             metadata=not no_metadata, system=not no_system)
    click.echo(res.summary())


@generate.command("serve-check")
@click.argument("url")
@click.option("--model", default=None, help="The served model to check (default: the only/first one).")
def serve_check_cmd(url: str, model: str | None) -> None:
    """Check an OpenAI-compatible server: its model, a round-trip latency, whether image input works."""
    from ..generate.serve_check import serve_check

    report = serve_check(url, model=model)
    for k, v in report.items():
        click.echo(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
