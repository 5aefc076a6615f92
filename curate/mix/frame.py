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
from .sql import clip_model, lit, source_cond

if TYPE_CHECKING:
    from ..store import Store


def attribute_frame(store: Store, policy: Any, extra: Iterable[pl.Expr | str] = ()) -> pl.DataFrame:
    """The pool of ``policy`` (its sources) as a frame: ``uid``, ``source`` and one
    column per attribute its predicates read (plus ``extra`` columns, as names or
    ``col(...)``), with the values the policy's SQL compares: the attribute's default
    where it has one, NULL where the sample lacks the caption or the value.

    One row per pool sample, except where a caption column reads a variant of which some
    sample has several captions (COCO's five human captions, LaCLIP's rewrites, or no
    variant: any caption): then one row per caption of that variant, with its id in
    ``caption_id[<variant>]`` (``caption_id`` for any caption), and that variant's
    columns hold the row's caption's values. Several such variants give one row per
    combination of their captions. So ``frame.filter(expr)["uid"].unique()`` is the
    policy's selection: a sample passes when one of its captions does, as in SQL. (Two
    predicates on columns of the same many-caption variant must then hold for the same
    caption; the SQL lets each be met by a different one.)

    A multi-valued attribute (``concept``: several values per caption) is a
    ConfigError; the policy's SQL handles it."""
    check_policy(store, policy)
    wanted: dict[str, Predicate] = {}
    for p in policy.select:
        wanted.setdefault(column_name(p.attribute, p.variant, model=p.model, vocabulary=p.vocabulary,
                                      mode=p.mode), p)
    for e in extra:
        name = e if isinstance(e, str) else e.meta.output_name()
        wanted.setdefault(name, reader(**parse_column(name)))

    def captions_of(variant: str | None) -> str:
        only = f" AND c.variant = {lit(variant)}" if variant is not None else ""
        return f"SELECT c.uid, c.caption_id FROM captions c WHERE {source_cond(policy, 'c')}{only}"

    # the caption variants read whose samples can have several captions: one row per caption
    read = {p.variant for p in wanted.values() if p.attribute != "source" and ATTRIBUTES[p.attribute].level == "caption"}
    many_captions: dict[str | None, str] = {}
    for v in sorted(read, key=lambda v: (v is not None, v or "")):
        extra_rows = store.execute(f"SELECT count(*) - count(DISTINCT uid) FROM ({captions_of(v)})").fetchall()[0][0]
        if extra_rows:
            many_captions[v] = f"g{len(many_captions)}"
    joins, cols, order = [], [], []
    for v, alias in many_captions.items():
        joins.append(f"LEFT JOIN ({captions_of(v)}) {alias} ON {alias}.uid = p.uid")
        cols.append(f"{alias}.caption_id::VARCHAR AS {_quoted('caption_id' if v is None else f'caption_id[{v}]')}")
        order.append(f"{alias}.caption_id")
    for i, (name, p) in enumerate(wanted.items()):
        if p.attribute == "source":
            continue
        attr = ATTRIBUTES[p.attribute]
        model = None
        if "model" in attr.params:
            model = clip_model(store, p.model, f"column {name}")
        vals = values_sql(policy, p, model)
        per_caption = attr.level == "caption" and p.variant in many_captions
        key = "caption_id" if per_caption else "uid"
        many = store.execute(f"SELECT count(*) - count(DISTINCT {key}) FROM ({vals})").fetchall()[0][0]
        if many:
            raise ConfigError(f"column {name}: {many:,} extra values for {'captions' if per_caption else 'samples'} "
                              f"with several values of {p.attribute}; the frame holds one value per "
                              f"{'caption' if per_caption else 'sample'} (the policy's SQL handles several)")
        on = f"{many_captions[p.variant]}.caption_id" if per_caption else "p.uid"
        joins.append(f"LEFT JOIN ({vals}) v{i} ON v{i}.{key} = {on}")
        cols.append(f"v{i}.value AS {_quoted(name)}")
    sql = (f"SELECT p.uid::VARCHAR AS uid, p.source{''.join(', ' + c for c in cols)} FROM samples p "
           f"{' '.join(joins)} WHERE {source_cond(policy, 'p')} ORDER BY {', '.join(['p.uid', *order])}")
    return store.df(sql)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
