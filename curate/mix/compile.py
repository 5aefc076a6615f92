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
from typing import Any

from ..errors import ConfigError
from .attributes import ATTRIBUTES, bind, check_policy, clip_rel, lit, named, source_cond
from .policy import (CapsFusion, KnowledgeAware, LaCLIP, MetaCLIPWeight, Nguyen, OneVariant, Policy, Predicate, Ratio,
                     TemperatureWeight, VeCLIP)

U53 = 9007199254740992.0  # 2**53
#: k = ceil(n * fraction - FRACTION_EPS): a fraction like 0.3 whose n * f lands a hair
#: above an integer in floating point does not keep one row more (expr.keep_fraction too)
FRACTION_EPS = 1e-9


def unit(expr: str) -> str:
    """A uniform double in [0, 1) from a UBIGINT hash (its top 53 bits)."""
    return f"((({expr}) >> 11)::DOUBLE / {U53!r})"


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
def _cmp(expr: str, op: str, value: Any) -> str:
    if op in ("in", "not_in"):
        items = ", ".join(lit(v) for v in value)
        return f"{expr} {'IN' if op == 'in' else 'NOT IN'} ({items})"
    return f"{expr} {'<>' if op == '!=' else op} {lit(value)}"


def _value_rel(pred: Predicate, model: str | None) -> tuple[str, str]:
    """(relation SQL, key column) of a predicate's attribute."""
    attr = ATTRIBUTES[pred.attribute]
    if pred.attribute == "clip_score":
        return clip_rel(model), "caption_id"
    return attr.relation(pred), ("uid" if attr.level == "sample" else "caption_id")


