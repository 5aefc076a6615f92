"""Near-duplicate images by range search, exact duplicates by sha256, placeholder images.

* :func:`near_duplicates`: every vector of a set is a range query against an index of
  the same set (built here from a factory string, or a saved one); pairs with exact
  cosine ``> threshold`` are grouped (:mod:`curate.similarity.groups`), kind
  ``<set kind>_near``, method ``range``. Unlike SemDeDup there is no clustering, so with
  an exact index (Flat, or IVF with nprobe = nlist) every pair above the threshold is found.
* :func:`exact_duplicates`: samples with the same ``samples.sha256`` form a group (kind
  ``image_exact``, method ``sha256``, similarity 1), except **placeholder** hashes.
* **Placeholders**: one sha256 served for at least ``min_urls`` distinct URLs (the
  "photo unavailable" image a host returns for every missing file, a known img2dataset
  pitfall). They are not duplicates of one another's content, so they are listed in
  ``image_placeholders`` (with URL and host counts) instead of forming a group; a
  mixing policy drops their samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from .. import progress
from ..errors import ConfigError
from ..runs import start_run
from ..store import Store
from ..vectors import open_set
from .groups import (
    Groups,
    check_threshold,
    ensure_tables,
    group_pairs,
    ingest_order,
    keep_rank,
    require_ids,
    score_column,
    write_groups,
)
from .index import Index, build_index, exact_scores, load_index

NEAR_STAGE = "similarity.near.v1"
EXACT_STAGE = "similarity.exact.v1"
MERGE_STAGE = "similarity.merge_captions.v1"


def self_pairs(index: Index, threshold: float, block_rows: int = 16_384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of the index's set with exact similarity > threshold (as found by the index)."""
    vs = index.vs
    out_i, out_j, out_s = [], [], []
    for s, b in progress.blocks(vs.blocks(block_rows), vs.count, "range search"):
        for qi, rows, sc in index.range(b, threshold):
            qi = qi + s
            m = rows != qi
            lo, hi = np.minimum(qi[m], rows[m]), np.maximum(qi[m], rows[m])
            out_i.append(lo)
            out_j.append(hi)
            out_s.append(sc[m])
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    pi, pj, ps = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)
    # each pair is found from both ends (approximate indexes may find only one): keep one
    key = pi * vs.count + pj
    _, first = np.unique(key, return_index=True)
    return pi[first], pj[first], ps[first]


def check_near_options(threshold: float, keep: str) -> float:
    """The checks of :func:`near_duplicates` that need no store; the threshold as a float."""
    threshold = check_threshold(threshold, "threshold")
    if keep not in ("first", "score"):
        raise ConfigError(f"near-duplicate keep must be first or score (no centroids here), got {keep!r}")
    return threshold


@dataclass
class NearResult:
    set_name: str
    threshold: float
    factory: str
    count: int
    pairs: int
    groups: Groups
    config_hash: str = ""
    run_id: int | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        g = self.groups
        return (f"{NEAR_STAGE}: set {self.set_name!r} ({self.count:,} vectors, index {self.factory}); "
                f"{self.pairs:,} pairs with cosine > {self.threshold:g}; {g.n_groups:,} groups, "
                f"{g.removed:,} near duplicates; {self.seconds:.1f}s, run {self.run_id}")


