"""Ingest: real source formats into the store, all through :mod:`curate.ingest.core`.

:func:`ingest` dispatches by format name; each format's options are the keyword
parameters of its ``ingest_<format>`` function and are checked before any work.
"""

from __future__ import annotations

import importlib
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


def ingest(store: Any, fmt: str, path: str | Path, source: str | None = None, **options: Any) -> Any:
    """Ingest ``path`` in format ``fmt`` into ``store``; returns an IngestResult."""
    check_options(fmt, options)
    fn = ingest_function(fmt)
    if fmt == "table":
        from .tables import resolve_mapping

        mapping_kw = {k: options.pop(k) for k in list(options) if k in TABLE_OPTIONS}
        preset = mapping_kw.pop("preset", None)
        return fn(store, path, source, mapping=resolve_mapping(preset, **mapping_kw), **options)
    return fn(store, path, source, **options)
