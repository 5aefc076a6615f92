"""The one validator for names that become paths, and the one way to join them.

Policy names, output stems, vector-set names, variant names, vocabulary names, report
names and tail-benchmark names all end up as file or folder names under the store. Each
goes through :func:`check_name`, and every path built from one goes through
:func:`under`, which refuses a result outside its root. A path the user gives
explicitly (``--out``) is the only way out of the store.

A name is 1-100 characters from ``A-Z a-z 0-9 _ . -``, starting with a letter or digit
(so never ``.``, ``..``, empty, absolute or containing a separator). ``lower=True`` also
refuses upper case (vocabulary names are case-folded keys).
"""

from __future__ import annotations

import re
from pathlib import Path

from curate.errors import ConfigError

MAX_LEN = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_LOWER = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def is_name(name: object, *, lower: bool = False, max_len: int = MAX_LEN) -> bool:
    if not isinstance(name, str) or not 0 < len(name) <= max_len:
        return False
    return (_LOWER if lower else _NAME).fullmatch(name) is not None


def check_name(kind: str, name: object, *, lower: bool = False, max_len: int = MAX_LEN) -> str:
    """Return ``name`` if it is a safe file-name component, else raise one ConfigError line."""
    if is_name(name, lower=lower, max_len=max_len):
        assert isinstance(name, str)
        return name
    letters = "lower-case letters" if lower else "letters"
    raise ConfigError(f"{kind} name {name!r} must be 1-{max_len} {letters}, digits, '_', '.' or '-', "
                      "starting with a letter or digit (it becomes a file name in the store)")


def under(root: str | Path, *parts: str) -> Path:
    """``root / parts...``, refused with a ConfigError if the result leaves ``root``."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise ConfigError(f"{'/'.join(parts)!r} would be written outside {base}; names that become paths "
                          "must stay inside the store (give --out for an explicit location)")
    return path


def normalise(name: str, *, max_len: int = MAX_LEN) -> str:
    """A safe name derived from ``name``: runs of other characters become ``_``, leading
    characters that may not start a name are dropped. Empty input gives ``""``."""
    out = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    out = re.sub(r"^[^A-Za-z0-9]+", "", out)
    return out[:max_len]
