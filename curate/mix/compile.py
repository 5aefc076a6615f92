"""Compile a policy to SQL over the store and run it into temporary tables.

The steps, each a CTE or temp table with one job:

1. ``pool``: samples of the policy's sources.
2. ``sel``: the pool samples passing every predicate (a semi-join per predicate).
3. ``chosen``: one caption per sample by the strategy; multi-caption strategies also
   fill ``_mix_cands`` (every candidate with its probability).
4. weight: 1, MetaCLIP or temperature, computed over the chosen rows.
5. budget: draw order ``key`` (``hash(uid, seed)``, or Efraimidis-Spirakis keys for
   ``order = "weighted"``), group quotas by the largest remainder, ``_mix_final``.

Randomness comes only from DuckDB's ``hash()`` of ids and the seed (never
``random()``), so the same store, policy and seed select the same rows in the same
order; ``hash`` is stable for a given DuckDB version, which the sidecar records.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .attributes import ATTRIBUTES, relation
from .check import check_policy
from .expr import Predicate
from .policy import Policy
from .sql import FRACTION_EPS, U53, cmp, lit, source_cond, unit
from .strategies import Context

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["FRACTION_EPS", "MixResult", "U53", "kth_value", "largest_remainder", "run_policy", "unit"]


@dataclasses.dataclass
class MixResult:
    """What a run resolved and counted; the rows are in temp table ``_mix_final``
    (uid, source, caption_id, variant, weight, key) and, for multi-caption strategies,
    ``_mix_cands`` (uid, caption_id, variant, prob, ord)."""

    policy: Policy
    thresholds: list[dict[str, Any]]
    resolved: dict[str, Any]
    counts: dict[str, Any]
    sql: dict[str, str]
    multi: bool
    seconds: float = 0.0


# -- select ------------------------------------------------------------------------------
def _value(attr_name: str, pred: Predicate | None, model: str | None) -> tuple[str, str]:
    """(value expression over ``r``, relation SQL) of a predicate's attribute."""
    attr = ATTRIBUTES[attr_name]
    val = f"coalesce(r.value, {lit(attr.default)})" if attr.default is not None else "r.value"
    return val, relation(attr, pred, model)


def values_sql(policy: Policy, pred: Predicate, model: str | None) -> str:
    """One value per (sample | caption of the variant) over the pool: ``uid, value``,
    and ``caption_id`` for caption attributes."""
    attr = ATTRIBUTES[pred.attribute]
    val, rel = _value(pred.attribute, pred, model)
    if attr.level == "sample":
        return (f"SELECT p.uid, {val} AS value FROM samples p LEFT JOIN {rel} r USING (uid) "
                f"WHERE {source_cond(policy, 'p')}")
    variant = f"AND c.variant = {lit(pred.variant)}" if pred.variant else ""
    return (f"SELECT c.uid, c.caption_id, {val} AS value FROM captions c LEFT JOIN {rel} r USING (caption_id) "
            f"WHERE {source_cond(policy, 'c')} {variant}")


def kth_value(con: Any, table: str, n: int, k: int, desc: bool, pos: float | None = None) -> Any:
    """The k-th largest (``desc``) or smallest ``value`` of ``table`` (n rows, no NULLs).

    ``quantile_disc`` at ``pos`` (by default the position DuckDB maps to that row) gives
    a candidate; it is the answer when fewer than k values lie strictly beyond it and at
    least k at or beyond it. Otherwise ``ORDER BY value LIMIT 1 OFFSET k-1`` decides."""
    if pos is None:
        pos = ((n - k) if desc else (k - 1)) / (n - 1) if n > 1 else 0.0
    beyond, at = (">", ">=") if desc else ("<", "<=")
    thr, strictly, reach = con.execute(
        f"WITH t AS (SELECT quantile_disc(value, {min(max(pos, 0.0), 1.0)!r}) AS thr FROM {table}) "
        f"SELECT any_value(thr), count(*) FILTER (WHERE value {beyond} thr), count(*) FILTER (WHERE value {at} thr) "
        f"FROM {table}, t").fetchall()[0]
    if strictly < k <= reach:
        return thr
    return con.execute(f"SELECT value FROM {table} ORDER BY value {'DESC' if desc else 'ASC'} "
                       f"LIMIT 1 OFFSET {k - 1}").fetchall()[0][0]


