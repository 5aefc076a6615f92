"""The one typed-config engine: plain dicts (TOML tables) to frozen dataclasses and back.

Stages, passes, mixing policies, ingest options and pipeline steps are all dataclasses
(or keyword signatures) whose annotations are the schema. :func:`from_dict` builds one
from a plain dict and :func:`to_dict` writes it back, with one set of rules for all:

* an unknown key is an error listing the valid keys; a missing required key names its type;
* values are checked against the annotation: ``int`` refuses ``bool`` and ``float``;
  ``float`` takes ints and refuses NaN and infinities (no threshold, share or weight
  of curate is meaningful as NaN, and NaN compares false with everything, so it would
  silently select nothing); ``Literal[...]`` lists its choices; ``X | None`` takes None;
  ``tuple[T, ...]`` and ``tuple[A, B]`` take TOML arrays and become tuples (frozen
  dataclasses hash); ``dict[str, T]`` takes tables; a nested dataclass takes a table;
* every message is ``<where>: expected <type>, got <type> <value>`` or names the key.

:func:`load_toml` reads a TOML file with one-line errors and :func:`dump_toml` writes the
plain shape :func:`to_dict` gives (used by policies and pipelines).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def type_name(tp: Any) -> str:
    """What an annotation accepts, in words (for error messages)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return "any value"
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (types.UnionType, typing.Union):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args and not names else "")
    if tp is type(None):
        return "null"
    if origin in (tuple, list):
        if not args:
            return "a list"
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} ({', '.join(type_name(a) for a in args)})"
        return f"a list of {type_name(args[0])}"
    if origin is dict:
        return f"a table of {type_name(args[1])}" if args else "a table"
    if tp is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    named = {str: "a string", int: "an integer", float: "a number", bool: "true or false", Path: "a path"}
    return named.get(tp, getattr(tp, "__name__", str(tp)))


