"""Duplicate groups from scored pairs: keep order, grouping, and the shared table.

**Keep rules** (which member of a group is kept), applied as one total order over the
rows of a set; the kept member of a group is its first member in this order:

* ``farthest``: lowest cosine similarity to its k-means centroid first (SemDeDup's
  "keep hard examples": the paper keeps "the image with the lowest cosine similarity to
  the cluster centroid", and the reference code's default ``keep_hard=True`` sorts by
  distance to the centroid, descending). SemDeDup only.
* ``nearest``: highest cosine similarity to the centroid first ("easy"). SemDeDup only.
* ``score``: highest value of a score column first (e.g. a CLIP score: ``table.column``
  joined on the set's id); members without a score come last.
* ``first``: first ingested: smallest ``run_id`` of the sample (caption), then smallest id.

Every rule breaks ties by ``first`` (smallest run_id, then smallest id), so the result
never depends on row order or floating-point noise in the kernels.

**Grouping** of the pairs ``similarity > threshold``:

* ``center`` (default, as caption dedup): in keep order, the first unassigned member
  of a pair is a kept centre and every unassigned member paired with it joins its
  group; repeat. Every member is a near duplicate of its kept member (similarity >
  threshold).
* ``components``: connected components of the pair graph, the first member in keep
  order kept. Chains are allowed, so a member can be less similar to the kept one.

Groups go to ``dedup_groups``, the table caption dedup defined (``curate.dedup.text``):
``kind`` (``image_semantic``, ``image_near``, ``image_exact``; ``text_semantic`` /
``text_near`` for caption-embedding sets), ``scope`` (the vector set, or ``samples`` for
sha256), ``group_id`` (1, 2, ... within kind and config, numbered in keep order of the
kept members), ``member_kind`` (``uid`` or ``caption_id``), ``member_id``, ``kept``,
``similarity`` (exact cosine to the kept member, 1 for itself), ``method``
(``semdedup``, ``range``, ``sha256``), ``group_size``, ``config_hash``, ``run_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import ConfigError, InputError
from ..store import Store, check_identifier, quote_ident
from ..vectors import VectorSet

KEEP_RULES = ("farthest", "nearest", "score", "first")
GROUPINGS = ("center", "components")

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS vector_clusters (
    purpose      VARCHAR NOT NULL,   -- 'semdedup' or 'target'
    set_name     VARCHAR NOT NULL,
    member_id    UUID NOT NULL,      -- the set's id (uid or caption_id)
    cluster      INTEGER NOT NULL,   -- k-means cluster, 0..k-1
    centroid_similarity DOUBLE NOT NULL,  -- exact cosine to the (spherical) centroid
    config_hash  VARCHAR NOT NULL,
    run_id       BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS concept_tags (
    set_name     VARCHAR NOT NULL,   -- the image vector set
    concept_set  VARCHAR NOT NULL,   -- the concept vector set
    uid          UUID NOT NULL,
    concept      VARCHAR NOT NULL,
    score        DOUBLE NOT NULL,    -- exact cosine of image and concept embeddings
    rank         INTEGER NOT NULL,   -- 1 = best; ties by concept row order
    config_hash  VARCHAR NOT NULL,
    run_id       BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS target_selection (
    set_name     VARCHAR NOT NULL,
    reference_set VARCHAR NOT NULL,
    uid          UUID NOT NULL,
    cluster      INTEGER NOT NULL,
    cluster_hits INTEGER NOT NULL,   -- reference vectors whose nearest centre is this cluster
    selected     BOOLEAN NOT NULL,   -- cluster_hits > 0
    config_hash  VARCHAR NOT NULL,
    run_id       BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS image_placeholders (
    sha256       VARCHAR NOT NULL,
    samples      BIGINT NOT NULL,
    urls         BIGINT NOT NULL,    -- distinct URLs serving these bytes
    hosts        BIGINT NOT NULL,    -- distinct URL hosts
    top_host     VARCHAR,
    example_url  VARCHAR,
    config_hash  VARCHAR NOT NULL,
    run_id       BIGINT NOT NULL
);
"""

