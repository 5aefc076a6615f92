"""The manifest audit: pool versus manifest, side by side (``sql/mix/audit.sql``).

:func:`audit` creates the temp views the named queries read (``mix_pool``,
``mix_manifest``, ``mix_retention``) on the store's connection after
:func:`curate.mix.compile.run_policy`, and runs every query whose tables exist. The
pool is every caption of the policy's sources and of the variants its strategy can
emit; the manifest is the chosen caption of each manifest row.
"""

from __future__ import annotations

from typing import Any

from .attributes import lit, named, source_cond
from .compile import MixResult


def _views(store: Any, res: MixResult) -> None:
    p = res.policy
    variants = ", ".join(lit(v) for v in p.choose.emits())
    con = store.con
    con.execute(f"CREATE OR REPLACE TEMP VIEW mix_pool AS SELECT c.uid, c.source, c.caption_id, c.variant "
                f"FROM captions c WHERE {source_cond(p, 'c')} AND c.variant IN ({variants})")
    con.execute("CREATE OR REPLACE TEMP VIEW mix_manifest AS SELECT uid, source, caption_id, variant, weight FROM _mix_final")


def audit(store: Any, res: MixResult, vocabulary: str | None = None) -> list[tuple[str, Any]]:
    """[(title, polars DataFrame)] for every audit the store's tables allow."""
    _views(store, res)
    tables = set(store.tables())
    out: list[tuple[str, Any]] = []

    def run(title: str, qname: str, **params: Any) -> None:
        out.append((f"{title} (mix.{qname})", store.query(f"mix.{qname}", **params).pl()))

    run("Size: pool vs manifest", "audit_size")
    run("Variant mix", "audit_variants")
    run("Sources", "audit_sources")
    if "caption_stats" in tables:
        run("Caption words", "audit_words")
    if "clip_scores" in tables:
        models = res.resolved.get("clip_models", {})
        model = next(iter(models.values()), None)
        if model is None:
            ms = [r[0] for r in store.execute("SELECT DISTINCT model FROM clip_scores ORDER BY 1").fetchall()]
            model = ms[0] if ms else None
        if model is not None:
            run(f"CLIP score ({model})", "audit_clip", model=model)
    run("Duplicates left", "audit_duplicates")
    if "dedup_groups" in tables:
        run("Dropped duplicates left (dedup_groups)", "audit_dedup_left")
    if "caption_knowledge" in tables:
        store.con.execute(f"CREATE OR REPLACE TEMP VIEW mix_retention AS {named('mix.caption_retention')}")
        run("Knowledge", "audit_knowledge")
    vocab = vocabulary or getattr(res.policy.weight, "vocabulary", None)
    if vocab is None:
        vocab = next((p.vocabulary for p in res.policy.select if p.vocabulary), None)
    if vocab and "caption_concepts" in tables:
        run(f"Concept coverage ({vocab})", "audit_concepts", vocabulary=vocab)
    return out