def near_duplicates(store: Store, set_name: str, *, threshold: float = 0.95, factory: str = "Flat",
                    index_name: str | None = None, nprobe: int | None = None, ef_search: int | None = None,
                    keep: Literal["first", "score"] = "first", score: str | None = None,
                    grouping: Literal["center", "components"] = "center", device: str = "auto") -> NearResult:
    """Group near duplicates of a set by range search (see the module docstring). Uses the
    saved index ``index_name`` if given, else builds ``factory`` in memory."""
    threshold = check_near_options(threshold, keep)
    vs = open_set(store, set_name)
    require_ids(vs)
    ensure_tables(store)
    cfg: dict[str, Any] = {"set": set_name, "set_run_id": vs.run_id, "threshold": threshold, "factory": factory,
                           "index": index_name, "nprobe": nprobe, "ef_search": ef_search, "keep": keep,
                           "score": score, "grouping": grouping}
    with start_run(store, "similarity", NEAR_STAGE, cfg) as run:
        t0 = time.perf_counter()
        if index_name:
            index = load_index(store, index_name, device=device, nprobe=nprobe, ef_search=ef_search)
            if index.settings.set_name != vs.name:
                raise ConfigError(f"index {index_name} is over set {index.settings.set_name}, not {vs.name}")
        else:
            index = build_index(vs, factory, nprobe=nprobe, ef_search=ef_search, device=device)
        pi, pj, ps = self_pairs(index, threshold)
        first = ingest_order(store, vs)
        rank = keep_rank(keep, first, None, score_column(store, vs, score) if score else None)
        groups = group_pairs(pi, pj, ps, rank, grouping, lambda a, b: exact_scores(vs.rows(a), vs.rows(b)))
        res = NearResult(vs.name, threshold, index.settings.factory, vs.count, len(pi), groups, run.hash, run.id)
        with run.transaction() as w:
            n = write_groups(w, groups, vs.ids(), kind=f"{vs.kind}_near", scope=vs.name, member_kind=vs.id_column,
                             method="range", config_hash=run.hash, run_id=run.id)
            res.seconds = time.perf_counter() - t0
            run.commit_ok(w, vs.count, n, 0, f"{groups.n_groups} groups, {groups.removed} near duplicates")
    return res


@dataclass
class ExactResult:
    samples: int
    groups: int
    duplicates: int
    placeholders: int
    placeholder_samples: int
    run_id: int | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{EXACT_STAGE}: {self.samples:,} samples with a sha256; {self.groups:,} exact-duplicate groups, "
                f"{self.duplicates:,} duplicates; {self.placeholders:,} placeholder hashes covering "
                f"{self.placeholder_samples:,} samples (see `curate sql -q similarity.placeholders`); "
                f"{self.seconds:.1f}s, run {self.run_id}")


def check_exact_options(min_urls: int, keep: str, score: str | None) -> None:
    """The checks of :func:`exact_duplicates` that need no store."""
    if min_urls < 2:
        raise ConfigError(f"min_urls must be at least 2, got {min_urls}")
    if keep not in ("first", "score"):
        raise ConfigError(f"exact-duplicate keep must be first or score, got {keep!r}")
    if (keep == "score") != bool(score):
        raise ConfigError("keep='score' goes with score=TABLE.COLUMN, and only then")