def _bad(where: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{where}: expected {type_name(tp)}, got {type(value).__name__} {value!r}")


def check(where: str, value: Any, tp: Any) -> Any:
    """``value`` checked against the annotation ``tp`` and normalised (lists become
    tuples, ints become floats where a float is asked, nested tables become
    dataclasses); a ConfigError naming ``where`` otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None:
            if type(None) in args:
                return None
            raise _bad(where, tp, value)
        first: ConfigError | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return check(where, value, a)
            except ConfigError as e:
                first = first or e
        # one non-None member: its own message is the more precise one
        if first is not None and len([a for a in args if a is not type(None)]) == 1:
            raise first
        raise _bad(where, tp, value)
    if tp is type(None):
        if value is not None:
            raise _bad(where, tp, value)
        return None
    if origin is Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args) or value not in args:
            raise _bad(where, tp, value)
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _bad(where, tp, value)
        if not args:
            return tuple(value) if origin is tuple or tp is tuple else list(value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _bad(where, tp, value)
            return tuple(check(f"{where}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        items = [check(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _bad(where, tp, value)
        if not args:
            return dict(value)
        kt, vt = args
        return {check(f"{where} key", k, kt): check(f"{where}.{k}", v, vt) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(where, tp, value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, tp, value)
        return value
    if tp is Path:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str):
            raise _bad(where, tp, value)
        return Path(value)
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise _bad(where, tp, value)
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")  # a programming error, not bad input


def fields_of(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """The init fields of a dataclass, by name."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def check_keys(where: str, data: Any, valid: typing.Iterable[str], skip: typing.Iterable[str] = ()) -> dict[str, Any]:
    """``data`` as a dict whose keys are all in ``valid`` (or ``skip``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__} {data!r}")
    valid = set(valid)
    unknown = sorted(set(data) - valid - set(skip))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid)) or 'none'}")
    return data


def from_dict(cls: type[T], data: Any, where: str, *, skip: typing.Iterable[str] = ()) -> T:
    """Build the dataclass ``cls`` from a plain dict by the rules above. Keys in ``skip``
    are ignored (a tag such as ``strategy`` that chose ``cls``). A ConfigError raised by
    the class's own ``__post_init__`` checks is prefixed with ``where``."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"{cls!r} is not a dataclass")  # a programming error
    fields = fields_of(cls)
    data = check_keys(where, data, fields, skip)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = check(f"{where}.{name}", data[name], hints.get(name, Any))
        elif required(f):
            raise ConfigError(f"{where}: missing key {name!r} ({type_name(hints.get(name, Any))})")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def check_call(fn: Any, where: str, options: dict[str, Any], *, skip_params: int = 0) -> dict[str, Any]:
    """Options for the keyword parameters of ``fn`` (after its first ``skip_params``
    positional ones), checked by name and annotation the way :func:`from_dict` checks a
    dataclass; returns them normalised."""
    import inspect

    params = [p for p in list(inspect.signature(fn).parameters.values())[skip_params:]
              if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    hints = typing.get_type_hints(fn)
    check_keys(where, options, [p.name for p in params])
    return {k: check(f"{where}.{k}", v, hints.get(k, Any)) for k, v in options.items()}


def config_hash(stage: str, config: dict[str, Any]) -> str:
    """The hash of ``{"stage": stage, "config": config}`` (sorted keys), 16 hex digits:
    the config hash of stages, passes and vector writes (:mod:`curate.runs`)."""
    payload = json.dumps({"stage": stage, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Configured:
    """What stages and passes share: a versioned registry name, a configuration that is
    the dataclass's fields, its hash, and construction from a plain dict by
    :func:`from_dict`. Subclasses are frozen dataclasses."""

    name: ClassVar[str]
    version: ClassVar[int]

    @classmethod
    def registry_name(cls) -> str:
        return f"{cls.name}.v{cls.version}"

    def config(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]  # subclasses are dataclasses

    def config_hash(self) -> str:
        """sha256 (16 hex digits) of the registry name and :meth:`config`; it keys the
        rows a stage writes and names a run's configuration."""
        return config_hash(self.registry_name(), self.config())

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Self:
        """Build from a plain dict by the rules above (unknown keys, wrong types and
        non-finite numbers are ConfigErrors naming ``<registry name> config``)."""
        return from_dict(cls, dict(config or {}), f"{cls.registry_name()} config")


def to_dict(obj: Any) -> Any:
    """A dataclass (nested ones too) as plain dicts and lists; tuples become lists, paths
    strings. Class-level string tags named in ``__config_tag__`` (a strategy or method
    name) are written first, so :func:`from_dict` of the right class reads it back."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        tag = getattr(type(obj), "__config_tag__", None)
        if tag:
            out = {tag: getattr(type(obj), tag), **out}
        return out
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def drop_none(obj: Any) -> Any:
    """``obj`` without None values in its tables (TOML has no null)."""
    if isinstance(obj, dict):
        return {k: drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [drop_none(v) for v in obj]
    return obj


def load_toml(path: str | Path, what: str = "file") -> dict[str, Any]:
    """A TOML file as a dict; a missing file or bad TOML is a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def toml_key(key: str) -> str:
    return key if key and set(key) <= _BARE_KEY else json.dumps(key, ensure_ascii=False)


def toml_value(v: Any) -> str:
    """A TOML value for plain types (strings use JSON's escapes, which TOML basic strings
    share; floats must be finite, which :func:`check` guarantees for configs)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"TOML has no value for {v!r}")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    raise TypeError(f"no TOML value for {v!r}")


def dump_toml(sections: dict[str, Any], order: typing.Sequence[str] | None = None) -> str:
    """TOML text for ``{section: table}`` or ``{section: [table, ...]}`` (an array of
    tables, written ``[[section]]``), sections in ``order`` (default: as given); None
    values are left out."""
    lines: list[str] = []
    for section in order or list(sections):
        body = sections.get(section)
        if body is None:
            continue
        tables = body if isinstance(body, list) else [body]
        for table in tables:
            lines.append(f"[[{section}]]" if isinstance(body, list) else f"[{section}]")
            lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in drop_none(table).items())
            lines.append("")
    return "\n".join(lines)
