"""The manifest audit: pool versus manifest, side by side (``sql/mix/audit.sql``).

:func:`audit` creates the temp views the named queries read (``mix_pool``,
``mix_manifest``, ``mix_retention``) on the store's connection after
:func:`curate.mix.compile.run_policy`, and runs every query whose tables exist. The
pool is every caption of the policy's sources and of the variants its strategy can
emit; the manifest is the chosen caption of each manifest row.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..attributes import latest_sql
from .attributes import ATTRIBUTES, relation
from .compile import MixResult
from .sql import ensure_clip_view, lit, named, source_cond

if TYPE_CHECKING:
    from ..store import Store


def _views(store: Store, res: MixResult) -> None:
    p = res.policy
    variants = ", ".join(lit(v) for v in p.choose.emits())
    con = store.con
    con.execute(f"CREATE OR REPLACE TEMP VIEW mix_pool AS SELECT c.uid, c.source, c.caption_id, c.variant "
                f"FROM captions c WHERE {source_cond(p, 'c')} AND c.variant IN ({variants})")
    con.execute("CREATE OR REPLACE TEMP VIEW mix_manifest AS SELECT uid, source, caption_id, variant, weight FROM _mix_final")
    if store.has_table("caption_stats"):
        # the words audit reads the stage's latest rows by the one template
        from ..stages.caption_stats import CaptionStats

        con.execute("CREATE OR REPLACE TEMP VIEW mix_words AS " + latest_sql(
            CaptionStats.output_table, CaptionStats.registry_name(), by=CaptionStats.latest_by, join_captions=False))


def _dropped_view(store: Store, tables: set[str]) -> None:
    """``mix_dropped(member_kind, member_id)``: the dropped members of the latest dedup
    runs, by the very relations the attributes ``dedup_kept`` (captions; needs
    ``dedup_summary``) and ``image_dedup_kept`` (samples) select on."""
    parts = [f"SELECT 'uid' AS member_kind, uid AS member_id FROM {relation(ATTRIBUTES['image_dedup_kept'])} "
             "WHERE NOT value"]
    if "dedup_summary" in tables:
        parts.append(f"SELECT 'caption_id', caption_id FROM {relation(ATTRIBUTES['dedup_kept'])} WHERE NOT value")
    store.con.execute("CREATE OR REPLACE TEMP VIEW mix_dropped AS " + " UNION ALL ".join(parts))


def audit(store: Store, res: MixResult, vocabulary: str | None = None) -> list[tuple[str, Any]]:
    """[(title, polars DataFrame)] for every audit the store's tables allow."""
    _views(store, res)
    return _run_audits(store, res, vocabulary)


def audit_manifest(store: Store, path: str | Path, vocabulary: str | None = None) -> list[tuple[str, Any]]:
    """The same audit for a manifest file written earlier (parquet or JSONL, with its
    ``.sidecar.json``): the pool comes from the policy in the sidecar, the manifest rows
    from the file (uid, source, caption_id, variant, weight)."""
    import json

    from ..errors import InputError
    from .policy import policy_from_dict

    path = Path(path)
    side = path.with_name(path.name + ".sidecar.json")
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    if not side.is_file():
        raise InputError(f"manifest {path} has no sidecar {side.name}; the audit needs the policy it records")
    meta = json.loads(side.read_text(encoding="utf-8"))
    if meta.get("format") not in ("parquet", "jsonl"):
        raise InputError(f"manifest {path} is in format {meta.get('format')!r}; the audit reads parquet or jsonl "
                         "manifests (they carry caption_id and variant)")
    policy = policy_from_dict(meta["policy"])
    reader = "read_parquet" if meta["format"] == "parquet" else "read_json_auto"
    con = store.con
    con.execute(f"CREATE OR REPLACE TEMP VIEW _mix_final AS SELECT uid::UUID AS uid, source, caption_id::UUID AS caption_id, "
                f"variant, weight FROM {reader}({lit(str(path))})")
    res = MixResult(policy, meta.get("thresholds", []), meta.get("resolved", {}), meta.get("counts", {}),
                    meta.get("sql", {}), False)
    _views(store, res)
    return _run_audits(store, res, vocabulary)


def _run_audits(store: Store, res: MixResult, vocabulary: str | None) -> list[tuple[str, Any]]:
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
        ensure_clip_view(store)
        models = res.resolved.get("clip_models", {})
        model = next(iter(models.values()), None)
        if model is None:
            ms = [r[0] for r in store.execute("SELECT DISTINCT model FROM clip_scores_latest ORDER BY 1").fetchall()]
            model = ms[0] if ms else None
        if model is not None:
            run(f"CLIP score ({model})", "audit_clip", model=model)
    run("Duplicates left", "audit_duplicates")
    if "dedup_groups" in tables:
        _dropped_view(store, tables)
        run("Dropped duplicates left (dedup_groups)", "audit_dedup_left")
    if "caption_knowledge" in tables:
        store.con.execute(f"CREATE OR REPLACE TEMP VIEW mix_retention AS {named('mix.caption_retention')}")
        run("Knowledge", "audit_knowledge")
    if "caption_concepts" in tables:
        # the vocabulary asked for, else the policy's, else the store's only one
        vocab = vocabulary or getattr(res.policy.weight, "vocabulary", None)
        if vocab is None:
            vocab = next((p.vocabulary for p in res.policy.select if p.vocabulary), None)
        have = [r[0] for r in store.execute("SELECT DISTINCT vocabulary FROM caption_concepts ORDER BY 1").fetchall()]
        if vocab is None and len(have) == 1:
            vocab = have[0]
        if vocab is not None and vocab not in have:
            from ..errors import ConfigError

            raise ConfigError(f"concept coverage: no concept matches for vocabulary {vocab!r}; the store has "
                              f"{', '.join(have) or 'none'}")
        if vocab is not None:
            run(f"Concept coverage ({vocab})", "audit_concepts", vocabulary=vocab)
        elif have:
            import polars as pl

            out.append(("Concept coverage: name one with --vocabulary (the store counts several)",
                        pl.DataFrame({"vocabulary": have})))
    return out
