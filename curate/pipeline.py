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
    [stage.config]             # the stage's own fields
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

TOP_KEYS = {"pipeline", "ingest", "stage"}
PIPELINE_KEYS = {"name", "description"}
INGEST_KEYS = {"format", "path", "source"}
STAGE_KEYS = {"name", "config", "batch_size", "workers", "limit"}


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
                "batch_size": self.options.batch_size, "workers": self.options.workers,
                "limit": self.options.limit, "config": self.stage.config()}


@dataclass
class Pipeline:
    name: str
    description: str
    path: Path | None
    ingests: list[IngestStep] = field(default_factory=list)
    stages: list[StageStep] = field(default_factory=list)

    def resolved(self) -> dict[str, Any]:
        return {"pipeline": {"name": self.name, "description": self.description},
                "ingest": [s.resolved() for s in self.ingests], "stage": [s.resolved() for s in self.stages]}


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
        try:
            options = RunOptions(batch_size=batch_size, workers=workers, limit=limit)
        except ConfigError as e:
            raise ConfigError(f"{w}: {e}") from None
        pipe.stages.append(StageStep(stage, options))
    return pipe


def run_pipeline(store: Any, pipe: Pipeline, echo: Any = None, progress: bool | None = None) -> list[Any]:
    """Run every ingest step, then every stage, in order; ``echo`` gets one line per step."""
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
    return results
