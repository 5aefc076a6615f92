"""Mixing policies and training manifests.

``policy`` (the objects and their TOML form), ``attributes`` (what a policy can select
on, and the checks against a store), ``compile`` (policy -> SQL -> temp tables),
``manifest`` (formats and the sidecar), ``audit`` (pool versus manifest), ``expr``
(predicates as polars expressions, and the pool as a polars frame). Importing
does nothing but define names.
"""

from .compile import MixResult, run_policy
from .expr import attribute_frame, col, keep_fraction, predicates_from_expr
from .manifest import write_manifest
from .policy import (Budget, CapsFusion, KnowledgeAware, LaCLIP, MetaCLIPWeight, Nguyen, NoWeight, OneVariant, Output,
                     Policy, Predicate, Ratio, TemperatureWeight, VeCLIP, load_policy, policy_from_dict, save_policy)

__all__ = [
    "attribute_frame", "col", "keep_fraction", "predicates_from_expr",
    "Budget", "CapsFusion", "KnowledgeAware", "LaCLIP", "MetaCLIPWeight", "MixResult", "Nguyen", "NoWeight",
    "OneVariant", "Output", "Policy", "Predicate", "Ratio", "TemperatureWeight", "VeCLIP", "load_policy",
    "policy_from_dict", "run_policy", "save_policy", "write_manifest",
]
