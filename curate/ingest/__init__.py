"""Ingest: real source formats into the store, all through :mod:`curate.ingest.core`.

:func:`ingest` dispatches by format name; each format's options are the keyword
parameters of its ``ingest_<format>`` function and are checked before any work.
"""

from __future__ import annotations

import importlib
import inspect
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import check
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..store import Store

#: format -> "module:function"; the function is ingest_<format>(store, path, source=None, **options)
FORMATS: dict[str, str] = {
    "table": "curate.ingest.tables:ingest_table",
    "img2dataset": "curate.ingest.img2dataset:ingest_img2dataset",
    "capsfusion": "curate.ingest.capsfusion:ingest_capsfusion",
    "laclip": "curate.ingest.laclip:ingest_laclip",
    "gbc": "curate.ingest.gbc:ingest_gbc",
    "coco": "curate.ingest.coco:ingest_coco",
}

#: table options (they build a TableMapping, see curate.ingest.tables) and their types;
#: ``extra_cols`` and ``caption_cols`` are also taken as one comma-separated string (the CLI's form)
TABLE_OPTION_TYPES: dict[str, Any] = {
    "preset": str | None, "url_col": str | None, "caption_col": str | None, "uid_col": str | None,
    "width_col": str | None, "height_col": str | None, "sha256_col": str | None, "variant": str | None,
    "generator": str | None, "extra_cols": str | tuple[str, ...] | None, "input_format": str | None,
    "header": bool | None, "caption_cols": str | tuple[str, ...] | None,
}
TABLE_OPTIONS = tuple(TABLE_OPTION_TYPES)


def ingest_function(fmt: str) -> Callable[..., Any]:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown ingest format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    module, name = FORMATS[fmt].split(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return fn


def option_types(fmt: str) -> dict[str, Any]:
    """Option name -> annotation for a format: the keyword parameters of its
    ``ingest_<format>`` after (store, path, source); the table format's mapping options."""
    if fmt == "table":
        return TABLE_OPTION_TYPES | {"max_caption_chars": int | None}
    fn = ingest_function(fmt)
    hints = typing.get_type_hints(fn)
    sig = inspect.signature(fn)
    return {n: hints.get(n, Any) for n, p in list(sig.parameters.items())[3:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def format_options(fmt: str) -> dict[str, Any]:
    """Option name -> default for a format (what a pipeline's [[ingest]] table may set)."""
    if fmt == "table":
        return {name: None for name in option_types(fmt)}
    sig = inspect.signature(ingest_function(fmt))
    return {n: sig.parameters[n].default for n in option_types(fmt)}


def check_options(fmt: str, options: dict[str, Any]) -> None:
    valid = format_options(fmt)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"ingest format {fmt!r} has no option(s) {', '.join(unknown)}; "
                          f"valid options: {', '.join(sorted(valid)) or 'none'}")


def _takes_path(annotation: Any) -> bool:
    return "Path" in str(annotation)


def validate_options(fmt: str, options: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """Check option names *and values* (by the rules of :mod:`curate.config`) before any
    work; return them with file options resolved against ``base`` (a pipeline's folder)
    and checked to exist.

    Values are checked against the reader's type annotations; a reader module may add a
    ``validate_options(**options)`` for rules across options (LaCLIP's style/originals)."""
    check_options(fmt, options)
    types_ = option_types(fmt)
    out = {k: check(f"ingest option {k}", v, types_[k]) for k, v in options.items()}
    if fmt == "table":
        from .tables import resolve_mapping

        kw = {k: v for k, v in out.items() if k in TABLE_OPTIONS}
        preset = kw.pop("preset", None)
        resolve_mapping(preset, **kw)
        mcc = out.get("max_caption_chars")
        if mcc is not None and mcc < 1:
            raise ConfigError(f"ingest option max_caption_chars: expected a positive integer, got {mcc!r}")
        return out
    fn = ingest_function(fmt)
    for k, v in out.items():
        if _takes_path(types_[k]) and isinstance(v, (str, Path)):
            p = Path(v)
            if base is not None and not p.is_absolute():
                p = Path(os.path.abspath(base / p))
            if not p.exists():
                raise ConfigError(f"ingest option {k!r}: {p} does not exist")
            out[k] = p
    extra_check = getattr(importlib.import_module(fn.__module__), "validate_options", None)
    if extra_check is not None:
        extra_check(**out)
    return out


def ingest(store: Store, fmt: str, path: str | Path, source: str | None = None, **options: Any) -> Any:
    """Ingest ``path`` in format ``fmt`` into ``store``; returns an IngestResult."""
    import duckdb

    from .core import ingest_error

    options = validate_options(fmt, options)
    fn = ingest_function(fmt)
    try:
        if fmt == "table":
            from .tables import resolve_mapping

            mapping_kw = {k: options.pop(k) for k in list(options) if k in TABLE_OPTIONS}
            preset = mapping_kw.pop("preset", None)
            return fn(store, path, source, mapping=resolve_mapping(preset, **mapping_kw), **options)
        return fn(store, path, source, **options)
    except duckdb.Error as e:
        # reading the input (a reader's temp tables, before run_ingest's transaction) can
        # fail too: out of memory, an input DuckDB cannot parse. The store is unchanged.
        raise ingest_error(fmt, e) from None