MERGE_VIEW_SQL = """
CREATE OR REPLACE VIEW duplicate_captions AS
SELECT g.kind, g.scope, g.config_hash, g.run_id, g.group_id,
       k.member_id AS kept_uid, g.member_id AS duplicate_uid, g.similarity,
       c.caption_id, c.variant, c.text,
       EXISTS (SELECT 1 FROM captions o WHERE o.uid = k.member_id AND o.variant = c.variant AND o.text = c.text)
           AS already_on_kept
FROM dedup_groups g
JOIN dedup_groups k ON k.kind = g.kind AND k.config_hash = g.config_hash AND k.group_id = g.group_id AND k.kept
JOIN captions c ON c.uid = g.member_id
WHERE g.member_kind = 'uid' AND NOT g.kept
"""


def ensure_tables(store: Store) -> None:
    """The shared ``dedup_groups`` (caption dedup's DDL), this package's tables and the
    ``duplicate_captions`` view."""
    from ..dedup.text import ensure_tables as ensure_dedup_tables

    ensure_dedup_tables(store)
    need = {"kind", "scope", "group_id", "member_kind", "member_id", "kept", "similarity", "method", "group_size",
            "config_hash", "run_id"}
    have = set(store.columns("dedup_groups"))
    if not need <= have:
        raise ConfigError(f"table dedup_groups lacks columns {sorted(need - have)} that similarity writes")
    store.con.execute(TABLES_SQL)
    store.con.execute(MERGE_VIEW_SQL)


@dataclass
class Groups:
    """Members of groups of two or more, as set rows."""

    row: np.ndarray          # int64 set row
    group: np.ndarray        # int64, 1.. in keep order of the kept member
    kept: np.ndarray         # bool
    similarity: np.ndarray   # float64, to the kept member
    size: np.ndarray         # int32

    @property
    def n_groups(self) -> int:
        return int(self.kept.sum())

    @property
    def removed(self) -> int:
        return int((~self.kept).sum())

    def as_sets(self) -> set[tuple[int, frozenset[int]]]:
        """{(kept row, frozenset of member rows)}: for comparing with an oracle."""
        out: dict[int, list[Any]] = {}  # group -> [kept row, member rows]
        for g, r, k in zip(self.group, self.row, self.kept):
            out.setdefault(g, [None, set()])
            out[g][1].add(int(r))
            if k:
                out[g][0] = int(r)
        return {(k, frozenset(m)) for k, m in out.values()}


def empty_groups() -> Groups:
    return Groups(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool), np.empty(0), np.empty(0, np.int32))


def ingest_order(store: Store, vs: VectorSet) -> np.ndarray:
    """Per set row: its place in first-ingested order (run_id, then id)."""
    if vs.id_column not in ("uid", "caption_id"):
        raise ConfigError(f"set {vs.name} holds {vs.id_column} ids; duplicate groups need uid or caption_id sets")
    table = "samples" if vs.id_column == "uid" else "captions"
    col = vs.id_column
    cur = store.con.cursor()
    try:
        cur.register("_curate_sim_ids", pa.table({"_row": pa.array(np.arange(vs.count, dtype=np.int64)),
                                                   "id": vs.ids()}))
        got = cur.sql(
            f"SELECT i._row, row_number() OVER (ORDER BY t.run_id NULLS LAST, i.id::UUID) - 1 AS r "
            f"FROM _curate_sim_ids i LEFT JOIN (SELECT {col}, min(run_id) AS run_id FROM {table} GROUP BY {col}) t "
            f"ON t.{col} = i.id::UUID").to_arrow_table()
    finally:
        cur.unregister("_curate_sim_ids")
        cur.close()
    out = np.empty(vs.count, np.int64)
    out[got.column(0).to_numpy()] = got.column(1).to_numpy()
    return out


