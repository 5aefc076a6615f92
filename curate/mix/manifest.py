"""Training manifests and their sidecars, written under the store's ``manifests/``.

Every id a manifest holds (``uid``, ``caption_id``, in every format) is written as 32
lower-case hex digits, DataComp's form of a uid; ``.npy`` holds the same 128 bits as
two integers. Formats (rows in draw order: ascending budget key, then uid):

* ``parquet`` / ``jsonl``: ``uid``, ``source``, ``url``, ``image_shard``,
  ``image_key``, ``image_path``, ``caption_id``, ``caption``, ``variant``, ``weight``;
  with ``candidates = true`` also ``captions``: a list of ``{variant, caption_id, text,
  prob}``, every candidate caption with its probability.
* ``csv`` / ``tsv``: open_clip's ``--dataset-type csv`` columns ``filepath`` (the image
  path; the url when the store has no local image) and ``title`` (the chosen caption),
  then ``uid``, ``caption_id``, ``variant`` and ``weight`` (open_clip's CsvDataset reads
  only the two columns it is told to); ``tsv`` is open_clip's default
  ``--csv-separator`` (tab).
* ``json``: one JSON object per line, the per-sample ``.json`` of a webdataset sample:
  ``uid``, ``url``, ``image_shard``, ``image_key``, ``image_path``, ``caption``,
  ``variant``, ``weight``, one readable key per candidate caption (the variant name;
  ``rewrite_2``, ... for a second caption of a variant), ``caption_probs``, and the
  caption slots ``c0..c{K-1}`` (:mod:`curate.shards.captions`); the sidecar gives open_clip
  main's ``--json-text-key`` / ``--json-text-key-probs`` for the slots, equal weights, so
  its sampler draws each sample's captions with the policy's probabilities.
* ``npy``: DataComp's subset file: a sorted numpy array of dtype ``u8,u8`` (native
  byte order, as ``np.dtype("u8,u8")`` in ``baselines/apply_filter.py``), each uid as
  (upper 64 bits, lower 64 bits) of its 128-bit value. It has no weight column: uids
  can only repeat (``resharder.py`` writes a sample once per occurrence). Weights that
  are not all equal need ``output.repeat_factor`` f: a uid of weight w gets
  ``floor(w * f + u)`` copies, ``u`` a seeded uniform draw per uid, so a uid's expected
  copies are exactly ``w * f`` (:func:`copies_sql`); without it such weights are an
  error, never dropped.

The file is written to the store's ``tmp/`` folder and renamed into place with its
sidecar, so a killed run leaves the previous manifest (or none) and a temporary that
the next run removes; never a partial file beside the target.

The sidecar ``<manifest>.sidecar.json`` holds the resolved policy and its hash, the
seed, thresholds, input table versions (rows and latest run id), the stage runs
behind them (config hash and config), the fingerprint of the pool the policy read
(:func:`pool_fingerprint`), counts, the compiled SQL, the manifest's sha256 and row
count, and the curate and DuckDB versions. It has no timestamp: the same store,
policy and seed give byte-identical files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from .. import __version__
from ..errors import ConfigError, QueryError
from ..names import check_name, under
from .attributes import producer_class, producer_of
from .check import required_tables
from .compile import MixResult, run_policy
from .policy import Policy
from .sql import lit, source_cond, unit

if TYPE_CHECKING:
    from ..store import Store

EXT = {"parquet": "parquet", "csv": "csv", "tsv": "tsv", "json": "samples.jsonl", "jsonl": "jsonl", "npy": "npy"}
#: temporaries in the store's tmp/ folder: ``mix-<pid>-<token>-<manifest name>``
TMP_PREFIX = "mix-"


def stage_of(table: str) -> str | None:
    """The registered stage that writes ``table`` (the sidecar records the run whose
    configuration its rows are read under), from the declarations. Tables that several
    runs write side by side are handled on their own: for dedup_groups (caption and image
    dedup passes) and concept_tags (tagging runs) input_versions records the runs whose
    rows count, and clip_scores is recorded per model."""
    from ..stages.base import Stage

    producer = producer_class(table)
    if table == "clip_scores" or producer is None or not issubclass(producer, Stage):
        return None
    name: str = producer.registry_name()
    return name


def hex_id(expr: str) -> str:
    """SQL: a UUID column as 32 lower-case hex digits (DataComp's uid form)."""
    return f"replace({expr}::VARCHAR, '-', '')"


UID_HEX = hex_id("uid")


def _q(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def candidates_sql(res: MixResult) -> str:
    """(uid, caption_id, variant, prob, ord) of every candidate of the final rows."""
    if res.multi:
        return "SELECT c.uid, c.caption_id, c.variant, c.prob, c.ord FROM _mix_cands c SEMI JOIN _mix_final f USING (uid)"
    return "SELECT uid, caption_id, variant, 1.0::DOUBLE AS prob, 0 AS ord FROM _mix_final"


def _late(inner: str, outer_cols: str) -> str:
    """``inner`` (already in draw order) with ``outer_cols`` computed after the sort.

    DuckDB sorts whole rows; formatting the 16-byte UUIDs as 32- and 36-character
    strings before the sort doubled the bytes it moved and cost a third of the 10M
    manifest's time (benchmarks/RESULTS.md, mixing). A projection keeps its input's
    order, so converting after the ORDER BY gives the same rows in the same order."""
    return f"SELECT {outer_cols} FROM ({inner})"


def rows_sql(res: MixResult, candidates: bool) -> str:
    inner_cols = ("f.uid, f.source, s.url, s.image_shard, s.image_key, s.image_path, f.caption_id, "
                  "c.text AS caption, f.variant, f.weight")
    outer = (f"{UID_HEX} AS uid, source, url, image_shard, image_key, image_path, "
             f"{hex_id('caption_id')} AS caption_id, caption, variant, weight")
    joins = "FROM _mix_final f JOIN samples s USING (uid) JOIN captions c ON c.caption_id = f.caption_id"
    if candidates:
        agg = (f"SELECT k.uid, list(struct_pack(variant := k.variant, caption_id := {hex_id('k.caption_id')}, "
               f"text := t.text, prob := k.prob::DOUBLE) ORDER BY k.ord, k.caption_id) AS captions "
               f"FROM ({candidates_sql(res)}) k JOIN captions t USING (caption_id) GROUP BY k.uid")
        return _late(f"SELECT {inner_cols}, cand.captions {joins} LEFT JOIN ({agg}) cand ON cand.uid = f.uid "
                     "ORDER BY f.key, f.uid", f"{outer}, captions")
    return _late(f"SELECT {inner_cols} {joins} ORDER BY f.key, f.uid", outer)


def json_keys(con: Any, res: MixResult) -> tuple[str, list[tuple[str, float]], int, float]:
    """(SQL of per-sample JSON rows, [(variant key, mean probability)], slot count K, the
    largest slot-layout error). Each row carries the readable per-variant keys and the K
    caption slots ``c0..c{K-1}`` of :mod:`curate.shards.captions`, which make open_clip's
    own sampler draw the policy's per-sample probabilities."""
    import pyarrow as pa

    from ..shards.captions import Candidate, layout_error, slot_count, slot_keys, slot_layout

    keyed = (f"SELECT uid, caption_id, prob, ord, CASE WHEN n = 1 THEN variant ELSE variant || '_' || n END AS key "
             f"FROM (SELECT *, row_number() OVER (PARTITION BY uid, variant ORDER BY ord, caption_id) AS n "
             f"FROM ({candidates_sql(res)}))")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _mix_keyed AS {keyed}")
    total = con.execute("SELECT count(*) FROM _mix_final").fetchall()[0][0] or 1
    keys = con.execute(f"SELECT key, sum(prob) / {total} FROM _mix_keyed GROUP BY key "
                       "ORDER BY min(ord), key").fetchall()
    # the slots: every sample's candidates in (ord, caption_id) order, laid out in Python
    cands = con.execute("SELECT k.uid, list(struct_pack(v := k.key, t := t.text, p := k.prob::DOUBLE) "
                        "ORDER BY k.ord, k.caption_id) FROM _mix_keyed k JOIN captions t USING (caption_id) "
                        "GROUP BY k.uid").fetchall()
    per_uid = {uid: [Candidate(c["v"], c["t"], c["p"]) for c in cs] for uid, cs in cands}
    k, _exact = slot_count([c.prob for c in cs] for cs in per_uid.values())
    err = max((layout_error(cs, k) for cs in per_uid.values()), default=0.0)
    layouts = [slot_layout(cs, k) for cs in per_uid.values()]
    slots = slot_keys(k)
    con.register("_mix_slots", pa.table({"uid": pa.array([str(u) for u in per_uid], pa.string()),
                                         **{name: pa.array([lay[i] for lay in layouts], pa.string())
                                            for i, name in enumerate(slots)}}))
    pivot = ", ".join(f"max(t.text) FILTER (WHERE k.key = {lit(k_)}) AS \"{k_}\"" for k_, _ in keys)
    probs = ", ".join(f"\"{k_}\" := (max(k.prob) FILTER (WHERE k.key = {lit(k_)}))::DOUBLE" for k_, _ in keys)
    per = (f"SELECT k.uid, {pivot}, struct_pack({probs}) AS caption_probs FROM _mix_keyed k "
           f"JOIN captions t USING (caption_id) GROUP BY k.uid")
    keycols = ", ".join(f"\"{k_}\"" for k_, _ in keys)
    slotcols = ", ".join(f"\"{n}\"" for n in slots)
    inner = ("SELECT f.uid, f.source, s.url, s.image_shard, s.image_key, s.image_path, c.text AS caption, f.caption_id, "
             "f.variant, f.weight, " + ", ".join(f"p.\"{k_}\"" for k_, _ in keys) + ", p.caption_probs, "
             + ", ".join(f"sl.\"{n}\"" for n in slots) + " "
             f"FROM _mix_final f JOIN samples s USING (uid) JOIN captions c ON c.caption_id = f.caption_id "
             f"JOIN ({per}) p ON p.uid = f.uid JOIN _mix_slots sl ON sl.uid = f.uid::VARCHAR ORDER BY f.key, f.uid")
    sql = _late(inner, f"{UID_HEX} AS uid, source, url, image_shard, image_key, image_path, caption, "
                f"{hex_id('caption_id')} AS caption_id, variant, weight, {keycols}, caption_probs, {slotcols}")
    return sql, [(k_, float(p)) for k_, p in keys], k, err


def copies_sql(res: MixResult) -> str:
    """SQL over ``_mix_final``: the copies of each uid in the ``.npy`` subset file.

    With ``output.repeat_factor`` f, a uid of weight w gets ``floor(w * f + u)``
    copies, ``u = unit(hash(uid, seed, 'copies'))`` uniform in [0, 1): stochastic
    rounding, so the expected copies are exactly ``w * f`` and copy counts keep the
    weights' ratios in expectation (a 0.013 weight against a 1.0 weight at f = 100 gives
    1.3 against 100 copies on average, not 1 against 100). Each uid is off ``w * f`` by
    less than one copy; a uid with ``w * f < 1`` gets none with probability ``1 - w * f``
    (MetaCLIP's weights are keep-probabilities: this is its sampling). Without f every
    uid is written once, which only :func:`check_npy_weights` admits for equal weights."""
    out = res.policy.output
    if out.repeat_factor is None:
        return "1::BIGINT"
    u = unit(f"hash(uid, {res.policy.seed}, 'copies')")
    return f"floor(weight * {lit(out.repeat_factor)} + {u})::BIGINT"


def check_npy_weights(con: Any, res: MixResult) -> None:
    """Refuse an ``.npy`` that would lose the weights: unequal weights without
    ``repeat_factor``, or a ``repeat_factor`` whose largest ``w * f`` exceeds
    ``max_repeats`` (a cap would flatten the ratios)."""
    out = res.policy.output
    n, lo, hi = con.execute("SELECT count(DISTINCT weight), min(weight), max(weight) FROM _mix_final").fetchall()[0]
    if out.repeat_factor is None:
        if n > 1:
            raise ConfigError(
                f"format npy cannot carry the {res.policy.weight.method} weights ({n:,} distinct, {lo:.4g} to "
                f"{hi:.4g}): set output.repeat_factor for seeded integer copies (docs/mixing.md, npy), or write "
                "parquet, jsonl, json, csv or tsv, which carry a weight column")
        return
    if hi is not None and hi * out.repeat_factor > out.max_repeats:
        raise ConfigError(
            f"output.repeat_factor {out.repeat_factor:g} gives the largest weight {hi:.4g} "
            f"{hi * out.repeat_factor:.4g} expected copies, above output.max_repeats {out.max_repeats}; a cap would "
            "change the weight ratios: lower repeat_factor or raise max_repeats")


def npy_array(con: Any, res: MixResult) -> tuple[np.ndarray, dict[str, Any]]:
    """The sorted ``u8,u8`` subset array and what the copies rule did (for the sidecar)."""
    check_npy_weights(con, res)
    tbl = con.sql("SELECT (uid::UHUGEINT >> 64)::UBIGINT AS hi, (uid::UHUGEINT & 18446744073709551615)::UBIGINT AS lo, "
                  f"{copies_sql(res)} AS n, weight FROM _mix_final").to_arrow_table()
    hi = tbl["hi"].to_numpy()
    lo = tbl["lo"].to_numpy()
    n = tbl["n"].to_numpy()
    arr = np.empty(int(n.sum()), dtype=np.dtype("u8,u8"))
    arr["f0"] = np.repeat(hi, n)
    arr["f1"] = np.repeat(lo, n)
    arr.sort()
    out = res.policy.output
    info: dict[str, Any] = {"repeat_factor": out.repeat_factor, "uids": len(n), "copies": int(n.sum())}
    if out.repeat_factor is not None:
        w = tbl["weight"].to_numpy()
        info.update({"rule": "floor(weight * repeat_factor + u), u = unit(hash(uid, seed, 'copies'))",
                     "expected_copies": float((w * out.repeat_factor).sum()), "uids_without_copies": int((n == 0).sum()),
                     "max_copies": int(n.max()) if len(n) else 0})
    return arr, info


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _copy(con: Any, sql: str, path: Path, options: str) -> None:
    try:
        con.execute(f"COPY ({sql}) TO {_q(path)} ({options})")
    except duckdb.Error as e:
        raise QueryError(" ".join(str(e).split())[:500]) from None


def input_versions(store: Store, policy: Policy,
                   resolved: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Rows and latest run id of every table the policy reads; the stage runs behind
    them (run id, stage, config hash, config).

    A table of one stage gets that stage's latest run (any status: the run whose
    configuration :func:`curate.attributes.latest_sql` reads). ``dedup_groups`` gets the runs
    whose verdicts the policy's dedup attributes read, by their rule (only the latest
    run of each kind and scope counts): for ``dedup_kept`` the latest caption dedup run
    of each scope in ``dedup_summary``, for ``image_dedup_kept`` the latest image dedup
    run (``member_kind`` 'uid') of each kind and scope; each entry lists its
    ``scopes`` (kind, scope). ``concept_tags`` gets the latest tagging run of the
    (``set_name``, ``concept_set``) the weight names (``image_set``, ``concept_set``;
    every pair when it names none), with its ``config_hash``."""
    tables = ["samples", "captions", *sorted(required_tables(policy))]
    have = set(store.tables())
    attrs = {p.attribute for p in policy.select}
    versions: dict[str, Any] = {}
    stages = []

    def run_entry(t: str, run_id: int, **extra: Any) -> dict[str, Any]:
        r = store.execute("SELECT stage, config_hash, config FROM runs WHERE run_id = ?", [run_id]).fetchall()
        stage, config_hash, config = r[0] if r else (None, None, None)
        return {"table": t, "run_id": run_id, "stage": stage, "config_hash": config_hash,
                "config": json.loads(config) if isinstance(config, str) else config, **extra}

    for t in tables:
        cols = store.columns(t)
        row = store.execute(f"SELECT count(*), {'max(run_id)' if 'run_id' in cols else 'NULL'} FROM {t}").fetchall()[0]
        versions[t] = {"rows": row[0], "latest_run_id": row[1]}
        if t == "dedup_groups":
            latest = []  # (kind, scope, run_id), as attributes.py selects them for the rule
            if "dedup_kept" in attrs and "dedup_summary" in have:
                latest += store.execute("SELECT kind, scope, max(run_id) FROM dedup_summary GROUP BY ALL").fetchall()
            if "image_dedup_kept" in attrs:
                latest += store.execute("SELECT kind, scope, max(run_id) FROM dedup_groups WHERE member_kind = 'uid' "
                                        "GROUP BY ALL").fetchall()
            for run_id in sorted({r for _, _, r in latest}):
                scopes = sorted({(k, s) for k, s, r in latest if r == run_id})
                stages.append(run_entry(t, run_id, scopes=[{"kind": k, "scope": s} for k, s in scopes]))
        elif t == "concept_tags":
            pair = [getattr(policy.weight, "image_set", None), getattr(policy.weight, "concept_set", None)]
            where = "WHERE set_name = ? AND concept_set = ? " if all(pair) else ""
            for set_name, concept_set, run_id, config_hash in store.execute(
                    "SELECT set_name, concept_set, max(run_id), arg_max(config_hash, run_id) FROM concept_tags "
                    f"{where}GROUP BY ALL ORDER BY 1, 2", pair if all(pair) else None).fetchall():
                stages.append({**run_entry(t, run_id), "set_name": set_name, "concept_set": concept_set,
                               "config_hash": config_hash})
        elif t == "caption_concepts":
            # the latest run of each vocabulary the policy reads (runs of other vocabularies
            # write other rows)
            for vocab in sorted(_vocabularies(policy)):
                run = store.execute(
                    "SELECT run_id FROM runs WHERE stage = ? "
                    "AND json_extract_string(config, '$.config.vocabulary') = ? ORDER BY run_id DESC LIMIT 1",
                    [stage_of(t), vocab]).fetchall()
                if run:
                    stages.append(run_entry(t, run[0][0]))
        elif stage_of(t):
            # the run whose configuration the attribute rows come from (latest_sql's rule)
            run = store.execute("SELECT run_id FROM runs WHERE stage = ? "
                                "ORDER BY run_id DESC LIMIT 1", [stage_of(t)]).fetchall()
            if run:
                stages.append(run_entry(t, run[0][0]))
        if t == "clip_scores":
            # the models the policy resolved; all of them when it read none (the audit's case)
            models = sorted(set(((resolved or {}).get("clip_models") or {}).values())) or [
                m[0] for m in store.execute("SELECT DISTINCT model FROM clip_scores_latest ORDER BY 1").fetchall()]
            for model in models:
                # the run clip_scores_latest reads for the model (clip.score.v1), else the contract
                run = store.execute(
                    "SELECT run_id FROM runs WHERE stage = 'clip.score.v1' "
                    "AND json_extract_string(config, '$.config.model_id') = ? ORDER BY run_id DESC LIMIT 1",
                    [model]).fetchall()
                if run:
                    stages.append({**run_entry(t, run[0][0]), "model": model})
                else:
                    stages.append({"table": t, "stage": "clip (contract)", "model": model,
                                   "producer": producer_of("clip_scores")})
    return versions, stages


def _vocabularies(policy: Policy) -> set[str]:
    out = {p.vocabulary for p in policy.select if p.vocabulary}
    return out | {v for v, _ in policy.weight.vocabularies()}



def pool_fingerprint(store: Store, policy: Policy) -> dict[str, Any]:
    """What the policy's pool was: its samples (count and the sha256 of their sorted
    uids, each as its 16 bytes, i.e. ``sha256(b"".join(bytes.fromhex(u) for u in
    sorted(uids)))``) and its captions of the variants the strategy can emit (count per
    variant). The manifest audit compares it with the store now. 4.1 s at 10M samples
    on two threads, most of it the sort."""
    cond = source_cond(policy, "p")
    h = hashlib.sha256()
    n = 0
    reader = store.con.sql("SELECT (uid::UHUGEINT >> 64)::UBIGINT AS hi, (uid::UHUGEINT & 18446744073709551615)::UBIGINT "
                           f"AS lo FROM samples p WHERE {cond} ORDER BY uid").to_arrow_reader(1 << 20)
    for batch in reader:
        arr = np.empty(batch.num_rows, dtype=np.dtype(">u8,>u8"))
        arr["f0"] = batch.column(0).to_numpy()
        arr["f1"] = batch.column(1).to_numpy()
        h.update(arr.tobytes())
        n += batch.num_rows
    variants = ", ".join(lit(v) for v in policy.choose.emits())
    captions = {str(v): int(k) for v, k in store.execute(
        f"SELECT variant, count(*) FROM captions c WHERE {source_cond(policy, 'c')} AND variant IN ({variants}) "
        "GROUP BY 1 ORDER BY 1").fetchall()}
    return {"samples": n, "uids_sha256": h.hexdigest(), "captions": captions}


def manifest_path(store: Store, policy: Policy) -> Path:
    """``STORE/manifests/<output.name or policy.name>.<ext>``; the name is checked
    (:func:`curate.names.check_name`) and the path may not leave ``manifests/``."""
    name = check_name("manifest", policy.output.name or policy.name)
    return under(Path(store.path) / "manifests", f"{name}.{EXT[policy.output.format]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(tmp: Path) -> list[Path]:
    """Remove the temporaries of mix runs that are no longer running (killed ones):
    ``tmp/mix-<pid>-...`` whose process is gone. Returns what was removed."""
    gone = []
    for f in sorted(tmp.glob(TMP_PREFIX + "*")):
        pid = f.name[len(TMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            f.unlink(missing_ok=True)
            gone.append(f)
    return gone


def _move(src: Path, dst: Path) -> None:
    """Rename ``src`` onto ``dst``; across file systems (an ``--out`` elsewhere), copy to
    a temporary beside ``dst`` first, so ``dst`` is replaced whole or not at all."""
    try:
        os.replace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        part = dst.with_name(f".{dst.name}.{os.getpid()}.part")
        try:
            shutil.copyfile(src, part)
            os.replace(part, dst)
        finally:
            part.unlink(missing_ok=True)
            src.unlink(missing_ok=True)


def write_manifest(store: Store, policy: Policy, path: Path | None = None, res: MixResult | None = None) -> dict[str, Any]:
    """Run ``policy`` on ``store`` (unless ``res`` is given) and write the manifest and
    its sidecar; returns the sidecar dict (with ``path`` and ``sidecar`` added).

    Without ``path`` the manifest goes to :func:`manifest_path`; an explicit ``path``
    (``--out``) may be anywhere. Both files are first written to the store's ``tmp/``
    and then renamed into place; temporaries of killed runs are removed first."""
    res = res or run_policy(store, policy)
    in_store = path is None
    path = Path(path) if path is not None else manifest_path(store, policy)
    path.parent.mkdir(parents=not in_store, exist_ok=True)
    tmpdir = Path(store.path) / "tmp"
    tmpdir.mkdir(exist_ok=True)
    clean_stale_temporaries(tmpdir)
    if in_store:
        # the partial file DuckDB's COPY left beside the target when an older curate was killed
        (path.parent / f"tmp_{path.name}").unlink(missing_ok=True)
    token = f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
    tmp = tmpdir / f"{token}{path.name}"
    tmp_side = tmpdir / f"{token}{path.name}.sidecar.json"
    try:
        sidecar = _write(store, policy, res, tmp, path.name)
        tmp_side.write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        side = path.with_name(path.name + ".sidecar.json")
        _move(tmp, path)
        _move(tmp_side, side)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
    return {**sidecar, "path": str(path), "sidecar": str(side)}


def _csv_image_rows(con: Any, images: str) -> dict[str, int]:
    """Register ``_mix_csv_ok`` (the uids whose image is a local file that exists) and
    count the manifest's other samples by reason: ``no image`` (never stored, or a failed
    download), ``image in an img2dataset shard`` (write shards: ``curate shards``),
    ``image file missing``. With ``images = "any"`` the counts say what the url rows are."""
    import os

    import pyarrow as pa

    rows = con.execute("SELECT f.uid::VARCHAR, s.image_path, s.image_shard IS NOT NULL AND s.image_key IS NOT NULL "
                       "FROM _mix_final f JOIN samples s USING (uid)").fetchall()
    ok, counts = [], {"no image": 0, "image in an img2dataset shard": 0, "image file missing": 0}
    for uid, image_path, in_shard in rows:
        if image_path is not None and os.path.isfile(image_path):
            ok.append(uid)
        elif image_path is not None:
            counts["image file missing"] += 1
        elif in_shard:
            counts["image in an img2dataset shard"] += 1
        else:
            counts["no image"] += 1
    con.register("_mix_csv_ok", pa.table({"uid": pa.array(ok, pa.string())}))
    return {k: v for k, v in counts.items() if v}


def _write(store: Store, policy: Policy, res: MixResult, path: Path, name: str) -> dict[str, Any]:
    """Write the manifest to ``path``; the sidecar for a manifest called ``name``."""
    con = store.con
    out = policy.output
    extra: dict[str, Any] = {}
    fmt = out.format
    rows = res.counts["samples"]
    if fmt == "parquet":
        _copy(con, rows_sql(res, out.candidates), path, "FORMAT parquet, COMPRESSION zstd")
    elif fmt == "jsonl":
        _copy(con, rows_sql(res, out.candidates), path, "FORMAT json")
    elif fmt in ("csv", "tsv"):
        excluded = _csv_image_rows(con, out.images)
        keep = "" if out.images == "any" else "WHERE f.uid::VARCHAR IN (SELECT uid FROM _mix_csv_ok) "
        inner = ("SELECT coalesce(s.image_path, s.url, '') AS filepath, c.text AS title, f.uid, f.caption_id, "
                 f"f.variant, f.weight FROM _mix_final f JOIN samples s USING (uid) "
                 f"JOIN captions c ON c.caption_id = f.caption_id {keep}ORDER BY f.key, f.uid")
        sql = _late(inner, f"filepath, title, {UID_HEX} AS uid, {hex_id('caption_id')} AS caption_id, variant, weight")
        sep = "\\t" if fmt == "tsv" else ","
        _copy(con, sql, path, f"FORMAT csv, HEADER true, DELIMITER '{sep}'")
        con.unregister("_mix_csv_ok")
        rows -= sum(excluded.values()) if out.images == "local" else 0
        extra["open_clip"] = {"args": ["--dataset-type", "csv", "--csv-img-key", "filepath", "--csv-caption-key",
                                       "title", "--csv-separator", "\t" if fmt == "tsv" else ","],
                              "images": out.images, "excluded": excluded}
    elif fmt == "json":
        from ..shards.captions import open_clip_args, slot_keys

        sql, keys, k, err = json_keys(con, res)
        _copy(con, sql, path, "FORMAT json")
        con.unregister("_mix_slots")
        extra["open_clip"] = {"json_text_keys": slot_keys(k), "caption_slots": k, "slot_layout_max_error": err,
                              "variant_keys": {k_: round(p, 6) for k_, p in keys},
                              "args": open_clip_args(k),
                              "note": "--json-text-key(-probs) exist on open_clip main (2026-06), not in 3.3.0; "
                                      "the slots c0..cK-1 with equal weights make its sampler draw each sample's "
                                      "captions with the policy's probabilities (the variant keys' mean "
                                      "probabilities would not: docs/shards.md)"}
    elif fmt == "npy":
        arr, copies = npy_array(con, res)
        with path.open("wb") as f:  # a file object: np.save would add .npy to a name
            np.save(f, arr)
        rows = len(arr)
        extra["datacomp"] = {"dtype": "u8,u8", "descr": np.dtype("u8,u8").descr, "copies": copies,
                             "use": f"python resharder.py -i POOL -o OUT -s {name}"}
    else:  # pragma: no cover
        raise ConfigError(f"unknown format {fmt}")
    versions, stages = input_versions(store, policy, res.resolved)
    return {
        "manifest": name, "format": fmt, "rows": rows,
        "sha256": _sha256(path),
        "policy": policy.to_dict(), "policy_hash": policy.hash(), "seed": policy.seed,
        "thresholds": res.thresholds, "resolved": res.resolved, "counts": res.counts,
        "inputs": versions, "stages": stages, "pool": pool_fingerprint(store, policy), **extra,
        "versions": {"curate": __version__, "duckdb": duckdb.__version__, "numpy": np.__version__},
        "sql": res.sql,
    }
