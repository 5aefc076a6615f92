"""The explicit registries: registry name -> stage class (:data:`STAGES`) and
registry name -> pass class (:data:`PASSES`).

Adding a stage or a pass means writing its class and adding one line here. Nothing
registers itself on import; classes are imported lazily so an unused stage's or pass's
dependencies (spaCy, torch, faiss) are never imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .stages.base import Stage

if TYPE_CHECKING:
    from .passes.base import Pass

#: registry name -> "module:Class"
STAGES: dict[str, str] = {
    "text.caption_stats.v1": "curate.stages.caption_stats:CaptionStats",
    "knowledge.spacy_ner.v1": "curate.stages.knowledge:KnowledgeNER",
    "concepts.text_match.v1": "curate.stages.concepts:ConceptText",
    "clip.score.v1": "curate.stages.clip:ClipScore",
    "clip.embed_image.v1": "curate.stages.clip:ClipImage",
    "generate.subcaptions.v1": "curate.stages.generate:SubCaptions",
    "generate.fuse.v1": "curate.stages.generate:Fuse",
    "generate.rewrite.v1": "curate.stages.generate:Rewrite",
    "generate.caption.v1": "curate.stages.generate:Caption",
    "generate.vec.v1": "curate.stages.generate:Vec",
}


#: registry name -> "module:Class" (whole-corpus passes, curate.passes.base)
PASSES: dict[str, str] = {
    "dedup.captions.v1": "curate.passes.dedup:DedupCaptions",
    "similarity.semdedup.v1": "curate.passes.similarity:SemDedup",
    "similarity.near.v1": "curate.passes.similarity:NearDuplicates",
    "similarity.exact.v1": "curate.passes.similarity:ExactDuplicates",
    "similarity.tags.v1": "curate.passes.similarity:Tags",
    "similarity.target.v1": "curate.passes.similarity:TargetFilter",
    "similarity.index.v1": "curate.passes.similarity:CreateIndex",
    "similarity.merge_captions.v1": "curate.passes.similarity:MergeCaptions",
    "concepts.vocabulary.v1": "curate.passes.concepts:Vocabulary",
    "concepts.import_published.v1": "curate.passes.concepts:ImportPublished",
}


def stage_names() -> list[str]:
    return sorted(STAGES)


def pass_names() -> list[str]:
    return sorted(PASSES)


def _load(table: dict[str, str], what: str, whats: str, name: str) -> Any:
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; valid {whats}: {', '.join(sorted(table))}")
    module, cls = table[name].split(":")
    found = getattr(importlib.import_module(module), cls)
    if found.registry_name() != name:
        raise ConfigError(f"registry entry {name!r} points at {found.registry_name()}")
    return found


def get_stage_class(name: str) -> type[Stage]:
    cls: type[Stage] = _load(STAGES, "stage", "stages", name)
    return cls


def build_stage(name: str, config: dict[str, Any] | None = None) -> Stage:
    return get_stage_class(name).from_config(config)


def get_pass_class(name: str) -> type[Pass]:
    cls: type[Pass] = _load(PASSES, "pass", "passes", name)
    return cls


def build_pass(name: str, config: dict[str, Any] | None = None) -> Pass:
    return get_pass_class(name).from_config(config)
