"""``curate mix``: run a mixing policy and write a training manifest, a thin layer over
:mod:`curate.mix`; and ``curate manifest-audit`` for a manifest written earlier."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..store import Store
from .common import max_rows_option, show_table, store_option

if TYPE_CHECKING:
    from ..mix import MixResult


def _counts(res: MixResult) -> None:
    c = res.counts
    click.echo(f"policy {res.policy.name} (seed {res.policy.seed}): pool {c['pool_samples']:,} samples, "
               f"selected {c['selected']:,}, with a caption {c['with_caption']:,}, manifest {c['samples']:,}")
    for t in res.thresholds:
        click.echo(f"  threshold: {t['attribute']}{'[' + t['variant'] + ']' if t['variant'] else ''} {t['op']} "
                   f"{t['threshold']:.6g} (keeps {t['fraction']:g} of {t['pool_values']:,} pool values)")
    click.echo("  per variant: " + ", ".join(f"{k} {v:,}" for k, v in c["by_variant"].items()))
    click.echo("  per source: " + ", ".join(f"{k} {v:,}" for k, v in c["by_source"].items()))
    w = c["weight"]
    if w["min"] is not None:
        click.echo(f"  weight: min {w['min']:.4g}, mean {w['mean']:.4g}, max {w['max']:.4g}, sum {w['sum']:,.4g}")
    if "budget" in c and "groups" in c["budget"]:
        b = c["budget"]
        click.echo(f"  budget by {b['by']} ({b['rounding']}), total {b['total']:,}: " + ", ".join(
            f"{g} {v['taken']:,}/{v['quota']:,} of {v['available']:,}" for g, v in b["groups"].items()))


@click.command()
@click.argument("policy_file", type=click.Path(dir_okay=False, path_type=Path))
@store_option
@click.option("--dry-run", is_flag=True, help="Print counts and the audit; write nothing.")
@click.option("--audit", "show_audit", is_flag=True, help="Print the pool-vs-manifest audit after writing.")
@click.option("--seed", type=int, help="Override the policy's seed.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv", "tsv", "json", "jsonl", "npy"]),
              help="Override the policy's output format.")
@click.option("--name", help="Manifest file stem (default: output.name, else the policy name).")
@click.option("--images", type=click.Choice(["local", "any"]), default=None,
              help="csv/tsv: only samples whose image is a local file (local, the default), or also url rows (any).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of STORE/manifests/.")
@click.option("--print-policy", is_flag=True, help="Print the resolved policy (JSON) and exit; no store needed.")
@click.option("--vocabulary", default=None,
              help="Audit concept coverage for this vocabulary (default: the policy's, else the store's only one).")
def mix(policy_file: Path, store_path: Path, dry_run: bool, show_audit: bool, seed: int | None, fmt: str | None,
        name: str | None, images: str | None, out: Path | None, print_policy: bool, vocabulary: str | None) -> None:
    """Run the mixing policy POLICY_FILE (TOML) and write a training manifest with its sidecar."""
    from ..config import from_dict
    from ..mix import load_policy, run_policy, write_manifest
    from ..mix.audit import audit
    from ..mix.policy import Output

    policy = load_policy(policy_file)
    if seed is not None:
        policy = policy.with_seed(seed)
    if fmt or name or images:
        data = {**dataclasses.asdict(policy.output), **({"format": fmt} if fmt else {}),
                **({"name": name} if name else {}), **({"images": images} if images else {})}
        if fmt and fmt != "npy":
            data["repeat_factor"] = None
        if fmt and fmt not in ("csv", "tsv") and not images:
            data["images"] = "local"
        policy = dataclasses.replace(policy, output=from_dict(Output, data, "--format/--name/--images"))
    if print_policy:
        click.echo(json.dumps({"policy_hash": policy.hash(), **policy.to_dict()}, indent=2))
        return
    with Store.open(store_path, read_only=dry_run) as s:
        res = run_policy(s, policy)
        _counts(res)
        if not dry_run:
            side = write_manifest(s, policy, path=out, res=res)
            click.echo(f"wrote {side['rows']:,} rows to {side['path']} ({policy.output.format}); sidecar {side['sidecar']}")
            excluded = (side.get("open_clip") or {}).get("excluded") or {}
            if excluded and policy.output.images == "local":
                why = ", ".join(f"{reason}: {n:,}" for reason, n in excluded.items())
                hint = ("; their images are in img2dataset shards: write webdataset shards with `curate shards` "
                        "(open_clip --dataset-type webdataset)" if "image in an img2dataset shard" in excluded else "")
                click.echo(f"  left out {sum(excluded.values()):,} samples whose image is not a local file ({why}){hint}")
        if dry_run or show_audit:
            for title, df in audit(s, res, vocabulary):
                click.echo(f"\n{title}")
                show_table(df)
        if dry_run:
            click.echo("\ndry run: nothing written")


@click.command("manifest-audit")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@store_option
@click.option("--vocabulary", default=None,
              help="Concept coverage for this vocabulary (default: the policy's, else the store's only one).")
@click.option("--allow-mismatch", "--force", "allow_mismatch", is_flag=True,
              help="Audit even when the file differs from its sidecar or the pool from the store.")
@max_rows_option()
def manifest_audit(manifest: Path, store_path: Path, vocabulary: str | None, allow_mismatch: bool, max_rows: int) -> None:
    """Audit a manifest written earlier (any format, with its sidecar) against its pool.

    The file's sha256 and row count are checked against the sidecar and the pool's
    fingerprint and stage runs against the store; each difference is one line, and any
    difference exits 3 unless --allow-mismatch."""
    from ..errors import InputError
    from ..mix.audit import audit_manifest, check_manifest

    with Store.open(store_path, read_only=True) as s:
        check = check_manifest(s, manifest)
        for line in check.problems:
            click.echo(f"{'warning' if allow_mismatch else 'mismatch'}: {line}", err=True)
        if check.problems and not allow_mismatch:
            raise InputError(f"manifest {manifest}: {len(check.problems)} difference(s) from its sidecar or the store "
                             "(listed above); --allow-mismatch audits it anyway")
        for title, df in audit_manifest(s, manifest, vocabulary, allow_mismatch=True, checked=check):
            click.echo(f"\n{title}")
            show_table(df, max_rows)
