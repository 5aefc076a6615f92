"""Select predicates: the typed :class:`Predicate`, and predicates as polars expressions,
both ways (the pool as a polars frame is :mod:`curate.mix.frame`).

A select predicate of a policy is also a polars expression over a frame with one row
per pool sample and one column per attribute. The column of a caption attribute names
the caption it reads: ``clip_score[raw]`` is the CLIP score of the sample's raw
caption; options follow the variant: ``clip_score[raw, model=ViT-B-32]``,
``n_concepts[raw, vocabulary=cifar10, mode=paper]``. :func:`col` writes these names,
so typos fail at once::

    import polars as pl
    from curate.mix import Policy, Nguyen, col, keep_fraction

    pol = Policy("x", select=(col("words", "raw") >= 3)
                             & col("source").is_in(["capsfusion"])
                             & keep_fraction(col("clip_score", "raw"), 0.3),
                 choose=Nguyen(threshold=0.28))
    pol.select          # (Predicate('words', '>=', 3, variant='raw'), Predicate('source', 'in', ...), ...)
    pol.select_expr()   # the same three as one polars expression

The shapes read back are exactly the ones :func:`predicate_expr` writes:
``column OP literal`` (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``),
``column.is_in([...])`` and its negation ``~column.is_in([...])``, a bare boolean
column (``col("dedup_kept", "raw")``: ``= true``) or its negation, a fraction of the
pool (:func:`keep_fraction`), and ``&`` of any of these. Anything else (``|``,
arithmetic, another column on the right) is a ConfigError naming the part, because a
policy compiles to SQL and its TOML form has to hold it.

The expressions are real: :func:`curate.mix.frame.attribute_frame` returns the pool frame from a store,
and ``frame.filter(policy.select_expr())`` keeps the samples the SQL of
:func:`curate.mix.compile.run_policy` selects (tested). :func:`keep_fraction` spells
the order statistic of :class:`Predicate`'s ``fraction`` in polars
(the k-th largest of the n non-null values, ``k = ceil(n * fraction)``), not a
``quantile``, whose interpolation differs by a row at some n.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import Any

import polars as pl

from ..errors import ConfigError
from .attributes import ATTRIBUTES, check_value
from .sql import FRACTION_EPS

_NAME = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(?:\[(.*)\])?\s*$")
_OPTIONS = ("model", "vocabulary", "mode")
_CMP: dict[str, Callable[[pl.Expr, Any], pl.Expr]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}
#: polars' spelling of each operator, for error messages and docs
POLARS_OP = {"=": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
OPS = ("=", "!=", "<", "<=", ">", ">=", "in", "not_in")


# -- the predicate ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Predicate:
    """``attribute op value``, or ``attribute op <threshold keeping fraction of the pool>``.

    For a caption attribute, ``variant`` names which caption of the sample is tested
    (``None``: any caption of the sample); a sample with several captions of that
    variant passes when one of them does. A missing attribute value fails the
    predicate, except where the attribute states a default (``dedup_kept``: a caption
    in no duplicate group is kept; ``n_concepts``: 0). With ``fraction`` (0 < f <= 1)
    and ``op`` ``>=``/``>``, the threshold is the k-th largest of the n non-null pool
    values, ``k = ceil(n * fraction)`` (so at least k samples pass; ties at the
    threshold all pass); with ``<=``/``<`` the k-th smallest. DataComp's
    ``get_threshold`` takes index ``floor(n * fraction)`` of the descending values, one
    more row at most.
    """

    attribute: str
    op: str = ">="
    value: bool | int | float | str | tuple[str, ...] | None = None
    fraction: float | None = None
    variant: str | None = None
    #: clip_score: the model whose scores are read (needed when the table has several)
    model: str | None = None
    #: concept attributes: vocabulary and match mode of concepts.text_match.v1
    vocabulary: str | None = None
    mode: str = "phrase"

    def __post_init__(self) -> None:
        if self.attribute not in ATTRIBUTES:
            raise ConfigError(f"unknown attribute {self.attribute!r}; valid: {', '.join(sorted(ATTRIBUTES))}")
        attr = ATTRIBUTES[self.attribute]
        if self.op not in OPS:
            raise ConfigError(f"{self.attribute}: unknown op {self.op!r}; valid: {', '.join(OPS)}")
        if (self.value is None) == (self.fraction is None):
            raise ConfigError(f"{self.attribute}: give exactly one of value or fraction")
        if self.fraction is not None:
            if attr.type != "number":
                raise ConfigError(f"{self.attribute}: fraction needs a numeric attribute; {self.attribute} is {attr.type}")
            if not 0 < self.fraction <= 1:
                raise ConfigError(f"{self.attribute}: fraction must be in (0, 1], got {self.fraction}")
            if self.op not in ("<", "<=", ">", ">="):
                raise ConfigError(f"{self.attribute}: fraction needs op <, <=, > or >=, got {self.op!r}")
        else:
            check_value(attr, self.op, self.value)
        if attr.level == "sample" and self.variant is not None:
            raise ConfigError(f"{self.attribute} is a sample attribute; it takes no variant")
        if attr.needs_vocabulary and not self.vocabulary:
            raise ConfigError(f"{self.attribute}: needs vocabulary = NAME (a vocabulary of concepts.text_match.v1)")
        if not attr.needs_vocabulary and self.vocabulary:
            raise ConfigError(f"{self.attribute} takes no vocabulary")
        if self.model is not None and "model" not in attr.params:
            with_model = ", ".join(n for n, a in ATTRIBUTES.items() if "model" in a.params)
            raise ConfigError(f"{self.attribute} takes no model (only {with_model} do)")

    def to_expr(self) -> pl.Expr:
        """The same predicate as a polars expression over :func:`curate.mix.attribute_frame`;
        :meth:`from_expr` reads it back."""
        return predicate_expr(self)

    @staticmethod
    def from_expr(expr: Any) -> tuple[Predicate, ...]:
        """Predicates from a polars expression (``&`` of several gives several)."""
        return predicates_from_expr(expr)




# -- column names ---------------------------------------------------------------------
def column_name(attribute: str, variant: str | None = None, *, model: str | None = None,
                vocabulary: str | None = None, mode: str = "phrase") -> str:
    """``attribute[variant, key=value, ...]``; the bare attribute when there is nothing
    to add. ``mode`` is written only when it is not the default ``phrase``."""
    parts = [variant] if variant else []
    for key, value in (("model", model), ("vocabulary", vocabulary), ("mode", None if mode == "phrase" else mode)):
        if value is not None:
            parts.append(f"{key}={value}")
    for p in parts:
        if any(ch in p for ch in ",[]"):
            raise ConfigError(f"{attribute}: {p!r} cannot go in a column name (it holds , [ or ])")
    return f"{attribute}[{', '.join(parts)}]" if parts else attribute


def parse_column(name: str) -> dict[str, Any]:
    """The inverse of :func:`column_name`: attribute, variant and options."""
    m = _NAME.match(name)
    if not m:
        raise ConfigError(f"column {name!r} is not an attribute name like clip_score or clip_score[raw, model=M]")
    out: dict[str, Any] = {"attribute": m.group(1)}
    if m.group(2) is not None:
        for i, part in enumerate(p.strip() for p in m.group(2).split(",")):
            if "=" in part:
                key, _, value = (s.strip() for s in part.partition("="))
                if key not in _OPTIONS or key in out or not value:
                    raise ConfigError(f"column {name!r}: unknown or repeated option {key!r}; "
                                      f"options are {', '.join(_OPTIONS)}")
                out[key] = value
            elif i == 0 and part:
                out["variant"] = part
            else:
                raise ConfigError(f"column {name!r}: the variant comes first and once, options as key=value")
    return out


def col(attribute: str, variant: str | None = None, *, model: str | None = None, vocabulary: str | None = None,
        mode: str = "phrase") -> pl.Expr:
    """``pl.col`` of an attribute column, checked: unknown attributes and options that
    the attribute does not take fail here, not at run time."""
    reader(attribute=attribute, variant=variant, model=model, vocabulary=vocabulary, mode=mode)
    return pl.col(column_name(attribute, variant, model=model, vocabulary=vocabulary, mode=mode))


def reader(**kw: Any) -> Any:
    """A Predicate that reads the column ``kw`` names (``= <a value of its type>``): built
    to run Predicate's checks of attribute, variant and options, and to read the column."""
    name = kw["attribute"]
    if name not in ATTRIBUTES:
        raise ConfigError(f"unknown attribute {name!r}; valid: {', '.join(sorted(ATTRIBUTES))}")
    probes: dict[str, bool | int | str] = {"number": 0, "bool": True, "str": ""}
    probe = probes[ATTRIBUTES[name].type]
    return Predicate(op="=", value=probe, **kw)


