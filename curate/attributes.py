"""Declared attributes: what stages and passes produce that a mixing policy can select on,
and the one template that says which rows are "latest".

A producer (a stage class, :mod:`curate.stages.base`, or a pass class,
:mod:`curate.passes.base`) lists its attributes in ``attributes``. Each is a relation
keyed by ``caption_id`` (``key = "caption"``) or ``uid`` (``key = "sample"``) with one
``value`` column, given either as

* ``column`` (+ ``where``): a column of the producer's latest rows, the rows of
  :func:`latest_sql` over its output table; or
* ``sql``: the relation itself, ``SELECT <caption_id | uid>, <expr> AS value FROM ...``,
  which may name predicate parameters as ``$vocabulary``, ``$mode`` or ``$model``
  (declared in ``params``; bound as SQL literals when a policy is compiled).

The mixing catalogue (:func:`curate.mix.attributes.catalogue`), its validation and the
attribute table in ``docs/mixing.md`` are built from these declarations, so a new score
becomes selectable by writing its stage and its registry line.

**Latest.** A store may hold several configurations of one stage (a rerun with another
model writes beside the old rows). The rows a reader means are those of the
configuration of the stage's most recent run (``runs`` order, whatever its status), per
partition: ``latest_by`` names config fields that each have their own latest run
(``clip.score.v1`` keeps one per ``model_id``, ``concepts.text_match.v1`` one per
vocabulary and mode). Every ``*_latest`` view and every column attribute reads
:func:`latest_sql`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from .errors import ConfigError

KEYS = {"caption": "caption_id", "sample": "uid"}
TYPES = ("number", "bool", "str")
PARAMS = ("vocabulary", "mode", "model")


@dataclasses.dataclass(frozen=True)
class Attribute:
    """One value per caption or per sample that a policy can select on (see the module
    docstring). ``default`` is the value of a key with no row (``None``: such a key fails
    every predicate); ``table`` is the table it needs (by default the producer's output
    table); ``latest`` says in words which rows count (filled from the producer's
    ``latest_by`` for column attributes)."""

    name: str
    key: Literal["caption", "sample"]
    type: Literal["number", "bool", "str"]
    doc: str
    column: str | None = None
    where: str | None = None
    sql: str | None = None
    default: Any = None
    params: tuple[str, ...] = ()
    table: str | None = None
    latest: str | None = None
    #: filled in by :func:`declared`: the registry name of the producer
    producer: str | None = None

    def __post_init__(self) -> None:
        if self.key not in KEYS:
            raise ConfigError(f"attribute {self.name}: key must be caption or sample, got {self.key!r}")
        if self.type not in TYPES:
            raise ConfigError(f"attribute {self.name}: type must be one of {', '.join(TYPES)}, got {self.type!r}")
        if self.column is None and self.sql is None:
            raise ConfigError(f"attribute {self.name}: give column or sql")
        bad = sorted(set(self.params) - set(PARAMS))
        if bad:
            raise ConfigError(f"attribute {self.name}: unknown parameter(s) {', '.join(bad)}; valid: {', '.join(PARAMS)}")

    @property
    def level(self) -> str:
        """``caption`` or ``sample`` (the policy's word for ``key``)."""
        return self.key

    @property
    def key_column(self) -> str:
        return KEYS[self.key]

    @property
    def needs_vocabulary(self) -> bool:
        return "vocabulary" in self.params


def latest_sql(table: str, stage: str, *, by: tuple[str, ...] = (), columns: str = "k.*",
               join_captions: bool = True) -> str:
    """The rows of ``table`` written under the configuration of ``stage``'s most recent
    run, one latest run per value of the config fields ``by``; ``k`` is the table,
    ``c`` the caption the row is about (when ``join_captions``). The one definition of
    "latest" for stage outputs."""
    parts = ", ".join(f"json_extract_string(r.config, '$.config.{f}')" for f in by) or "r.stage"
    latest = (f"SELECT DISTINCT ON ({parts}) r.config_hash FROM runs r WHERE r.stage = '{_sql_text(stage)}' "
              f"ORDER BY {parts}, r.run_id DESC")
    caps = " JOIN captions c USING (caption_id)" if join_captions else ""
    return f"SELECT {columns} FROM {table} k SEMI JOIN ({latest}) l ON l.config_hash = k.config_hash{caps}"


def latest_view(view: str, table: str, stage: str, *, by: tuple[str, ...] = (), columns: str = "k.*",
                join_captions: bool = True) -> str:
    """``CREATE OR REPLACE VIEW view`` over :func:`latest_sql`."""
    return f"CREATE OR REPLACE VIEW {view} AS\n" + latest_sql(table, stage, by=by, columns=columns,
                                                              join_captions=join_captions)


def latest_words(by: tuple[str, ...]) -> str:
    return ("the configuration of the latest run" if not by else
            f"the configuration of the latest run per {', '.join(by)}")


def declared(producer: Any) -> tuple[Attribute, ...]:
    """The attributes a stage or pass class declares, with their producer, table,
    "latest" and (for column attributes) relation SQL filled in."""
    name = producer.registry_name()
    table = getattr(producer, "output_table", None) or next(iter(getattr(producer, "writes", ())), None)
    by = tuple(getattr(producer, "latest_by", ()))
    out = []
    for a in getattr(producer, "attributes", ()):
        sql = a.sql
        if sql is None:
            if table is None:
                raise ConfigError(f"{name}: attribute {a.name} names a column but the producer writes no table")
            rows = latest_sql(table, name, by=by, join_captions=False)
            where = f" WHERE {a.where}" if a.where else ""
            sql = f"SELECT {a.key_column}, {a.column} AS value FROM ({rows}){where}"
        latest = a.latest or (latest_words(by) if a.column is not None else None)
        out.append(dataclasses.replace(a, producer=name, table=a.table or table, latest=latest, sql=sql))
    return tuple(out)


def _sql_text(s: str) -> str:
    return s.replace("'", "''")
