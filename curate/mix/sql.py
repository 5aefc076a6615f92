"""SQL building blocks of policies: literals, parameter binding, seeded hashes, the
one-caption pick, and the ``clip_scores`` contract.

Compiled policy SQL inlines every value as a literal (:func:`lit`) instead of binding
parameters, so the SQL the sidecar records is exactly what ran and runs again on its
own. That is safe because nothing reaches :func:`lit` unchecked: values come from
typed policy objects (:mod:`curate.config` checked their types, finite floats only) or
from the store itself (thresholds, source and variant names), strings are quoted with
``'`` doubled, numbers are written by ``repr`` of an ``int``/``float``, and any other
type is refused.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..sqlfiles import expand, get_query

if TYPE_CHECKING:
    from ..store import Store

U53 = 9007199254740992.0  # 2**53
#: k = ceil(n * fraction - FRACTION_EPS): a fraction like 0.3 whose n * f lands a hair
#: above an integer in floating point does not keep one row more (expr.keep_fraction too)
FRACTION_EPS = 1e-9
#: the columns a clip_scores table must have (clip.score.v1 writes more)
CLIP_CONTRACT = {"caption_id": "UUID", "uid": "UUID", "model": "VARCHAR", "score": "DOUBLE"}


def lit(value: Any) -> str:
    """A SQL literal for a checked value (strings quoted, numbers as repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if value is None:
        return "NULL"
    raise TypeError(f"no SQL literal for {value!r}")


def bind(sql: str, params: dict[str, Any]) -> str:
    """Inline ``$name`` parameters as literals (the compiled SQL is then self-contained:
    it goes into the sidecar as it ran)."""
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in params:
            raise ConfigError(f"parameter ${name} has no value")
        return lit(params[name])
    return re.sub(r"(?<![:$\w])\$([a-z_][a-z0-9_]*)", sub, sql, flags=re.I)


def named(qualname: str, **params: Any) -> str:
    """A named query with its defaults and ``params`` inlined."""
    q = get_query(qualname)
    return bind(q.sql, {**dict(q.defaults), **params})


def bind_includes(sql: str, **params: Any) -> str:
    """``sql`` with its ``{{domain.name}}`` includes expanded and every parameter
    inlined (``params``, else the included queries' defaults)."""
    body, defaults = expand(sql)
    return bind(body, {**defaults, **params})


def unit(expr: str) -> str:
    """A uniform double in [0, 1) from a UBIGINT hash (its top 53 bits)."""
    return f"((({expr}) >> 11)::DOUBLE / {U53!r})"


def cmp(expr: str, op: str, value: Any) -> str:
    """``expr OP value`` (``in``/``not_in`` take a tuple)."""
    if op in ("in", "not_in"):
        items = ", ".join(lit(v) for v in value)
        return f"{expr} {'IN' if op == 'in' else 'NOT IN'} ({items})"
    return f"{expr} {'<>' if op == '!=' else op} {lit(value)}"


def source_cond(policy: Any, alias: str) -> str:
    if policy.sources is None:
        return "true"
    return f"{alias}.source IN ({', '.join(lit(s) for s in policy.sources)})"


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


# -- clip_scores ---------------------------------------------------------------------
def clip_rel(model: str | None) -> str:
    """Scores of one model from ``clip_scores_latest``: the latest configuration run of
    each model label, rows whose image loaded (``status = 'ok'``); see
    :func:`ensure_clip_view` for stores whose ``clip_scores`` came from elsewhere."""
    return f"(SELECT caption_id, score AS value FROM clip_scores_latest WHERE model = {lit(model)} AND status = 'ok')"


def ensure_clip_view(store: Store) -> None:
    """Make ``clip_scores_latest`` readable on this connection. ``clip.score.v1`` creates
    it in the store (latest config per model, with a status per row). A ``clip_scores``
    table written to the contract by other tools (:data:`CLIP_CONTRACT`: one row per
    caption and model) gets a temporary view of the same name over it, every row
    ``ok`` unless the table has a ``status`` column; nothing is written to the store."""
    persistent = store.execute(
        "SELECT count(*) FROM duckdb_views() WHERE NOT internal AND NOT temporary AND view_name = 'clip_scores_latest' "
        "AND database_name = current_database()").fetchall()[0][0]
    if persistent:
        return
    status = "status" if "status" in store.columns("clip_scores") else "'ok'"
    store.con.execute("CREATE OR REPLACE TEMP VIEW clip_scores_latest AS "
                      f"SELECT caption_id, uid, model, score, {status} AS status FROM clip_scores")


def clip_model(store: Store, model: str | None, where: str) -> str:
    """The model whose scores ``where`` reads: ``model`` if the store has it, or the one
    model the store has."""
    ensure_clip_view(store)
    models = [r[0] for r in store.execute("SELECT DISTINCT model FROM clip_scores_latest ORDER BY 1").fetchall()]
    if model is None:
        if len(models) != 1:
            raise ConfigError(f"{where}: clip_scores holds {len(models)} models ({', '.join(models) or 'none'}); "
                              "name one with model = ...")
        return str(models[0])
    if model not in models:
        raise ConfigError(f"{where}: clip_scores has no scores of model {model!r}; it has {', '.join(models) or 'none'}")
    return model
