"""The pool of a policy as a polars frame, to check its select predicates in polars."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import ConfigError
from .attributes import ATTRIBUTES
from .check import check_policy
from .compile import values_sql
from .expr import Predicate, column_name, parse_column, reader
from .sql import clip_model, source_cond

if TYPE_CHECKING:
    from ..store import Store


def attribute_frame(store: Store, policy: Any, extra: Iterable[pl.Expr | str] = ()) -> pl.DataFrame:
    """One row per pool sample of ``policy`` (its sources): ``uid``, ``source`` and one
    column per attribute its predicates read (plus ``extra`` columns, as names or
    ``col(...)``), with the values the policy's SQL compares: the attribute's default
    where it has one, NULL where the sample lacks the caption or the value.

    A column must hold one value per sample: a sample with several captions of the
    variant (COCO's five human captions) or a multi-valued attribute (``concept``) is
    a ConfigError; the policy's SQL handles those (a sample passes when one caption
    does)."""
    check_policy(store, policy)
    wanted: dict[str, Predicate] = {}
    for p in policy.select:
        wanted.setdefault(column_name(p.attribute, p.variant, model=p.model, vocabulary=p.vocabulary,
                                      mode=p.mode), p)
    for e in extra:
        name = e if isinstance(e, str) else e.meta.output_name()
        wanted.setdefault(name, reader(**parse_column(name)))
    joins, cols = [], []
    for i, (name, p) in enumerate(wanted.items()):
        if p.attribute == "source":
            continue
        model = None
        if "model" in ATTRIBUTES[p.attribute].params:
            model = clip_model(store, p.model, f"column {name}")
        vals = values_sql(policy, p, model)
        many = store.execute(f"SELECT count(*) - count(DISTINCT uid) FROM ({vals})").fetchall()[0][0]
        if many:
            raise ConfigError(f"column {name}: {many:,} extra values for samples with several "
                              f"{'captions of the variant' if ATTRIBUTES[p.attribute].level == 'caption' else 'values'}"
                              "; the frame holds one value per sample (the policy's SQL handles several)")
        joins.append(f"LEFT JOIN ({vals}) v{i} ON v{i}.uid = p.uid")
        quoted = '"' + name.replace('"', '""') + '"'
        cols.append(f"v{i}.value AS {quoted}")
    sql = (f"SELECT p.uid::VARCHAR AS uid, p.source{''.join(', ' + c for c in cols)} FROM samples p "
           f"{' '.join(joins)} WHERE {source_cond(policy, 'p')} ORDER BY p.uid")
    return store.df(sql)