def score_column(store: Store, vs: VectorSet, score: str) -> np.ndarray:
    """``table.column`` (keyed by the set's id column) as float64 per set row; NaN where missing."""
    if "." not in score:
        raise ConfigError(f"score must be TABLE.COLUMN (keyed by {vs.id_column}), got {score!r}")
    table, column = score.split(".", 1)
    check_identifier(table), check_identifier(column)
    cols = store.columns(table)
    if not cols:
        raise ConfigError(f"score table {table!r} does not exist")
    if column not in cols or vs.id_column not in cols:
        raise ConfigError(f"score table {table} needs columns {vs.id_column} and {column}; it has {', '.join(cols)}")
    cur = store.con.cursor()
    try:
        cur.register("_curate_sim_ids", pa.table({"_row": pa.array(np.arange(vs.count, dtype=np.int64)),
                                                   "id": vs.ids()}))
        dup = cur.execute(f"SELECT count(*) FROM (SELECT {quote_ident(vs.id_column)} FROM {quote_ident(table)} "
                          f"GROUP BY 1 HAVING count(*) > 1)").fetchall()[0][0]
        if dup:
            raise ConfigError(f"score table {table} has {dup:,} {vs.id_column}s with several rows; give one score each")
        got = cur.sql(f"SELECT i._row, TRY_CAST(t.{quote_ident(column)} AS DOUBLE) AS s FROM _curate_sim_ids i "
                      f"LEFT JOIN {quote_ident(table)} t ON t.{quote_ident(vs.id_column)} = i.id::UUID").to_arrow_table()
    finally:
        cur.unregister("_curate_sim_ids")
        cur.close()
    out = np.full(vs.count, np.nan)
    out[got.column(0).to_numpy()] = got.column(1).to_numpy(zero_copy_only=False)
    return out


def keep_rank(keep: str, first: np.ndarray, centroid_sim: np.ndarray | None = None,
              score: np.ndarray | None = None) -> np.ndarray:
    """Per row: its place in the keep order (0 = kept first). See the module docstring."""
    if keep not in KEEP_RULES:
        raise ConfigError(f"keep must be one of {', '.join(KEEP_RULES)}, got {keep!r}")
    if keep in ("farthest", "nearest"):
        if centroid_sim is None:
            raise ConfigError(f"keep={keep!r} needs k-means centroids (semantic dedup); use first or score")
        primary = centroid_sim if keep == "farthest" else -centroid_sim
    elif keep == "score":
        if score is None:
            raise ConfigError("keep='score' needs a score column (TABLE.COLUMN)")
        primary = np.where(np.isnan(score), np.inf, -score)
    else:
        primary = np.zeros(len(first))
    order = np.lexsort((first, primary))
    rank = np.empty(len(first), np.int64)
    rank[order] = np.arange(len(first))
    return rank