def _values_sql(policy: Policy, pred: Predicate, model: str | None) -> str:
    """One value per (sample | caption of the variant) over the pool."""
    attr = ATTRIBUTES[pred.attribute]
    rel, key = _value_rel(pred, model)
    val = f"coalesce(r.value, {lit(attr.default)})" if attr.default is not None else "r.value"
    if attr.level == "sample":
        return (f"SELECT p.uid, {val} AS value FROM samples p LEFT JOIN {rel} r USING (uid) "
                f"WHERE {source_cond(policy, 'p')}")
    variant = f"AND c.variant = {lit(pred.variant)}" if pred.variant else ""
    return (f"SELECT c.uid, {val} AS value FROM captions c LEFT JOIN {rel} r USING (caption_id) "
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


def resolve_threshold(store: Any, policy: Policy, pred: Predicate, model: str | None) -> dict[str, Any]:
    """Turn ``fraction`` into a threshold: of the n non-null pool values, k = ceil(n *
    fraction) are to be kept; the threshold is the k-th largest (``>=``/``>``; the k-th
    smallest for ``<=``/``<``). Ties at the threshold are all admitted by ``>=``/``<=``."""
    vals = _values_sql(policy, pred, model)
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
            conds.append(_cmp("p.source", op, value))
            continue
        rel, key = _value_rel(pred, model)
        val = f"coalesce(r.value, {lit(attr.default)})" if attr.default is not None else "r.value"
        if attr.level == "sample":
            conds.append(f"p.uid IN (SELECT s.uid FROM samples s LEFT JOIN {rel} r USING (uid) WHERE {_cmp(val, op, value)})")
        else:
            variant = f"c.variant = {lit(pred.variant)} AND " if pred.variant else ""
            conds.append(f"p.uid IN (SELECT c.uid FROM captions c LEFT JOIN {rel} r USING (caption_id) "
                         f"WHERE {variant}{_cmp(val, op, value)})")
    where = " AND ".join([source_cond(policy, "p"), *conds])
    return f"SELECT p.uid, p.source FROM samples p WHERE {where}"


# -- choose ------------------------------------------------------------------------------
def one_sql(variant: str, seed: int, whole: bool = False) -> str:
    """One caption per sample of ``variant``: the smallest ``hash(caption_id, seed)``,
    ties broken by caption_id.

    The captions are first narrowed to ``sel``'s samples, unless ``whole`` says ``sel``
    is every sample (no source list, no predicate): then the semi-join keeps every row
    and only costs a hash join (1.1 s of 3.4 s at 10M samples). Only samples with
    several captions of the variant (COCO's five) need the ranking window; the rest pass
    through an anti-join with them (at 10M samples with one caption each: 1.9-2.5 s
    against 2.3-3.4 s for the window over every row). A window with ``row_number() = 1``
    took 1.7-2.0 s at 10M where ``arg_min`` in a GROUP BY took 2.1-2.8 s, and it breaks
    hash ties explicitly."""
    semi = "" if whole else "SEMI JOIN sel ON sel.uid = c.uid "
    caps = f"FROM captions c {semi}WHERE c.variant = {lit(variant)}"
    return (f"(WITH many AS (SELECT c.uid {caps} GROUP BY c.uid HAVING count(*) > 1) "
            f"SELECT c.uid, c.caption_id {caps.replace('FROM captions c ', 'FROM captions c ANTI JOIN many m ON m.uid = c.uid ', 1)} "
            f"UNION ALL "
            f"SELECT c.uid, c.caption_id {caps.replace('FROM captions c ', 'FROM captions c SEMI JOIN many m ON m.uid = c.uid ', 1)} "
            f"QUALIFY row_number() OVER (PARTITION BY c.uid ORDER BY hash(c.caption_id, {seed}), c.caption_id) = 1)")


def choose_sql(policy: Policy, clip_model: str | None) -> tuple[str, str | None]:
    """(chosen SQL: uid, source, caption_id, variant; candidates SQL or None)."""
    ch, seed = policy.choose, policy.seed
    whole = policy.sources is None and not policy.select

    def one(variant: str) -> str:
        return one_sql(variant, seed, whole)

    if isinstance(ch, OneVariant):
        return (f"SELECT s.uid, s.source, o.caption_id, {lit(ch.variant)} AS variant "
                f"FROM sel s JOIN {one(ch.variant)} o USING (uid)"), None
    if isinstance(ch, Nguyen):
        tau = lit(ch.threshold)
        clip = clip_rel(clip_model)
        body = (f"SELECT s.uid, s.source, "
                f"CASE WHEN rs.value >= {tau} THEN r.caption_id WHEN ys.value >= {tau} THEN y.caption_id END AS caption_id, "
                f"CASE WHEN rs.value >= {tau} THEN {lit(ch.raw)} WHEN ys.value >= {tau} THEN {lit(ch.synthetic)} END AS variant "
                f"FROM sel s LEFT JOIN {one(ch.raw)} r USING (uid) "
                f"LEFT JOIN {clip} rs ON rs.caption_id = r.caption_id "
                f"LEFT JOIN {one(ch.synthetic)} y ON y.uid = s.uid "
                f"LEFT JOIN {clip} ys ON ys.caption_id = y.caption_id")
        return f"SELECT * FROM ({body}) WHERE caption_id IS NOT NULL", None
    if isinstance(ch, CapsFusion):
        ret = named("mix.caption_retention", raw=ch.raw)
        ok = f"f.caption_id IS NOT NULL AND coalesce(ret.retention, 1.0) >= {lit(ch.min_retention)}"
        body = (f"SELECT s.uid, s.source, CASE WHEN {ok} THEN f.caption_id ELSE r.caption_id END AS caption_id, "
                f"CASE WHEN {ok} THEN {lit(ch.fused)} WHEN r.caption_id IS NOT NULL THEN {lit(ch.raw)} END AS variant "
                f"FROM sel s LEFT JOIN {one(ch.fused)} f USING (uid) "
                f"LEFT JOIN {one(ch.raw)} r ON r.uid = s.uid "
                f"LEFT JOIN ({ret}) ret ON ret.caption_id = f.caption_id")
        return f"SELECT * FROM ({body}) WHERE caption_id IS NOT NULL", None
    if isinstance(ch, KnowledgeAware):
        ret = named("mix.caption_retention", raw=ch.raw)
        hal = named("mix.caption_hallucinations", raw=ch.raw, synthetic=ch.synthetic)
        parts = [f"SELECT s.uid, s.source, o.caption_id, {lit(v)} AS variant, {i} AS ord "
                 f"FROM sel s JOIN {one(v)} o USING (uid)" for i, v in enumerate(ch.variants)]
        body = (f"SELECT c.*, coalesce(ret.retained, 0) AS retained, coalesce(h.hallucinated, 0) AS hallucinated "
                f"FROM ({' UNION ALL '.join(parts)}) c LEFT JOIN ({ret}) ret USING (caption_id) "
                f"LEFT JOIN ({hal}) h USING (caption_id)")
        rank = f"-retained * {len(ch.variants) + 1} + ord"
        return (f"SELECT uid, source, arg_min(caption_id, {rank}) AS caption_id, arg_min(variant, {rank}) AS variant "
                f"FROM ({body}) WHERE hallucinated = 0 GROUP BY uid, source"), None
    # multi-caption strategies: candidates with probabilities, then a seeded pick
    if isinstance(ch, (Ratio, VeCLIP)):
        shares = ch.ratios if isinstance(ch, Ratio) else {ch.alt: 1 - ch.enriched_share, ch.enriched: ch.enriched_share}
        parts = [f"SELECT s.uid, s.source, o.caption_id, {lit(v)} AS variant, {lit(float(w))}::DOUBLE AS share, {i} AS ord "
                 f"FROM sel s JOIN {one(v)} o USING (uid)"
                 for i, (v, w) in enumerate(shares.items()) if w > 0]
        raw_cands = " UNION ALL ".join(parts)
    elif isinstance(ch, LaCLIP):
        cases = " ".join(f"WHEN {lit(v)} THEN {i}" for i, v in enumerate(ch.variants))
        raw_cands = (f"SELECT s.uid, s.source, c.caption_id, c.variant, 1.0::DOUBLE AS share, "
                     f"row_number() OVER (PARTITION BY c.uid ORDER BY CASE c.variant {cases} END, "
                     f"hash(c.caption_id, {seed}), c.caption_id) AS ord "
                     f"FROM sel s JOIN captions c USING (uid) "
                     f"WHERE c.variant IN ({', '.join(lit(v) for v in ch.variants)})")
    else:  # pragma: no cover
        raise AssertionError(ch)
    cands = (f"SELECT uid, source, caption_id, variant, share / sum(share) OVER (PARTITION BY uid) AS prob, ord "
             f"FROM ({raw_cands})")
    u = unit(f"hash(uid, {seed}, 'choose')")
    pick = (f"SELECT uid, source, arg_max(caption_id, ord) AS caption_id, arg_max(variant, ord) AS variant FROM ("
            f"SELECT *, coalesce(sum(prob) OVER (PARTITION BY uid ORDER BY ord ROWS BETWEEN UNBOUNDED PRECEDING "
            f"AND 1 PRECEDING), 0.0) AS lo FROM _mix_cands) WHERE lo <= {u} GROUP BY uid, source")
    return pick, cands


# -- weight ------------------------------------------------------------------------------
def weight_sql(policy: Policy) -> str:
    """SELECT uid, weight FROM ... over ``_mix_chosen`` (samples without a row weigh 1
    unless dropped). Counts are samples per concept among the chosen rows: text hits,
    or with ``counts = "matched"`` text hits the image's tags confirm."""
    w = policy.weight
    if isinstance(w, (MetaCLIPWeight, TemperatureWeight)):
        on = "h.caption_id = ch.caption_id" if w.captions == "chosen" else "h.uid = ch.uid"
        matched = ""
        if w.counts == "matched":
            from ..concepts.image import IMAGE_TAGS_SQL

            img = bind(IMAGE_TAGS_SQL, {"iset": w.image_set, "cset": w.concept_set, "k": w.k,
                                        "min_score": float(w.min_score)})
            matched = f"SEMI JOIN ({img}) i ON i.uid = ch.uid AND i.concept = h.concept "
        hits = (f"SELECT DISTINCT ch.uid, h.concept FROM _mix_chosen ch JOIN concept_hits h ON {on} {matched}"
                f"WHERE h.vocabulary = {lit(w.vocabulary)} AND h.mode = {lit(w.mode)}")
        if isinstance(w, MetaCLIPWeight):
            t = lit(float(w.t))
            return (f"WITH hits AS ({hits}), counts AS (SELECT concept, count(*) AS n FROM hits GROUP BY concept) "
                    f"SELECT uid, 1.0 - product(1.0 - {t} / greatest(n, {t})) AS weight "
                    f"FROM hits JOIN counts USING (concept) GROUP BY uid")
        expo = lit(1.0 - 1.0 / w.temperature)
        return (f"WITH hits AS ({hits}), counts AS (SELECT concept, count(*) AS n FROM hits GROUP BY concept) "
                f"SELECT uid, max(power((SELECT max(n) FROM counts)::DOUBLE / n, {expo})) AS weight "
                f"FROM hits JOIN counts USING (concept) GROUP BY uid")
    return ""


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
def run_policy(store: Any, policy: Policy) -> MixResult:
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
    chosen, cands = choose_sql(policy, resolved["clip_models"].get("choose"))
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
    wsql = weight_sql(policy)
    dropped_unmatched = 0
    if wsql:
        sql["weight"] = wsql
        keep = "INNER" if getattr(policy.weight, "drop_unmatched", False) else "LEFT"
        default = lit(float(getattr(policy.weight, "unmatched_weight", 1.0)))
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
        # the rules give weights in (0, 1] (metaclip) or >= 1 (temperature >= 1); a
        # temperature below 1 raises the rare-concept ratio to a negative power, which
        # underflows to 0 when the power is large enough
        hint = ""
        if isinstance(policy.weight, TemperatureWeight):
            hint = (f"; temperature {policy.weight.temperature:g} makes (max_count / count)^(1 - 1/T) underflow "
                    "for rare concepts: use a temperature nearer 1, or above 1 to up-weight the tail")
        raise ConfigError(f"weight {policy.weight.method}: {bad:,} weights are not positive and finite{hint}")

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
