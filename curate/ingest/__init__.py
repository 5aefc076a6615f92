"""Ingest: real source formats into the store, all through :mod:`curate.ingest.core`.

:func:`ingest` dispatches by format name; each format's options are the keyword
parameters of its ``ingest_<format>`` function and are checked before any work.
"""

from __future__ import annotations

import importlib
import os
import inspect
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError

#: format -> "module:function"; the function is ingest_<format>(store, path, source=None, **options)
FORMATS: dict[str, str] = {
    "table": "curate.ingest.tables:ingest_table",
    "img2dataset": "curate.ingest.img2dataset:ingest_img2dataset",
    "capsfusion": "curate.ingest.capsfusion:ingest_capsfusion",
    "laclip": "curate.ingest.laclip:ingest_laclip",
    "gbc": "curate.ingest.gbc:ingest_gbc",
    "coco": "curate.ingest.coco:ingest_coco",
}

#: table options that build a TableMapping (see curate.ingest.tables)
TABLE_OPTIONS = ("preset", "url_col", "caption_col", "uid_col", "width_col", "height_col", "sha256_col",
                 "variant", "generator", "extra_cols", "input_format", "header")


def ingest_function(fmt: str) -> Callable[..., Any]:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown ingest format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    module, fn = FORMATS[fmt].split(":")
    return getattr(importlib.import_module(module), fn)


def format_options(fmt: str) -> dict[str, Any]:
    """Option name -> default for a format (what a pipeline's [[ingest]] table may set)."""
    if fmt == "table":
        return {name: None for name in TABLE_OPTIONS} | {"max_caption_chars": None}
    sig = inspect.signature(ingest_function(fmt))
    return {n: p.default for n, p in list(sig.parameters.items())[3:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def check_options(fmt: str, options: dict[str, Any]) -> None:
    valid = format_options(fmt)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"ingest format {fmt!r} has no option(s) {', '.join(unknown)}; "
                          f"valid options: {', '.join(sorted(valid)) or 'none'}")


def _takes_path(annotation: Any) -> bool:
    return "Path" in str(annotation)


def validate_options(fmt: str, options: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """Check option names *and values* before any work; return them with file options
    resolved against ``base`` (a pipeline's folder) and checked to exist.

    Values are checked against the reader's type annotations; a reader module may add a
    ``validate_options(**options)`` for rules across options (LaCLIP's style/originals)."""
    import typing

    from ..stages.base import _type_name, _type_ok

    check_options(fmt, options)
    out = dict(options)
    if fmt == "table":
        from .tables import resolve_mapping

        kw = {k: v for k, v in out.items() if k in TABLE_OPTIONS}
        for k, v in kw.items():
            ok = isinstance(v, bool) if k == "header" else isinstance(v, (str, list)) if k == "extra_cols" else isinstance(v, str)
            if not ok:
                raise ConfigError(f"ingest option {k!r} should be {'a boolean' if k == 'header' else 'a string'}, got {v!r}")
        preset = kw.pop("preset", None)
        resolve_mapping(preset, **kw)
        mcc = out.get("max_caption_chars")
        if mcc is not None and (not isinstance(mcc, int) or isinstance(mcc, bool) or mcc < 1):
            raise ConfigError(f"ingest option 'max_caption_chars' should be a positive integer, got {mcc!r}")
        return out
    fn = ingest_function(fmt)
    hints = typing.get_type_hints(fn)
    for k, v in out.items():
        tp = hints.get(k, Any)
        if _takes_path(tp) and isinstance(v, str):
            p = Path(v)
            if base is not None and not p.is_absolute():
                p = Path(os.path.abspath(base / p))
            if not p.exists():
                raise ConfigError(f"ingest option {k!r}: {p} does not exist")
            out[k] = p
        elif not _type_ok(v, tp):
            raise ConfigError(f"ingest option {k!r} should be {_type_name(tp)}, got {type(v).__name__} {v!r}")
    extra_check = getattr(importlib.import_module(fn.__module__), "validate_options", None)
    if extra_check is not None:
        extra_check(**out)
    return out


def ingest(store: Any, fmt: str, path: str | Path, source: str | None = None, **options: Any) -> Any:
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
