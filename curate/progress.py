"""Progress bars for long work, one rule everywhere: a bar on stderr when it is a
terminal (or when asked with ``--progress``), nothing otherwise; the command's one-line
summary on stdout is the record either way.

Library functions call :func:`bar`; a command sets the choice once with
:func:`configure` (from ``--progress/--no-progress``), so no progress flag enters a
stage's or pass's configuration (and its config hash).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: None: a bar when stderr is a terminal; True/False: always / never
_ENABLED: ContextVar[bool | None] = ContextVar("curate_progress", default=None)


def configure(enabled: bool | None) -> None:
    """Set the choice for this process (None: when stderr is a terminal)."""
    _ENABLED.set(enabled)


@contextmanager
def enabled(choice: bool | None) -> Iterator[None]:
    """The choice for the duration of a block."""
    token = _ENABLED.set(choice)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def disabled_flag(choice: bool | None = None) -> bool | None:
    """tqdm's ``disable`` for a choice (None: tqdm disables itself when not a terminal)."""
    choice = _ENABLED.get() if choice is None else choice
    return None if choice is None else not choice


def bar(iterable: Iterable[T] | None = None, *, total: int | float | None = None, desc: str = "",
        unit: str = "rows", choice: bool | None = None, **kw: Any) -> Any:
    """A tqdm bar following the rule above (``choice`` overrides the configured one)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disabled_flag(choice), dynamic_ncols=True,
                unit_scale=True, leave=False, **kw)


def blocks(items: Iterable[tuple[int, Any]], total: int, desc: str) -> Iterator[tuple[int, Any]]:
    """Pass ``(first_row, block)`` pairs through, advancing a bar by each block's rows."""
    with bar(total=total, desc=desc) as b:
        for start, block in items:
            yield start, block
            b.update(len(block))