def exact_duplicates(store: Store, *, min_urls: int = 20, keep: Literal["first", "score"] = "first",
                     score: str | None = None) -> ExactResult:
    """Exact duplicates by ``samples.sha256`` and placeholder hashes (module docstring).
    Keep ``first``: smallest run_id, then smallest uid; ``score``: highest ``TABLE.COLUMN``
    (keyed by uid), then first."""
    check_exact_options(min_urls, keep, score)
    ensure_tables(store)
    score_join, score_order = "", ""
    if score:
        from ..store import check_identifier, quote_ident

        table, _, column = score.partition(".")
        check_identifier(table), check_identifier(column)
        if column not in store.columns(table) or "uid" not in store.columns(table):
            raise ConfigError(f"score table {table!r} needs columns uid and {column}")
        score_join = f"LEFT JOIN (SELECT uid, max({quote_ident(column)}) AS score FROM {quote_ident(table)} GROUP BY uid) sc USING (uid)"
        score_order = "sc.score DESC NULLS LAST, "
    cfg = {"min_urls": min_urls, "keep": keep, "score": score}
    with start_run(store, "similarity", EXACT_STAGE, cfg) as run:
        t0 = time.perf_counter()
        with run.transaction() as w:
            p = {"h": run.hash, "r": run.id, "min_urls": min_urls}
            w.execute("DELETE FROM image_placeholders WHERE config_hash = $h", {"h": run.hash})
            w.execute("""
                INSERT INTO image_placeholders
                WITH s AS (SELECT sha256, url, regexp_extract(url, '^[a-zA-Z]+://([^/?#]+)', 1) AS host
                           FROM samples WHERE sha256 IS NOT NULL)
                SELECT sha256, count(*), count(DISTINCT url), count(DISTINCT host), mode(host), min(url), $h, $r
                FROM s GROUP BY sha256 HAVING count(DISTINCT url) >= $min_urls
            """, p)
            w.execute("DELETE FROM dedup_groups WHERE kind = 'image_exact' AND config_hash = $h", {"h": run.hash})
            w.execute(f"""
                INSERT INTO dedup_groups (kind, scope, group_id, member_kind, member_id, kept, similarity, method,
                                          group_size, config_hash, run_id)
                WITH s AS (
                    SELECT uid, sha256, run_id FROM samples
                    WHERE sha256 IS NOT NULL
                      AND sha256 NOT IN (SELECT sha256 FROM image_placeholders WHERE config_hash = $h)
                ), o AS (
                    SELECT s.uid, s.sha256, s.run_id, count(*) OVER w AS n,
                           row_number() OVER (w ORDER BY {score_order}s.run_id, s.uid) AS r
                    FROM s {score_join}
                    WINDOW w AS (PARTITION BY s.sha256)
                ), k AS (
                    SELECT sha256, row_number() OVER (ORDER BY run_id, uid) AS group_id FROM o WHERE r = 1 AND n > 1
                )
                SELECT 'image_exact', 'samples', k.group_id, 'uid', o.uid, o.r = 1, 1.0, 'sha256', o.n, $h, $r
                FROM o JOIN k USING (sha256)
            """, {"h": run.hash, "r": run.id})
            stats = w.execute("""
                SELECT (SELECT count(*) FROM samples WHERE sha256 IS NOT NULL),
                       (SELECT count(*) FILTER (WHERE kept) FROM dedup_groups WHERE kind = 'image_exact' AND config_hash = $h),
                       (SELECT count(*) FILTER (WHERE NOT kept) FROM dedup_groups WHERE kind = 'image_exact' AND config_hash = $h),
                       (SELECT count(*) FROM image_placeholders WHERE config_hash = $h),
                       (SELECT coalesce(sum(samples), 0) FROM image_placeholders WHERE config_hash = $h)
            """, {"h": run.hash}).fetchall()[0]
            samples, groups, duplicates, placeholders, placeholder_samples = (int(v) for v in stats)
            res = ExactResult(samples, groups, duplicates, placeholders, placeholder_samples, run_id=run.id)
            res.seconds = time.perf_counter() - t0
            run.commit_ok(w, res.samples, res.groups + res.duplicates, 0,
                          f"{res.groups} groups, {res.placeholders} placeholder hashes")
    return res


def merged_captions(store: Store, kind: str = "image_semantic", run_id: int | None = None) -> pa.Table:
    """The captions of non-kept duplicates, each listed with the kept sample it would join
    (the ``duplicate_captions`` view; ``captions`` is not modified). ``run_id``: one run,
    else the latest run of ``kind``."""
    ensure_tables(store)
    if run_id is None:
        got = store.con.execute("SELECT max(run_id) FROM dedup_groups WHERE kind = ?", [kind]).fetchall()[0][0]
        if got is None:
            return store.arrow("SELECT * FROM duplicate_captions LIMIT 0")
        run_id = got
    return store.arrow("SELECT * FROM duplicate_captions WHERE kind = $kind AND run_id = $run_id "
                       "ORDER BY group_id, duplicate_uid, variant, caption_id", {"kind": kind, "run_id": run_id})


