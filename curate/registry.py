"""The explicit stage registry: registry name -> stage class.

Adding a stage means writing its module and adding one line here. Nothing registers
itself on import; classes are imported lazily so an unused stage's dependencies (spaCy,
torch, faiss) are never imported.
"""

from __future__ import annotations

import importlib

from .errors import ConfigError
from .stages.base import Stage

#: registry name -> "module:Class"
STAGES: dict[str, str] = {
    "text.caption_stats.v1": "curate.stages.caption_stats:CaptionStats",
    "knowledge.spacy_ner.v1": "curate.stages.knowledge:KnowledgeNER",
    "concepts.text_match.v1": "curate.stages.concepts:ConceptText",
    "clip.score.v1": "curate.stages.clip:ClipScore",
    "clip.embed_image.v1": "curate.stages.clip:ClipImage",
}


#: registry name -> "module:Class" of whole-corpus passes (curate.passes)
PASSES: dict[str, str] = {}


def pass_names() -> list[str]:
    return sorted(PASSES)


def get_pass_class(name: str) -> type:
    if name not in PASSES:
        raise ConfigError(f"unknown pass {name!r}; valid passes: {', '.join(pass_names())}")
    module, cls = PASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def stage_names() -> list[str]:
    return sorted(STAGES)


def get_stage_class(name: str) -> type[Stage]:
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; valid stages: {', '.join(stage_names())}")
    module, cls = STAGES[name].split(":")
    stage_cls = getattr(importlib.import_module(module), cls)
    if stage_cls.registry_name() != name:
        raise ConfigError(f"registry entry {name!r} points at {stage_cls.registry_name()}")
    return stage_cls


def build_stage(name: str, config: dict | None = None) -> Stage:
    return get_stage_class(name).from_config(config)
