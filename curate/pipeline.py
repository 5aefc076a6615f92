"""Pipelines: TOML files that name ingest steps, stages and passes, validated whole before any work.

::

    [pipeline]
    name = "demo"
    description = "what it does"

    [[ingest]]                 # zero or more, run in order
    format = "capsfusion"      # a key of curate.ingest.FORMATS
    path = "../examples/data/capsfusion/example_data.json"   # relative to this file
    source = "capsfusion"
    # ...format options (see `curate ingest --help`)

    [[stage]]                  # zero or more, run in order
    name = "text.caption_stats.v1"   # a registry name (`curate stages`)
    batch_size = 10000
    workers = 1
    executor = "local"         # or "ray" (workers = Ray actors; see curate.runner)
    # ray_address = "auto"     # executor = "ray": join a running cluster instead of starting Ray here
    # gpus_per_worker = 1      # executor = "ray": GPUs per actor
    [stage.config]             # the stage's own fields

    [[dedup]]                  # zero or more caption dedup passes, after the stages
    variant = "synthetic"      # the fields of the pass dedup.captions.v1 (the keyword
    threshold = 0.8            # arguments of curate.dedup.text.dedup_captions)

    [[pass]]                   # zero or more whole-corpus passes, after the dedup passes
    name = "similarity.near.v1"      # a key of curate.registry.PASSES
    [pass.config]              # the pass's own fields
    set_name = "img"
    threshold = 0.95

    [[mix]]                    # zero or more mixing policies, after the passes
    policy = "policies/capsfusion_guard.toml"   # relative to this file
    seed = 0                   # optional overrides of the policy's seed and output name
    name = "my-manifest"

    [[shards]]                 # zero or more webdataset shard folders, last (curate.shards)
    mix = "my-manifest"        # the manifest of a [[mix]] step (its name), or
    # manifest = "m.parquet"   # a manifest file, relative to this file
    out = "shards/my-manifest" # the shard folder, relative to this file
    shard_size = 10000         # ...the fields of curate.shards.ShardOptions

Steps run in that order: ingests, stages, dedup passes, passes, mixes, shards (each kind
in file order). ``[[dedup]]`` is shorthand for ``[[pass]] name = "dedup.captions.v1"`` with the
step's keys as its config. Everything that can be checked without the store (formats,
options, stage and pass configs, policy files) is checked before any of them runs, by
the one config engine (:mod:`curate.config`); a pass's path fields
(``Pass.path_fields``) are resolved against the pipeline's folder.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import check, check_keys, from_dict, load_toml
from .errors import ConfigError
from .ingest import FORMATS, validate_options
from .passes.base import Pass
from .registry import build_stage, get_pass_class, get_stage_class, pass_names
from .runner import RunOptions
from .stages.base import Stage

if TYPE_CHECKING:
    from .store import Store


TOP_KEYS = {"pipeline", "ingest", "stage", "dedup", "pass", "mix", "shards"}
MIX_KEYS = {"policy", "seed", "name"}
SHARDS_KEYS = {"mix", "manifest", "out"}
PIPELINE_KEYS = {"name", "description"}
INGEST_KEYS = {"format", "path", "source"}
STAGE_KEYS = {"name", "config", "batch_size", "workers", "limit", "executor", "ray_address", "gpus_per_worker"}
PASS_KEYS = {"name", "config"}
#: a TOML array of tables: ``list[dict]``, the annotation :func:`curate.config.check` reads
#: (bare ``dict``, so that errors say "a list of a table"); built as a value, not a type alias
STEPS = types.GenericAlias(list, (dict,))


@dataclass
class IngestStep:
    format: str
    path: Path
    source: str | None
    options: dict[str, Any]

    def resolved(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path), "source": self.source, **self.options}


@dataclass
class StageStep:
    stage: Stage
    options: RunOptions

    def resolved(self) -> dict[str, Any]:
        return {"name": self.stage.registry_name(), "config_hash": self.stage.config_hash(),
                **self.options.resolved(), "config": self.stage.config()}


@dataclass
class DedupStep:
    """A ``[[dedup]]`` step: its keys as written, and the dedup.captions.v1 pass they build."""

    options: dict[str, Any]
    pass_: Pass

    def resolved(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass
class PassStep:
    pass_: Pass

    def resolved(self) -> dict[str, Any]:
        return {"name": self.pass_.registry_name(), "config_hash": self.pass_.config_hash(),
                "config": self.pass_.config()}


@dataclass
class MixStep:
    path: Path
    policy: Any  # curate.mix.Policy

    def resolved(self) -> dict[str, Any]:
        return {"policy": str(self.path), "name": self.policy.name, "seed": self.policy.seed,
                "policy_hash": self.policy.hash()}


@dataclass
class ShardsStep:
    """A ``[[shards]]`` step: the manifest (a file, or the manifest of the [[mix]] step
    named ``mix``), the output folder and the checked options."""

    mix: str | None
    manifest: Path | None
    out: Path
    options: Any  # curate.shards.ShardOptions

    def resolved(self) -> dict[str, Any]:
        from .config import to_dict

        where = {"mix": self.mix} if self.mix is not None else {"manifest": str(self.manifest)}
        return {**where, "out": str(self.out), **to_dict(self.options)}


@dataclass
class Pipeline:
    name: str
    description: str
    path: Path | None
    ingests: list[IngestStep] = field(default_factory=list)
    stages: list[StageStep] = field(default_factory=list)
    dedups: list[DedupStep] = field(default_factory=list)
    passes: list[PassStep] = field(default_factory=list)
    mixes: list[MixStep] = field(default_factory=list)
    shards: list[ShardsStep] = field(default_factory=list)

    def resolved(self) -> dict[str, Any]:
        """The pipeline as run: plain JSON. ``pass`` and ``shards`` are present when the
        pipeline has such steps (a pipeline without them resolves as it always has)."""
        out: dict[str, Any] = {"pipeline": {"name": self.name, "description": self.description},
                               "ingest": [s.resolved() for s in self.ingests],
                               "stage": [s.resolved() for s in self.stages],
                               "dedup": [s.resolved() for s in self.dedups]}
        if self.passes:
            out["pass"] = [s.resolved() for s in self.passes]
        out["mix"] = [s.resolved() for s in self.mixes]
        if self.shards:
            out["shards"] = [s.resolved() for s in self.shards]
        return out


def load_pipeline(path: str | Path) -> Pipeline:
    p = Path(path)
    return parse_pipeline(load_toml(p, "pipeline file"), base=p.parent, path=p)


def parse_pipeline(data: dict[str, Any], base: Path = Path("."), path: Path | None = None) -> Pipeline:
    where = str(path or "pipeline")
    check_keys(f"{where} top level", data, TOP_KEYS)
    head = check_keys(f"{where} [pipeline]", data.get("pipeline", {}), PIPELINE_KEYS)
    pipe = Pipeline(
        name=check(f"{where} pipeline.name", head.get("name", path.stem if path else "pipeline"), str),
        description=check(f"{where} pipeline.description", head.get("description", ""), str),
        path=path,
    )
    for i, step in enumerate(check(f"{where} ingest", data.get("ingest", []), STEPS)):
        pipe.ingests.append(_ingest_step(f"{where} ingest[{i}]", step, base))
    for i, step in enumerate(check(f"{where} stage", data.get("stage", []), STEPS)):
        pipe.stages.append(_stage_step(f"{where} stage[{i}]", step, base))
    for i, step in enumerate(check(f"{where} dedup", data.get("dedup", []), STEPS)):
        pipe.dedups.append(_dedup_step(f"{where} dedup[{i}]", step))
    for i, step in enumerate(check(f"{where} pass", data.get("pass", []), STEPS)):
        pipe.passes.append(_pass_step(f"{where} pass[{i}]", step, base))
    for i, step in enumerate(check(f"{where} mix", data.get("mix", []), STEPS)):
        pipe.mixes.append(_mix_step(f"{where} mix[{i}]", step, base))
    for i, step in enumerate(check(f"{where} shards", data.get("shards", []), STEPS)):
        pipe.shards.append(_shards_step(f"{where} shards[{i}]", step, base, pipe.mixes))
    return pipe


def _ingest_step(w: str, step: dict[str, Any], base: Path) -> IngestStep:
    if "format" not in step:
        raise ConfigError(f"{w}: missing key 'format' (one of {', '.join(FORMATS)})")
    fmt = check(f"{w}.format", step["format"], str)
    if fmt not in FORMATS:
        raise ConfigError(f"{w}.format: unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if "path" not in step:
        raise ConfigError(f"{w}: missing key 'path'")
    raw_path = Path(check(f"{w}.path", step["path"], str))
    full = raw_path if raw_path.is_absolute() else Path(os.path.abspath(base / raw_path))
    if not full.exists():
        raise ConfigError(f"{w}.path: {full} does not exist")
    source = check(f"{w}.source", step.get("source"), str | None)
    options = {k: v for k, v in step.items() if k not in INGEST_KEYS}
    try:
        options = validate_options(fmt, options, base=base)
    except ConfigError as e:
        raise ConfigError(f"{w}: {e}") from None
    return IngestStep(fmt, full, source, options)


def _stage_step(w: str, step: dict[str, Any], base: Path) -> StageStep:
    check_keys(w, step, STAGE_KEYS)
    if "name" not in step:
        raise ConfigError(f"{w}: missing key 'name' (a stage registry name)")
    name = check(f"{w}.name", step["name"], str)
    cfg = check(f"{w}.config", step.get("config", {}), dict)
    try:
        cfg = _resolve_paths(get_stage_class(name), cfg, base)  # a template or examples file beside the pipeline
        stage = build_stage(name, cfg)
    except ConfigError as e:
        raise ConfigError(f"{w}: {e}") from None
    # how the stage runs: the fields of RunOptions (its own checks prefixed with the step)
    run = {k: v for k, v in step.items() if k not in ("name", "config")}
    if "batch_size" not in run and stage.preferred_batch_size() is not None:
        run["batch_size"] = stage.preferred_batch_size()  # e.g. a generation stage: a batch is minutes of requests
    options = from_dict(RunOptions, run, w)
    if options.limit is not None and options.limit < 0:
        raise ConfigError(f"{w}.limit: must be 0 or more, got {options.limit}")
    return StageStep(stage, options)


def _dedup_step(w: str, step: dict[str, Any]) -> DedupStep:
    """The keys of a [[dedup]] step are the fields of the dedup.captions.v1 pass, checked
    by building it."""
    cls = get_pass_class("dedup.captions.v1")
    return DedupStep(dict(step), from_dict(cls, step, w))


def _pass_step(w: str, step: dict[str, Any], base: Path) -> PassStep:
    check_keys(w, step, PASS_KEYS)
    if "name" not in step:
        raise ConfigError(f"{w}: missing key 'name' (a pass registry name: {', '.join(pass_names())})")
    name = check(f"{w}.name", step["name"], str)
    cfg = check(f"{w}.config", step.get("config", {}), dict)
    try:
        cls = get_pass_class(name)
        built = cls.from_config(_resolve_paths(cls, cfg, base))
    except ConfigError as e:
        raise ConfigError(f"{w}: {e}") from None
    return PassStep(built)


def _resolve_paths(cls: type[Pass] | type[Stage], cfg: dict[str, Any], base: Path) -> dict[str, Any]:
    """``cfg`` with the pass's (or stage's) relative path fields resolved against the pipeline's folder:
    a value that names a file or folder there, or looks like a path (has a ``/`` or a
    suffix); anything else (a bundled vocabulary name) is kept as written."""
    out = dict(cfg)
    for k in cls.path_fields:
        v = out.get(k)
        if not isinstance(v, str) or not v or Path(v).is_absolute():
            continue
        full = Path(os.path.abspath(base / v))
        if full.exists() or "/" in v or Path(v).suffix:
            out[k] = str(full)
    return out


def _mix_step(w: str, step: dict[str, Any], base: Path) -> MixStep:
    import dataclasses

    from .mix import load_policy

    check_keys(w, step, MIX_KEYS)
    if "policy" not in step:
        raise ConfigError(f"{w}: missing key 'policy' (a policy TOML file, relative to the pipeline)")
    raw = Path(check(f"{w}.policy", step["policy"], str))
    full = raw if raw.is_absolute() else Path(os.path.abspath(base / raw))
    try:
        policy = load_policy(full)
    except ConfigError as e:
        raise ConfigError(f"{w}: {e}") from None
    if "seed" in step:
        policy = dataclasses.replace(policy, seed=check(f"{w}.seed", step["seed"], int))
    if "name" in step:
        name = check(f"{w}.name", step["name"], str)
        try:
            policy = dataclasses.replace(policy, output=dataclasses.replace(policy.output, name=name))
        except ConfigError as e:
            raise ConfigError(f"{w}.name: {e}") from None
    return MixStep(full, policy)


def _preflight_mixes(store: Store, pipe: Pipeline, pass_steps: list[DedupStep | PassStep]) -> None:
    """Every attribute table a mix needs is in the store or written by an earlier step of
    this pipeline; otherwise a ConfigError before any ingest runs."""
    if not pipe.mixes:
        return
    from .mix.attributes import producer_of
    from .mix.check import required_tables

    made = set(store.tables()) | {s.stage.output_table for s in pipe.stages}
    made |= {t for p in pass_steps for t in p.pass_.writes}
    for mstep in pipe.mixes:
        for table, why in required_tables(mstep.policy).items():
            if table not in made:
                raise ConfigError(f"mix {mstep.path.name}: {why} needs attribute table {table}, which is not in the "
                                  f"store and no earlier step of this pipeline writes it; it is produced by "
                                  f"{producer_of(table)}; add that step before the mix")


def _manifest_name(policy: Any) -> str:
    return str(policy.output.name or policy.name)


def _shards_step(w: str, step: dict[str, Any], base: Path, mixes: list[MixStep]) -> ShardsStep:
    """Options are the fields of :class:`curate.shards.ShardOptions`, checked by building
    it; the manifest is a [[mix]] step of this pipeline or an existing file; the output
    folder may not hold anything curate shards did not write."""
    from .shards import ShardOptions
    from .shards.core import check_out

    check_keys(w, step, SHARDS_KEYS | {f.name for f in fields(ShardOptions)})
    mix, manifest = step.get("mix"), step.get("manifest")
    if (mix is None) == (manifest is None):
        raise ConfigError(f"{w}: give one of 'mix' (the name of a [[mix]] step) or 'manifest' (a manifest file)")
    path = None
    if mix is not None:
        mix = check(f"{w}.mix", mix, str)
        names = [_manifest_name(m.policy) for m in mixes]
        if mix not in names:
            raise ConfigError(f"{w}.mix: no [[mix]] step writes a manifest named {mix!r}; "
                              f"the mix steps write {', '.join(names) or 'nothing'}")
    else:
        raw = Path(check(f"{w}.manifest", manifest, str))
        path = raw if raw.is_absolute() else Path(os.path.abspath(base / raw))
        if not path.is_file():
            raise ConfigError(f"{w}.manifest: {path} does not exist")
    if "out" not in step:
        raise ConfigError(f"{w}: missing key 'out' (the shard folder, relative to the pipeline)")
    raw_out = Path(check(f"{w}.out", step["out"], str))
    out = raw_out if raw_out.is_absolute() else Path(os.path.abspath(base / raw_out))
    check_out(out)
    options = from_dict(ShardOptions, {k: v for k, v in step.items() if k not in SHARDS_KEYS}, w)
    return ShardsStep(mix, path, out, options)


def run_pipeline(store: Store, pipe: Pipeline, echo: Any = None, progress: bool | None = None) -> list[Any]:
    """Run every ingest step, then every stage, dedup pass, pass, mix and shards step, in
    order; ``echo`` gets one line per step."""
    from dataclasses import replace

    from .ingest import ingest
    from .runner import run_stage

    pass_steps: list[DedupStep | PassStep] = [*pipe.dedups, *pipe.passes]
    for sstep in pipe.stages:  # a missing model fails here, before any ingest
        sstep.stage.preflight()
    for pstep in pass_steps:  # so does a missing extra or input file of a pass
        pstep.pass_.preflight()
    _preflight_mixes(store, pipe, pass_steps)  # and a mix whose tables nothing will make
    results: list[Any] = []
    written: dict[str, Path] = {}  # manifest name -> path, for [[shards]] mix = "name"
    for istep in pipe.ingests:
        ires = ingest(store, istep.format, istep.path, istep.source, **dict(istep.options))
        results.append(ires)
        if echo:
            echo(ires.summary())
    for sstep in pipe.stages:
        opts = replace(sstep.options, progress=progress) if progress is not None else sstep.options
        sres = run_stage(store, sstep.stage, opts)
        results.append(sres)
        if echo:
            echo(sres.summary())
    for pstep in pass_steps:
        pres = pstep.pass_.run(store)
        results.append(pres)
        if echo:
            echo(pres.summary().splitlines()[0])
    for mstep in pipe.mixes:
        from .mix import run_policy, write_manifest

        mixed = run_policy(store, mstep.policy)
        side = write_manifest(store, mstep.policy, res=mixed)
        results.append(side)
        written[_manifest_name(mstep.policy)] = Path(side["path"])
        if echo:
            per = ", ".join(f"{v} {n:,}" for v, n in sorted(mixed.counts["by_variant"].items()))
            echo(f"mix {mstep.policy.name}: {side['rows']:,} samples ({per}) -> {side['path']}")
    for hstep in pipe.shards:
        from .shards import write_shards

        manifest = written[hstep.mix] if hstep.mix is not None else hstep.manifest
        assert manifest is not None  # _shards_step requires one of the two
        hres = write_shards(manifest, hstep.out, hstep.options, store=store, progress=progress)
        results.append(hres)
        if echo:
            echo(hres.summary())
    return results