@dataclass
class MergeResult:
    """The outcome of a caption merge: captions of dropped duplicates (``candidates``),
    those added to their kept sample, those the kept sample already had. ``run_id`` is
    None when there was nothing to merge (no run is recorded then)."""

    kind: str
    candidates: int
    added: int
    already_on_kept: int
    run_id: int | None = None

    def counts(self) -> dict[str, int]:
        return {"candidates": self.candidates, "added": self.added, "already_on_kept": self.already_on_kept}

    def summary(self) -> str:
        return (f"{MERGE_STAGE}: {self.added:,} captions merged into kept samples ({self.candidates:,} captions of "
                f"dropped {self.kind} duplicates, {self.already_on_kept:,} already on the kept sample)"
                + (f", run {self.run_id}" if self.run_id is not None else "; nothing to do"))


def check_suffix(suffix: str) -> None:
    if not suffix or not suffix.replace("_", "").isalnum():
        raise ConfigError(f"suffix must be letters, digits or _, got {suffix!r}")


def merge_captions(store: Store, kind: str = "image_semantic", run_id: int | None = None, *,
                   suffix: str = "_dup") -> dict[str, int]:
    """Caption-aware merge: the captions of an image group's dropped duplicates join the
    kept sample as extra caption variants (``<variant><suffix>``, e.g. ``raw_dup``), in
    one transaction with a runs row. Nothing is removed. A text the kept sample already
    has in that variant, or in the merged variant, is not added twice; a rerun adds
    nothing (caption ids follow the usual rule on the kept uid, new variant and text).
    Each new row's ``generator`` is ``merge:<kind>`` and its ``provenance`` names the
    duplicate sample, its caption and the run that grouped them. Returns counts
    (:meth:`MergeResult.counts`; :func:`merge_captions_result` returns the result)."""
    return merge_captions_result(store, kind, run_id, suffix=suffix).counts()


def merge_captions_result(store: Store, kind: str = "image_semantic", run_id: int | None = None, *,
                          suffix: str = "_dup") -> MergeResult:
    """:func:`merge_captions`, returning its :class:`MergeResult` (with the run id)."""
    from ..ids import caption_id_sql

    check_suffix(suffix)
    rows = merged_captions(store, kind, run_id)
    if rows.num_rows == 0:
        return MergeResult(kind, 0, 0, 0)
    run = int(rows.column("run_id")[0].as_py())
    cid = caption_id_sql("m.kept_uid", "m.variant || $suffix", "m.text")
    with start_run(store, "similarity", MERGE_STAGE, {"kind": kind, "run_id": run, "suffix": suffix}) as r:
        with r.transaction() as w:
            w.register("_curate_merge", rows)
            before = w.execute("SELECT count(*) FROM captions").fetchall()[0][0]
            w.execute(f"""
                INSERT INTO captions (caption_id, uid, variant, text, generator, provenance, source, run_id)
                SELECT DISTINCT ON (n.caption_id) n.* FROM (
                    SELECT {cid} AS caption_id, m.kept_uid AS uid, m.variant || $suffix AS variant, m.text,
                           'merge:' || m.kind AS generator,
                           json_object('duplicate_uid', m.duplicate_uid::VARCHAR, 'caption_id', m.caption_id::VARCHAR,
                                       'group_run_id', m.run_id, 'group_id', m.group_id,
                                       'similarity', m.similarity) AS provenance,
                           s.source, $run_id AS run_id
                    FROM _curate_merge m JOIN samples s ON s.uid = m.kept_uid
                    WHERE NOT m.already_on_kept
                ) n ANTI JOIN captions c USING (caption_id)
                ORDER BY n.caption_id, n.provenance::VARCHAR
            """, {"suffix": suffix, "run_id": r.id})
            added = w.execute("SELECT count(*) FROM captions").fetchall()[0][0] - before
            w.unregister("_curate_merge")
            on_kept = sum(1 for v in rows.column("already_on_kept").to_pylist() if v)
            r.commit_ok(w, rows.num_rows, added, 0, f"{added} captions merged into kept samples")
    return MergeResult(kind, rows.num_rows, added, on_kept, r.id)