def resolve_threshold(store: Store, policy: Policy, pred: Predicate, model: str | None) -> dict[str, Any]:
    """Turn ``fraction`` into a threshold: of the n non-null pool values, k = ceil(n *
    fraction) are to be kept; the threshold is the k-th largest (``>=``/``>``; the k-th
    smallest for ``<=``/``<``). Ties at the threshold are all admitted by ``>=``/``<=``."""
    vals = values_sql(policy, pred, model)
    con = store.con
    # The values are read once into a narrow temp table (the relation is a 10M-row join
    # at scale); quantile_disc finds a candidate by selection, and two counts prove it is
    # the k-th value (fewer than k strictly beyond it, at least k at or beyond it); if
    # DuckDB's position rule put it elsewhere, ORDER BY ... OFFSET k-1 decides. At 10M
    # values: 2.05 s for count + ORDER BY over the join, 0.9 s this way.
    con.execute(f"CREATE OR REPLACE TEMP TABLE _mix_vals AS SELECT value FROM ({vals}) WHERE value IS NOT NULL")
    try:
        n = con.execute("SELECT count(*) FROM _mix_vals").fetchall()[0][0]
        if n == 0:
            raise ConfigError(f"select {pred.attribute}: no values in the pool to take a fraction of")
        k = max(1, math.ceil(n * pred.fraction - FRACTION_EPS))
        thr = kth_value(con, "_mix_vals", n, k, pred.op in (">", ">="))
    finally:
        con.execute("DROP TABLE IF EXISTS _mix_vals")
    return {"attribute": pred.attribute, "variant": pred.variant, "op": pred.op, "fraction": pred.fraction,
            "pool_values": n, "keep": k, "threshold": float(thr)}


def select_sql(policy: Policy, preds: list[tuple[Predicate, Any, str | None]]) -> str:
    """The ``sel`` CTE body: pool samples passing every (predicate, value, model)."""
    conds = []
    for pred, value, model in preds:
        op = pred.op
        attr = ATTRIBUTES[pred.attribute]
        if pred.attribute == "source":
            conds.append(cmp("p.source", op, value))
            continue
        val, rel = _value(pred.attribute, pred, model)
        if attr.level == "sample":
            conds.append(f"p.uid IN (SELECT s.uid FROM samples s LEFT JOIN {rel} r USING (uid) WHERE {cmp(val, op, value)})")
        else:
            variant = f"c.variant = {lit(pred.variant)} AND " if pred.variant else ""
            conds.append(f"p.uid IN (SELECT c.uid FROM captions c LEFT JOIN {rel} r USING (caption_id) "
                         f"WHERE {variant}{cmp(val, op, value)})")
    where = " AND ".join([source_cond(policy, "p"), *conds])
    return f"SELECT p.uid, p.source FROM samples p WHERE {where}"