# -- predicate -> expression ----------------------------------------------------------
def threshold_expr(column: pl.Expr, fraction: float, descending: bool) -> pl.Expr:
    """The k-th largest (``descending``) or smallest of the column's n non-null values,
    ``k = ceil(n * fraction)``: the threshold :func:`curate.mix.compile.resolve_threshold`
    takes in SQL."""
    k = (column.count() * fraction - FRACTION_EPS).ceil().cast(pl.Int64)
    return column.drop_nulls().sort(descending=descending).get(k - 1)


def keep_fraction(column: pl.Expr | str, fraction: float, op: str = ">=") -> pl.Expr:
    """``column OP threshold`` where the threshold keeps ``fraction`` of the pool (at
    least ``ceil(n * fraction)`` samples; all ties at the threshold with ``>=``/``<=``).
    ``>=``/``>`` keep the top of the pool, ``<=``/``<`` the bottom."""
    if isinstance(column, str):
        column = pl.col(column)
    if op not in ("<", "<=", ">", ">="):
        raise ConfigError(f"keep_fraction: op must be <, <=, > or >=, got {op!r}")
    if not 0 < fraction <= 1:
        raise ConfigError(f"keep_fraction: fraction must be in (0, 1], got {fraction}")
    return _CMP[op](column, threshold_expr(column, float(fraction), op in (">", ">=")))


