"""Pipelines: TOML files that name ingest steps and stages, validated whole before any work.

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
    variant = "synthetic"      # the keyword arguments of curate.dedup.text.dedup_captions
    threshold = 0.8

    [[mix]]                    # zero or more mixing policies, last
    policy = "policies/capsfusion_guard.toml"   # relative to this file
    seed = 0                   # optional overrides of the policy's seed and output name
    name = "my-manifest"

Steps run in that order: ingests, stages, dedup passes, mixes. Everything that can be
checked without the store (formats, options, stage configs, dedup settings, policy
files) is checked before any of them runs.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .ingest import FORMATS, validate_options
from .registry import build_stage
from .runner import RunOptions
from .stages.base import Stage

TOP_KEYS = {"pipeline", "ingest", "stage", "dedup", "mix"}
MIX_KEYS = {"policy", "seed", "name"}
PIPELINE_KEYS = {"name", "description"}
INGEST_KEYS = {"format", "path", "source"}
STAGE_KEYS = {"name", "config", "batch_size", "workers", "limit", "executor", "ray_address", "gpus_per_worker"}


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
    options: dict[str, Any]

    def resolved(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass
class MixStep:
    path: Path
    policy: Any  # curate.mix.Policy

    def resolved(self) -> dict[str, Any]:
        return {"policy": str(self.path), "name": self.policy.name, "seed": self.policy.seed,
                "policy_hash": self.policy.hash()}


@dataclass
class Pipeline:
    name: str
    description: str
    path: Path | None
    ingests: list[IngestStep] = field(default_factory=list)
    stages: list[StageStep] = field(default_factory=list)
    dedups: list[DedupStep] = field(default_factory=list)
    mixes: list[MixStep] = field(default_factory=list)

    def resolved(self) -> dict[str, Any]:
        return {"pipeline": {"name": self.name, "description": self.description},
                "ingest": [s.resolved() for s in self.ingests], "stage": [s.resolved() for s in self.stages],
                "dedup": [s.resolved() for s in self.dedups], "mix": [s.resolved() for s in self.mixes]}


def _expect(where: str, value: Any, tp: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, tp) or isinstance(value, bool) and bool not in (tp if isinstance(tp, tuple) else (tp,)):
        raise ConfigError(f"{where}: expected {what}, got {type(value).__name__} {value!r}")
    return value


def load_pipeline(path: str | Path) -> Pipeline:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"pipeline file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return parse_pipeline(data, base=p.parent, path=p)


def parse_pipeline(data: dict[str, Any], base: Path = Path("."), path: Path | None = None) -> Pipeline:
    where = str(path or "pipeline")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(sorted(TOP_KEYS))}")
    head = _expect(f"{where} [pipeline]", data.get("pipeline", {}), dict, "a table")
    unknown = sorted(set(head) - PIPELINE_KEYS)
    if unknown:
        raise ConfigError(f"{where} [pipeline]: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(PIPELINE_KEYS))}")
    pipe = Pipeline(
        name=_expect(f"{where} pipeline.name", head.get("name", path.stem if path else "pipeline"), str, "a string"),
        description=_expect(f"{where} pipeline.description", head.get("description", ""), str, "a string"),
        path=path,
    )
    for i, step in enumerate(_expect(f"{where} ingest", data.get("ingest", []), list, "an array of tables")):
        w = f"{where} ingest[{i}]"
        _expect(w, step, dict, "a table")
        fmt = _expect(f"{w}.format", step.get("format"), str, f"one of {', '.join(FORMATS)}")
        if fmt not in FORMATS:
            raise ConfigError(f"{w}.format: unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
        if "path" not in step:
            raise ConfigError(f"{w}: missing key 'path'")
        raw_path = Path(_expect(f"{w}.path", step["path"], str, "a string"))
        full = raw_path if raw_path.is_absolute() else Path(os.path.abspath(base / raw_path))
        if not full.exists():
            raise ConfigError(f"{w}.path: {full} does not exist")
        source = step.get("source")
        if source is not None:
            _expect(f"{w}.source", source, str, "a string")
        options = {k: v for k, v in step.items() if k not in INGEST_KEYS}
        try:
            options = validate_options(fmt, options, base=base)
        except ConfigError as e:
            raise ConfigError(f"{w}: {e}") from None
        pipe.ingests.append(IngestStep(fmt, full, source, options))
    for i, step in enumerate(_expect(f"{where} stage", data.get("stage", []), list, "an array of tables")):
        w = f"{where} stage[{i}]"
        _expect(w, step, dict, "a table")
        unknown = sorted(set(step) - STAGE_KEYS)
        if unknown:
            raise ConfigError(f"{w}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(STAGE_KEYS))}")
        name = _expect(f"{w}.name", step.get("name"), str, "a stage registry name")
        cfg = _expect(f"{w}.config", step.get("config", {}), dict, "a table")
        try:
            stage = build_stage(name, cfg)
        except ConfigError as e:
            raise ConfigError(f"{w}: {e}") from None
        limit = step.get("limit")
        if limit is not None:
            _expect(f"{w}.limit", limit, int, "an integer")
            if limit < 0:
                raise ConfigError(f"{w}.limit: must be 0 or more, got {limit}")
        batch_size = _expect(f"{w}.batch_size", step.get("batch_size", RunOptions.batch_size), int, "an integer")
        workers = _expect(f"{w}.workers", step.get("workers", RunOptions.workers), int, "an integer")
        executor = _expect(f"{w}.executor", step.get("executor", RunOptions.executor), str, "a string")
        address = step.get("ray_address")
        if address is not None:
            _expect(f"{w}.ray_address", address, str, "a string")
        gpus = step.get("gpus_per_worker", RunOptions.gpus_per_worker)
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)):
            raise ConfigError(f"{w}.gpus_per_worker: expected a number, got {gpus!r}")
        try:
            options = RunOptions(batch_size=batch_size, workers=workers, limit=limit, executor=executor,
                                 ray_address=address, gpus_per_worker=float(gpus))
        except ConfigError as e:
            raise ConfigError(f"{w}: {e}") from None
        pipe.stages.append(StageStep(stage, options))
    for i, step in enumerate(_expect(f"{where} dedup", data.get("dedup", []), list, "an array of tables")):
        pipe.dedups.append(_dedup_step(f"{where} dedup[{i}]", _expect(f"{where} dedup[{i}]", step, dict, "a table")))
    for i, step in enumerate(_expect(f"{where} mix", data.get("mix", []), list, "an array of tables")):
        pipe.mixes.append(_mix_step(f"{where} mix[{i}]", _expect(f"{where} mix[{i}]", step, dict, "a table"), base))
    return pipe


def _dedup_step(w: str, step: dict[str, Any]) -> DedupStep:
    """The keyword arguments of dedup_captions, checked by name and type, and by building
    the DedupConfig that the pass would build."""
    import typing

    from .dedup.text import DedupConfig
    from .config import check, check_keys

    hints = typing.get_type_hints(DedupConfig)
    hints["variant"] = str | list[str] | None
    hints["batch_size"] = int
    check_keys(w, step, hints)
    for k, v in step.items():
        check(f"{w}.{k}", v, hints[k])
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in step.items() if k != "batch_size"}
    try:
        DedupConfig(**cfg)
    except ConfigError as e:
        raise ConfigError(f"{w}: {e}") from None
    if step.get("batch_size", 1) < 1:
        raise ConfigError(f"{w}.batch_size: must be at least 1")
    return DedupStep(dict(step))


def _mix_step(w: str, step: dict[str, Any], base: Path) -> MixStep:
    import dataclasses

    from .mix import load_policy

    unknown = sorted(set(step) - MIX_KEYS)
    if unknown:
        raise ConfigError(f"{w}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(MIX_KEYS))}")
    if "policy" not in step:
        raise ConfigError(f"{w}: missing key 'policy' (a policy TOML file, relative to the pipeline)")
    raw = Path(_expect(f"{w}.policy", step["policy"], str, "a path"))
    full = raw if raw.is_absolute() else Path(os.path.abspath(base / raw))
    try:
        policy = load_policy(full)
    except ConfigError as e:
        raise ConfigError(f"{w}: {e}") from None
    if "seed" in step:
        policy = dataclasses.replace(policy, seed=_expect(f"{w}.seed", step["seed"], int, "an integer"))
    if "name" in step:
        name = _expect(f"{w}.name", step["name"], str, "a string")
        policy = dataclasses.replace(policy, output=dataclasses.replace(policy.output, name=name))
    return MixStep(full, policy)


def run_pipeline(store: Any, pipe: Pipeline, echo: Any = None, progress: bool | None = None) -> list[Any]:
    """Run every ingest step, then every stage, dedup pass and mix, in order; ``echo``
    gets one line per step."""
    from dataclasses import replace

    from .ingest import ingest
    from .runner import run_stage

    for step in pipe.stages:  # a missing model fails here, before any ingest
        step.stage.preflight()
    results = []
    for step in pipe.ingests:
        res = ingest(store, step.format, step.path, step.source, **dict(step.options))
        results.append(res)
        if echo:
            echo(res.summary())
    for step in pipe.stages:
        opts = replace(step.options, progress=progress) if progress is not None else step.options
        res = run_stage(store, step.stage, opts)
        results.append(res)
        if echo:
            echo(res.summary())
    for dstep in pipe.dedups:
        from .dedup.text import dedup_captions

        res = dedup_captions(store, **dstep.options)
        results.append(res)
        if echo:
            echo(res.summary().splitlines()[0])
    for mstep in pipe.mixes:
        from .mix import run_policy, write_manifest

        mixed = run_policy(store, mstep.policy)
        side = write_manifest(store, mstep.policy, res=mixed)
        results.append(side)
        if echo:
            per = ", ".join(f"{v} {n:,}" for v, n in sorted(mixed.counts["by_variant"].items()))
            echo(f"mix {mstep.policy.name}: {side['rows']:,} samples ({per}) -> {side['path']}")
    return results
