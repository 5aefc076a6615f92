"""The manifest audit: pool versus manifest, side by side (``sql/mix/audit.sql``).

:func:`audit` creates the temp views the named queries read (``mix_pool``,
``mix_manifest``, ``mix_retention``) on the store's connection after
:func:`curate.mix.compile.run_policy`, and runs every query whose tables exist. The
pool is every caption of the policy's sources and of the variants its strategy can
emit; the manifest is the chosen caption of each manifest row.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from ..attributes import latest_sql
from ..errors import InputError
from .attributes import ATTRIBUTES, relation
from .compile import MixResult
from .policy import FORMATS
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


def _replace_final(con: Any, sql: str) -> None:
    """``_mix_final`` (a temp view or table of an earlier run) becomes the table ``sql``."""
    for (kind,) in con.execute("SELECT 'VIEW' FROM duckdb_views() WHERE temporary AND view_name = '_mix_final' "
                               "UNION ALL SELECT 'TABLE' FROM duckdb_tables() WHERE temporary AND "
                               "table_name = '_mix_final'").fetchall():
        con.execute(f"DROP {kind} _mix_final")
    con.execute(f"CREATE TEMP TABLE _mix_final AS {sql}")


@dataclasses.dataclass
class ManifestCheck:
    """A manifest file against its sidecar and the store: ``problems`` holds one line per
    difference (empty when the file is what the sidecar says and the pool is unchanged)."""

    path: Path
    meta: dict[str, Any]
    problems: list[str]
    rows: int | None


def _file_rows(store: Store, path: Path, fmt: str) -> int:
    """Rows of a manifest file, read as its format says (a CSV caption may hold a newline)."""
    if fmt == "npy":
        return len(np.load(path, mmap_mode="r"))
    return int(store.con.execute(f"SELECT count(*) FROM {_reader(path, fmt)}").fetchall()[0][0])


def _reader(path: Path, fmt: str) -> str:
    if fmt == "parquet":
        return f"read_parquet({lit(str(path))})"
    if fmt in ("jsonl", "json"):
        return f"read_json({lit(str(path))}, format = 'newline_delimited')"
    if fmt in ("csv", "tsv"):
        sep = "\\t" if fmt == "tsv" else ","
        return (f"read_csv({lit(str(path))}, header = true, delim = '{sep}', quote = '\"', escape = '\"', "
                "all_varchar = true)")
    raise InputError(f"unknown manifest format {fmt!r}")


def _stage_key(entry: dict[str, Any]) -> str:
    """What a sidecar's stage entry is about (not which run): table, stage, CLIP model,
    tag sets, dedup scopes, vocabulary (caption_concepts has one entry per vocabulary)."""
    config = entry.get("config")
    inner = config.get("config") if isinstance(config, dict) else None
    vocabulary = inner.get("vocabulary") if isinstance(inner, dict) else None
    key = {k: entry.get(k) for k in ("table", "stage", "model", "set_name", "concept_set", "scopes")}
    return json.dumps({**key, "vocabulary": vocabulary}, sort_keys=True, default=str)


def check_manifest(store: Store, path: str | Path) -> ManifestCheck:
    """Check a manifest file before it is audited: its sha256 and row count against the
    sidecar, the pool's fingerprint (:func:`curate.mix.manifest.pool_fingerprint`)
    against the store now, and the stage runs the policy reads. Missing files and
    sidecars are InputErrors; everything else is one line in ``problems``."""
    from .manifest import _sha256, input_versions, pool_fingerprint
    from .policy import policy_from_dict

    path = Path(path)
    side = path.with_name(path.name + ".sidecar.json")
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    if not side.is_file():
        raise InputError(f"manifest {path} has no sidecar {side.name}; the audit needs the policy it records")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        policy = policy_from_dict(meta["policy"], where=f"sidecar {side.name}")
        fmt = meta["format"]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"sidecar {side}: not a curate manifest sidecar ({type(e).__name__}: {e})") from None
    if fmt not in FORMATS:
        raise InputError(f"sidecar {side}: unknown format {fmt!r}")
    problems = []
    sha = _sha256(path)
    if sha != meta.get("sha256"):
        problems.append(f"sha256 of the file is {sha[:16]}..., the sidecar records {str(meta.get('sha256'))[:16]}... "
                        "(the file was changed or replaced after it was written)")
    rows = None
    try:
        rows = _file_rows(store, path, fmt)
    except (duckdb.Error, ValueError, OSError) as e:
        problems.append(f"the file cannot be read as {fmt}: {' '.join(str(e).split())[:200]}")
    if rows is not None and rows != meta.get("rows"):
        problems.append(f"the file has {rows:,} rows, the sidecar records {meta.get('rows', 0):,}")
    then = meta.get("pool")
    if not then:
        problems.append("the sidecar records no pool fingerprint (written by an older curate), so the pool cannot "
                        "be checked; write the manifest again")
    else:
        now = pool_fingerprint(store, policy)
        if now["samples"] != then.get("samples"):
            problems.append(f"pool: {now['samples']:,} samples in the store now, {then.get('samples', 0):,} when the "
                            "manifest was written")
        elif now["uids_sha256"] != then.get("uids_sha256"):
            problems.append(f"pool: the same number of samples ({now['samples']:,}) but other uids than when the "
                            "manifest was written")
        for v in sorted(set(now["captions"]) | set(then.get("captions", {}))):
            a, b = now["captions"].get(v, 0), then.get("captions", {}).get(v, 0)
            if a != b:
                problems.append(f"pool: {a:,} {v} captions in the store now, {b:,} when the manifest was written")
    _, stages = input_versions(store, policy, meta.get("resolved"))
    was = {_stage_key(e): e for e in meta.get("stages", [])}
    now_stages = {_stage_key(e): json.loads(json.dumps(e, default=str)) for e in stages}
    for key in sorted(set(was) | set(now_stages)):
        a, b = now_stages.get(key), was.get(key)
        if a != b:
            entry = a or b or {}
            what = entry.get("stage") or entry.get("table")
            problems.append(f"stage run of {entry.get('table')} ({what}): run {(b or {}).get('run_id', 'none')} "
                            f"when the manifest was written, run {(a or {}).get('run_id', 'none')} now"
                            + (" (another configuration)" if a and b and a.get("run_id") == b.get("run_id") else ""))
    return ManifestCheck(path, meta, problems, rows)


def audit_manifest(store: Store, path: str | Path, vocabulary: str | None = None, *,
                   allow_mismatch: bool = False, checked: ManifestCheck | None = None) -> list[tuple[str, Any]]:
    """The same audit for a manifest file written earlier, in any format, with its
    ``.sidecar.json``: the pool comes from the policy in the sidecar, the manifest rows
    from the file (uid, caption_id, variant, weight; source from ``samples``). The
    ``.npy`` subset holds only uids: their captions are the ones the sidecar's policy
    chooses on the store now, and a uid's weight is its number of copies.

    The file is checked first (:func:`check_manifest`, or ``checked``); any difference
    raises an InputError listing them unless ``allow_mismatch``."""
    from .policy import policy_from_dict

    check = checked or check_manifest(store, path)
    if check.problems and not allow_mismatch:
        raise InputError(f"manifest {check.path} differs from its sidecar or the store: " + "; ".join(check.problems))
    if check.rows is None:
        raise InputError(f"manifest {check.path} cannot be read as {check.meta['format']}; nothing to audit")
    meta = check.meta
    fmt = meta["format"]
    policy = policy_from_dict(meta["policy"])
    con = store.con
    if fmt == "npy":
        from .compile import run_policy

        run_policy(store, policy)  # the captions the policy chooses; _mix_final is replaced below
        import pyarrow as pa

        arr = np.load(check.path)
        con.register("_mix_file", pa.table({"hi": arr["f0"], "lo": arr["f1"]}))
        con.execute("CREATE OR REPLACE TEMP TABLE _mix_rerun AS SELECT uid, source, caption_id, variant FROM _mix_final")
        _replace_final(con, "SELECT r.uid, r.source, r.caption_id, r.variant, count(*)::DOUBLE AS weight "
                       "FROM (SELECT ((hi::UHUGEINT << 64) | lo::UHUGEINT)::UUID AS uid FROM _mix_file) f "
                       "JOIN _mix_rerun r USING (uid) GROUP BY ALL")
        con.unregister("_mix_file")
    else:
        _replace_final(con, f"SELECT f.uid::UUID AS uid, s.source, f.caption_id::UUID AS caption_id, f.variant, "
                       f"f.weight::DOUBLE AS weight FROM {_reader(check.path, fmt)} f JOIN samples s ON s.uid = f.uid::UUID")
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
