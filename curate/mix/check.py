"""Checks of a policy against a store, before any work: every table it needs is there
(naming what produces a missing one), views exist, CLIP models resolve, sources,
variants and vocabularies are known, and each strategy's and weight's own checks pass."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..sqlfiles import expand
from .attributes import ATTRIBUTES, producer_of
from .sql import CLIP_CONTRACT, clip_model, ensure_clip_view, source_cond

if TYPE_CHECKING:
    from ..store import Store


def required_tables(policy: Any) -> dict[str, str]:
    """table -> why the policy needs it: its predicates' attributes, its strategy's and
    its weight's own requirements."""
    need: dict[str, str] = {}
    for p in policy.select:
        t = ATTRIBUTES[p.attribute].table
        if t and t != "samples":
            need.setdefault(t, f"select attribute {p.attribute}")
    for table, why in {**policy.choose.requires(), **policy.weight.requires()}.items():
        need.setdefault(table, why)
    return need


def required_views(policy: Any) -> dict[str, str]:
    """view -> the stage that creates it, for the latest views the policy's attributes
    and strategy read (``clip_scores_latest`` is left to :func:`ensure_clip_view`, which
    stands one in over a ``clip_scores`` table from elsewhere)."""
    from .. import registry

    made = {}
    for name in registry.stage_names():
        cls = registry.get_stage_class(name)
        if cls.latest_view and cls.latest_view != "clip_scores_latest":
            made[cls.latest_view] = name
    sqls = [expand(ATTRIBUTES[p.attribute].sql or "")[0] for p in policy.select]
    read = set(policy.choose.reads_views())
    return {v: s for v, s in made.items() if v in read or any(re.search(rf"\b{v}\b", q) for q in sqls)}


def check_policy(store: Store, policy: Any) -> dict[str, Any]:
    """Check ``policy`` against ``store`` before any work; return what was resolved
    (``clip_models`` per place). Raises ConfigError naming the stage to run."""
    tables = set(store.tables())
    views = {r[0] for r in store.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = current_database()").fetchall()}
    need = required_tables(policy)
    for table, why in need.items():
        if table not in tables:
            raise ConfigError(f"{why} needs attribute table {table}, which is missing; "
                              f"it is produced by {producer_of(table)}")
    for view, producer in required_views(policy).items():
        if view not in views:
            raise ConfigError(f"view {view} is missing; run the stage {producer} once more to create it")
    if "clip_scores" in need:
        have = store.columns("clip_scores")
        missing = [c for c in CLIP_CONTRACT if c not in have]
        if missing:
            raise ConfigError(f"clip_scores lacks column(s) {', '.join(missing)}; the CLIP stage writes "
                              f"{', '.join(f'{k} {v}' for k, v in CLIP_CONTRACT.items())}")
        ensure_clip_view(store)
    resolved: dict[str, Any] = {"clip_models": {}}
    for i, p in enumerate(policy.select):
        if "model" in ATTRIBUTES[p.attribute].params:
            resolved["clip_models"][f"select[{i}]"] = clip_model(store, p.model, f"select[{i}] {p.attribute}")
    model = policy.choose.resolve(store)
    if model is not None:
        resolved["clip_models"]["choose"] = model

    known = {r[0] for r in store.execute("SELECT DISTINCT source FROM samples").fetchall()}
    if policy.sources is not None:
        unknown = sorted(set(policy.sources) - known)
        if unknown:
            raise ConfigError(f"policy.sources: unknown source(s) {', '.join(unknown)}; "
                              f"the store has {', '.join(sorted(known)) or 'none'}")
    if policy.budget.by == "source":
        unknown = sorted(set(policy.budget.proportions) - known)
        if unknown:
            raise ConfigError(f"budget.proportions: unknown source(s) {', '.join(unknown)}; "
                              f"the store has {', '.join(sorted(known)) or 'none'}")
    have_variants = {r[0] for r in store.execute(
        f"SELECT DISTINCT variant FROM captions c WHERE {source_cond(policy, 'c')}").fetchall()}
    wanted = set(policy.choose.emits()) | {p.variant for p in policy.select if p.variant}
    missing = sorted(wanted - have_variants)
    if missing:
        raise ConfigError(f"variant(s) {', '.join(missing)} have no captions in the pool; it has "
                          f"{', '.join(sorted(have_variants)) or 'none'}")

    vocabs = {(p.vocabulary, p.mode) for p in policy.select if p.vocabulary} | policy.weight.vocabularies()
    for vocab, mode in sorted(vocabs):
        n = store.execute("SELECT count(*) FROM (SELECT 1 FROM caption_concepts WHERE vocabulary = ? AND mode = ? LIMIT 1)",
                          [vocab, mode]).fetchall()[0][0]
        if not n:
            raise ConfigError(f"no concept matches for vocabulary {vocab!r} (mode {mode}); run the stage "
                              f"concepts.text_match.v1 with vocabulary = {vocab!r}")
    policy.weight.check(store)
    policy.choose.check(store, policy)
    return resolved