def group_pairs(pi: np.ndarray, pj: np.ndarray, psim: np.ndarray, rank: np.ndarray, grouping: str,
                exact: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Groups:
    """Groups from pairs (set rows ``pi``, ``pj`` with similarity ``psim`` above the
    threshold). ``exact(a, b)`` scores row pairs (for members not paired with their kept one)."""
    if grouping not in GROUPINGS:
        raise ConfigError(f"grouping must be one of {', '.join(GROUPINGS)}, got {grouping!r}")
    if len(pi) == 0:
        return empty_groups()
    nodes, inv = np.unique(np.concatenate([pi, pj]), return_inverse=True)
    a, b = inv[:len(pi)], inv[len(pi):]
    n = len(nodes)
    nrank = rank[nodes]
    if grouping == "center":
        src = np.concatenate([a, b])
        dst = np.concatenate([b, a])
        sim = np.concatenate([psim, psim])
        o = np.argsort(src, kind="stable")
        src, dst, sim = src[o], dst[o], sim[o]
        ptr = np.searchsorted(src, np.arange(n + 1))
        assigned = np.zeros(n, bool)
        rows, groups, kept, sims = [], [], [], []
        g = 0
        for u in np.argsort(nrank, kind="stable"):
            if assigned[u]:
                continue
            assigned[u] = True
            nb, ns = dst[ptr[u]:ptr[u + 1]], sim[ptr[u]:ptr[u + 1]]
            free = ~assigned[nb]
            if not free.any():
                continue
            nb, ns = nb[free], ns[free]
            nb, first = np.unique(nb, return_index=True)
            ns = ns[first]
            assigned[nb] = True
            g += 1
            rows.append(np.concatenate([[u], nb]))
            groups.append(np.full(len(nb) + 1, g))
            kept.append(np.concatenate([[True], np.zeros(len(nb), bool)]))
            sims.append(np.concatenate([[1.0], ns]))
        row = nodes[np.concatenate(rows)]
        grp = np.concatenate(groups)
        kp = np.concatenate(kept)
        sm = np.concatenate(sims)
    else:
        parent = np.arange(n)

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = find(x), find(y)
            if rx != ry:
                if nrank[rx] < nrank[ry]:
                    parent[ry] = rx
                else:
                    parent[rx] = ry
        root = np.array([find(x) for x in range(n)])
        roots = np.unique(root)
        roots = roots[np.argsort(nrank[roots], kind="stable")]
        gid = np.empty(n, np.int64)
        gid[roots] = np.arange(1, len(roots) + 1)
        o = np.lexsort((nrank, gid[root]))
        row = nodes[o]
        grp = gid[root][o]
        kp = root[o] == o
        kept_row = nodes[root[o]]
        sm = np.ones(len(o))
        nk = ~kp
        if nk.any():
            sm[nk] = exact(row[nk], kept_row[nk])
    sizes = np.bincount(grp)[grp].astype(np.int32)
    return Groups(row.astype(np.int64), grp.astype(np.int64), kp, sm.astype(np.float64), sizes)


def write_groups(cur: duckdb.DuckDBPyConnection, groups: Groups, ids: pa.Array, *, kind: str, scope: str, member_kind: str, method: str,
                 config_hash: str, run_id: int) -> int:
    """Replace the rows of (kind, config_hash) in ``dedup_groups`` with ``groups``
    (inside the caller's transaction). Returns rows written."""
    cur.execute("DELETE FROM dedup_groups WHERE kind = ? AND config_hash = ?", [kind, config_hash])
    if not len(groups.row):
        return 0
    t = pa.table({
        "group_id": pa.array(groups.group, pa.int64()),
        "member_id": ids.take(pa.array(groups.row)),
        "kept": pa.array(groups.kept),
        "similarity": pa.array(groups.similarity, pa.float64()),
        "group_size": pa.array(groups.size, pa.int32()),
    })
    cur.register("_curate_sim_groups", t)
    try:
        cur.execute(
            "INSERT INTO dedup_groups BY NAME SELECT group_id, member_id::UUID AS member_id, kept, similarity, "
            "group_size, $kind AS kind, $scope AS scope, $member_kind AS member_kind, $method AS method, "
            "$config_hash AS config_hash, $run_id AS run_id FROM _curate_sim_groups",
            {"kind": kind, "scope": scope, "member_kind": member_kind, "method": method, "config_hash": config_hash,
             "run_id": run_id})
    finally:
        cur.unregister("_curate_sim_groups")
    return t.num_rows


def check_threshold(value: float, what: str) -> float:
    if not (-1.0 <= float(value) < 1.0):
        raise ConfigError(f"{what} must be a cosine similarity in [-1, 1), got {value}")
    return float(value)


def require_ids(vs: VectorSet) -> None:
    if vs.id_column not in ("uid", "caption_id"):
        raise InputError(f"set {vs.name} holds {vs.id_column} ids; this needs an image (uid) or text (caption_id) set")