def predicate_expr(pred: Any) -> pl.Expr:
    """The polars expression of a :class:`Predicate`."""
    c = pl.col(column_name(pred.attribute, pred.variant, model=pred.model, vocabulary=pred.vocabulary,
                           mode=pred.mode))
    if pred.fraction is not None:
        return keep_fraction(c, pred.fraction, pred.op)
    if pred.op in ("in", "not_in"):
        e = c.is_in(list(pred.value))
        return ~e if pred.op == "not_in" else e
    return _CMP[pred.op](c, pl.lit(pred.value))


# -- expression -> predicates ---------------------------------------------------------
def _inputs(e: pl.Expr) -> list[pl.Expr]:
    return e.meta.pop()[::-1]  # pop() lists the inputs last first


def _value(e: pl.Expr) -> Any:
    return pl.select(e).to_series().to_list()[0]


def _literals(e: pl.Expr) -> list[Any]:
    if e.meta.is_literal():
        return [_value(e)]
    return [v for sub in _inputs(e) for v in _literals(sub)]


def _column(e: pl.Expr, whole: pl.Expr) -> dict[str, Any]:
    if not e.meta.is_column():
        raise ConfigError(f"{_show(whole)}: the left side must be an attribute column (pl.col or curate.mix.col), "
                          f"got {_show(e)}")
    return parse_column(e.meta.output_name())


def _show(e: pl.Expr) -> str:
    return str(e).replace("\n", " ")


def _one(e: pl.Expr) -> list[dict[str, Any]]:
    """Predicate keyword arguments of one conjunct (a list: ``&`` gives several)."""
    ins = _inputs(e)
    if len(ins) == 2 and e.meta.eq(ins[0] & ins[1]) and not (ins[0].meta.is_literal() or ins[1].meta.is_literal()):
        return _one(ins[0]) + _one(ins[1])
    if e.meta.is_column():
        return [{**parse_column(e.meta.output_name()), "op": "=", "value": True}]
    if len(ins) == 1 and e.meta.eq(~ins[0]):
        inner = ins[0]
        if inner.meta.is_column():
            return [{**parse_column(inner.meta.output_name()), "op": "=", "value": False}]
        got = _one(inner)
        if len(got) == 1 and got[0].get("op") == "in":
            return [{**got[0], "op": "not_in"}]
        raise ConfigError(f"{_show(e)}: ~ applies to col.is_in([...]) or a boolean column only")
    if len(ins) == 2 and e.meta.eq(ins[0].is_in(ins[1])) and ins[1].meta.is_literal():
        return [{**_column(ins[0], e), "op": "in", "value": tuple(_value(ins[1]))}]
    if len(ins) == 2:
        left, right = ins
        for op, fn in _CMP.items():
            if not e.meta.eq(fn(left, right)):
                continue
            c = _column(left, e)
            if right.meta.is_literal():
                value = _value(right)
                if isinstance(value, (list, tuple)):
                    raise ConfigError(f"{_show(e)}: a list value needs col.is_in([...])")
                return [{**c, "op": op, "value": value}]
            if op in ("<", "<=", ">", ">="):
                for f in _literals(right):
                    if isinstance(f, float) and 0 < f <= 1 and e.meta.eq(keep_fraction(left, f, op)):
                        return [{**c, "op": op, "fraction": f}]
            raise ConfigError(f"{_show(e)}: the right side must be a literal value or keep_fraction(...)")
    raise ConfigError(f"cannot read {_show(e)} as a policy predicate; curate reads col OP value, col.is_in([...]), "
                      "~col.is_in([...]), a boolean column, keep_fraction(col, f) and & of these")


def predicates_from_expr(expr: pl.Expr | Iterable[Any]) -> tuple[Any, ...]:
    """Typed :class:`Predicate` objects from a polars expression (or
    a sequence of expressions and predicates), checked as a TOML ``[[select]]`` is."""
    items = [expr] if isinstance(expr, pl.Expr) else list(expr)
    out: list[Predicate] = []
    for item in items:
        if isinstance(item, Predicate):
            out.append(item)
        elif isinstance(item, pl.Expr):
            out.extend(Predicate(**kw) for kw in _one(item))
        else:
            raise ConfigError(f"select: expected Predicate objects or polars expressions, got {type(item).__name__}")
    return tuple(out)


def conjunction(preds: Iterable[Any]) -> pl.Expr:
    """``&`` of the predicates' expressions (``pl.lit(True)`` for none)."""
    exprs = [predicate_expr(p) for p in preds]
    if not exprs:
        return pl.lit(True)
    out = exprs[0]
    for e in exprs[1:]:
        out = out & e
    return out
