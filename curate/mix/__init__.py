"""Mixing policies and training manifests.

Layers, each importing only those above it: ``sql`` (literals, binding, the one-caption
pick, the clip_scores contract), ``attributes`` (the catalogue, built from what stages
and passes declare), ``expr`` (the typed ``Predicate`` and its polars form),
``strategies`` (caption strategies and weights, each owning its requirements and SQL),
``policy`` (budget, output, the policy and its TOML form), ``check`` (a policy against a
store), ``compile`` (policy -> SQL -> temp tables), ``frame`` (the pool as a polars
frame), ``manifest`` (formats and the sidecar), ``audit`` (pool versus manifest).
Importing does nothing but define names.
"""

from .compile import MixResult, run_policy
from .expr import Predicate, col, keep_fraction, predicates_from_expr
from .frame import attribute_frame
from .manifest import write_manifest
from .policy import Budget, Output, Policy, load_policy, policy_from_dict, save_policy
from .strategies import (
                         CapsFusion,
                         KnowledgeAware,
                         LaCLIP,
                         MetaCLIPWeight,
                         Nguyen,
                         NoWeight,
                         OneVariant,
                         Ratio,
                         TemperatureWeight,
                         VeCLIP,
)

__all__ = [
    "attribute_frame", "col", "keep_fraction", "predicates_from_expr",
    "Budget", "CapsFusion", "KnowledgeAware", "LaCLIP", "MetaCLIPWeight", "MixResult", "Nguyen", "NoWeight",
    "OneVariant", "Output", "Policy", "Predicate", "Ratio", "TemperatureWeight", "VeCLIP", "load_policy",
    "policy_from_dict", "run_policy", "save_policy", "write_manifest",
]