# -- budget ------------------------------------------------------------------------------
def largest_remainder(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Quotas summing to ``total``: floor(total * p) each, then +1 to the largest
    fractional parts (ties by group name)."""
    exact = {g: total * p for g, p in shares.items()}
    quota = {g: math.floor(x + 1e-9) for g, x in exact.items()}
    rest = total - sum(quota.values())
    for g in sorted(exact, key=lambda g: (-(exact[g] - quota[g]), g))[:max(rest, 0)]:
        quota[g] += 1
    return quota


def budget_quotas(policy: Policy, available: dict[str, int]) -> tuple[int, dict[str, int]]:
    b = policy.budget
    shares = b.proportions
    if b.samples is not None:
        total = b.samples
    else:
        total = min(math.floor(available.get(g, 0) / p + 1e-9) for g, p in shares.items() if p > 0)
    return total, largest_remainder(total, shares)


def key_sql(policy: Policy) -> str:
    h = f"hash(uid, {policy.seed})"
    if policy.budget.order == "weighted":
        return f"(-ln(((({h}) >> 11)::DOUBLE + 0.5) / {U53!r}) / weight)"
    return f"{h}::DOUBLE"


# -- run ---------------------------------------------------------------------------------
def run_policy(store: Store, policy: Policy) -> MixResult:
    """Check the policy against the store, then build ``_mix_final`` (and ``_mix_cands``)
    as temp tables on ``store.con``. Nothing in the store is written."""
    t0 = time.perf_counter()
    resolved = check_policy(store, policy)
    con = store.con
    preds, thresholds = [], []
    for i, p in enumerate(policy.select):
        model = resolved["clip_models"].get(f"select[{i}]")
        if p.fraction is not None:
            thr = resolve_threshold(store, policy, p, model)
            thresholds.append({"select": i, **thr})
            preds.append((p, thr["threshold"], model))
        else:
            preds.append((p, p.value, model))
    sel = select_sql(policy, preds)
    whole = policy.sources is None and not policy.select
    chosen, cands = policy.choose.sql(Context(policy.seed, whole, resolved["clip_models"].get("choose")))
    sql: dict[str, str] = {"select": sel}
    for t in ("_mix_sel", "_mix_cands", "_mix_chosen", "_mix_final"):
        kinds = con.execute("SELECT 'VIEW' FROM duckdb_views() WHERE temporary AND view_name = ? UNION ALL "
                            "SELECT 'TABLE' FROM duckdb_tables() WHERE temporary AND table_name = ?", [t, t]).fetchall()
        for (kind,) in kinds:
            con.execute(f"DROP {kind} {t}")
    if not whole:
        # the selection is read by the choice and counted: run its semi-joins once
        con.execute(f"CREATE TEMP TABLE _mix_sel AS {sel}")
        sel = "SELECT * FROM _mix_sel"
    if cands is not None:
        sql["candidates"] = cands
        con.execute(f"CREATE TEMP TABLE _mix_cands AS WITH sel AS ({sel}) {cands}")
        sql["choose"] = chosen
        con.execute(f"CREATE TEMP TABLE _mix_chosen AS {chosen}")
    else:
        sql["choose"] = chosen
        con.execute(f"CREATE TEMP TABLE _mix_chosen AS WITH sel AS ({sel}) {chosen}")
    wsql = policy.weight.sql()
    dropped_unmatched = 0
    if wsql:
        sql["weight"] = wsql
        keep = "INNER" if policy.weight.drops_unmatched() else "LEFT"
        default = lit(policy.weight.unmatched())
        before = con.execute("SELECT count(*) FROM _mix_chosen").fetchall()[0][0]
        con.execute(f"CREATE TEMP TABLE _mix_w AS {wsql}")
        con.execute(f"CREATE OR REPLACE TEMP TABLE _mix_chosen AS SELECT c.*, coalesce(w.weight, {default}) AS weight "
                    f"FROM _mix_chosen c {keep} JOIN _mix_w w USING (uid)")
        con.execute("DROP TABLE _mix_w")
        dropped_unmatched = before - con.execute("SELECT count(*) FROM _mix_chosen").fetchall()[0][0]
    else:
        con.execute("ALTER TABLE _mix_chosen ADD COLUMN weight DOUBLE DEFAULT 1.0")
    bad = con.execute("SELECT count(*) FROM _mix_chosen WHERE NOT (weight > 0 AND isfinite(weight))").fetchall()[0][0]
    if bad:
        raise ConfigError(f"weight {policy.weight.method}: {bad:,} weights are not positive and finite"
                          f"{policy.weight.bad_weights_hint()}")

    key = key_sql(policy)
    b = policy.budget
    budget: dict[str, Any] = {}
    if b.by:
        col = b.by
        available = dict(con.execute(f"SELECT {col}, count(*) FROM _mix_chosen GROUP BY 1").fetchall())
        total, quotas = budget_quotas(policy, available)
        values = ", ".join(f"({lit(g)}, {q})" for g, q in quotas.items()) or "(NULL, 0)"
        con.execute(f"CREATE TEMP TABLE _mix_final AS SELECT c.uid, c.source, c.caption_id, c.variant, c.weight, c.key "
                    f"FROM (SELECT *, {key} AS key FROM _mix_chosen) c JOIN (VALUES {values}) q(grp, quota) "
                    f"ON c.{col} = q.grp QUALIFY row_number() OVER (PARTITION BY c.{col} ORDER BY c.key, c.uid) <= q.quota")
        taken = dict(con.execute(f"SELECT {col}, count(*) FROM _mix_final GROUP BY 1").fetchall())
        budget = {"by": col, "total": total, "rounding": "largest remainder",
                  "groups": {g: {"share": b.proportions[g], "available": available.get(g, 0), "quota": quotas[g],
                                 "taken": taken.get(g, 0)} for g in sorted(quotas)}}
    elif b.samples is not None:
        con.execute(f"CREATE TEMP TABLE _mix_final AS SELECT uid, source, caption_id, variant, weight, {key} AS key "
                    f"FROM _mix_chosen ORDER BY key, uid LIMIT {b.samples}")
        budget = {"total": b.samples}
    else:
        con.execute(f"CREATE TEMP VIEW _mix_final AS SELECT uid, source, caption_id, variant, weight, {key} AS key "
                    f"FROM _mix_chosen")
    sql["budget_key"] = key

    def grouped(col: str) -> dict[str, int]:
        return {str(k): int(v) for k, v in con.execute(
            f"SELECT {col}, count(*) FROM _mix_final GROUP BY 1 ORDER BY 1").fetchall()}

    pool = con.execute(f"SELECT count(*) FROM samples p WHERE {source_cond(policy, 'p')}").fetchall()[0][0]
    n_sel = con.execute(f"SELECT count(*) FROM ({sel})").fetchall()[0][0]
    n_chosen = con.execute("SELECT count(*) FROM _mix_chosen").fetchall()[0][0]
    wstats = con.execute("SELECT count(*), min(weight), avg(weight), max(weight), sum(weight) FROM _mix_final").fetchall()[0]
    counts = {
        "pool_samples": pool, "selected": n_sel, "with_caption": n_chosen + dropped_unmatched,
        "dropped_by_choose": n_sel - n_chosen - dropped_unmatched, "dropped_unmatched": dropped_unmatched,
        "samples": wstats[0], "by_variant": grouped("variant"), "by_source": grouped("source"),
        "weight": {"min": wstats[1], "mean": wstats[2], "max": wstats[3], "sum": wstats[4]},
    }
    if budget:
        counts["budget"] = budget
    return MixResult(policy, thresholds, resolved, counts, sql, multi=cands is not None,
                     seconds=time.perf_counter() - t0)
