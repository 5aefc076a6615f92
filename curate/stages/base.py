"""The stage contract.

A stage is a small frozen dataclass whose fields are its configuration. It declares

* ``name`` and ``version``: the registry name is ``f"{name}.v{version}"``;
* ``input_table`` and ``key``: rows of the input are identified by ``key``
  (``caption_id`` for caption stages, ``uid`` for sample stages);
* ``reads``: the input columns it needs (besides the key);
* ``output_table`` and ``output_schema``: the attribute table it appends to and the
  columns it writes (besides the key; the runner adds ``stage``, ``config_hash`` and
  ``run_id``);
* ``input_order`` (optional): a column to feed rows ordered by, e.g. ``text`` so that
  repeated texts meet in one batch and are computed once;
* ``views`` (optional): ``CREATE OR REPLACE VIEW`` statements over the output table,
  (re)created with it (e.g. one row per entity from a list column);
* ``preflight()``: cheap checks that the stage can run (a model is installed, ...),
  called before a run or pipeline starts any work;
* ``prepare(store)``: fills in store content the stage needs (e.g. a vocabulary);
* ``setup()``: loads models once per worker (never at import or construction);
* ``__call__(batch)``: maps an Arrow record batch (key + reads) to an Arrow table or
  record batch (key + output columns). Rows may be dropped only by returning a row
  with NULL outputs, never silently: the runner checks every input key comes back.

The maths lives in plain functions the stage calls, so they are testable alone.
Nothing in a stage may assume whether it runs in-process, in a process pool or on Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, ClassVar

import pyarrow as pa

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Stage:
    name: ClassVar[str]
    version: ClassVar[int]
    input_table: ClassVar[str] = "captions"
    key: ClassVar[str] = "caption_id"
    reads: ClassVar[tuple[str, ...]] = ()
    output_table: ClassVar[str]
    output_schema: ClassVar[pa.Schema]
    #: An optional SQL filter on the input (a WHERE clause over its columns, no values).
    input_filter: ClassVar[str | None] = None
    #: An optional input column to feed rows ordered by.
    input_order: ClassVar[str | None] = None
    #: CREATE OR REPLACE VIEW statements over the output table.
    views: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def registry_name(cls) -> str:
        return f"{cls.name}.v{cls.version}"

    def preflight(self) -> None:
        """Fail early (a ConfigError naming the fix) when the stage cannot run here."""

    def prepare(self, store: Any) -> "Stage":
        """The stage to run against ``store``: a stage whose input depends on the store
        (e.g. a vocabulary table) returns a copy with that content filled in, so it is
        part of the config hash and reaches the workers. Called once, in the runner."""
        return self

    def setup(self) -> None:
        """Load models and other heavy state; called once per worker before any batch."""

    def __call__(self, batch: pa.RecordBatch) -> pa.Table | pa.RecordBatch:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- configuration -------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def config_hash(self) -> str:
        payload = json.dumps({"stage": self.registry_name(), "config": self.config()}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> "Stage":
        """Build the stage from a plain dict, rejecting unknown keys and wrong types."""
        config = dict(config or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - set(fields))
        if unknown:
            valid = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"{cls.registry_name()}: unknown config key(s) {', '.join(unknown)}; valid keys: {valid}")
        hints = typing.get_type_hints(cls)
        for k, v in config.items():
            expected = hints.get(k, Any)
            if not _type_ok(v, expected):
                raise ConfigError(
                    f"{cls.registry_name()}: config key {k!r} should be {_type_name(expected)}, got {type(v).__name__} {v!r}"
                )
            if isinstance(v, list):
                config[k] = tuple(v)
        missing = [n for n, f in fields.items() if n not in config and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{cls.registry_name()}: missing config key(s) {', '.join(missing)}")
        try:
            return cls(**config)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{cls.registry_name()}: {e}") from None


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        if origin is list and args:
            return all(_type_ok(v, args[0]) for v in value)
        return True
    if origin is dict:
        return isinstance(value, dict) and all(_type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items()) if args else isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    return getattr(tp, "__name__", str(tp))
