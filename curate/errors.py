"""Error classes, named after how a caller handles them.

Every error curate raises on purpose is a :class:`CurateError`; the CLI prints its
message on one line and exits with the class's ``exit_code`` instead of a traceback.
Messages say what was expected, what came, and what to try.
"""

from __future__ import annotations


class CurateError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code = 1


class ConfigError(CurateError):
    """Bad configuration (pipeline file, stage config, CLI options). Fix the config;
    nothing was run."""

    exit_code = 2


class InputError(CurateError):
    """The input data cannot be read as asked (missing column, wrong type, truncated
    or non-UTF-8 file). Nothing was written."""

    exit_code = 3


class StoreError(CurateError):
    """The store is missing, locked by another process, or newer than this curate."""

    exit_code = 4


class MissingExtraError(CurateError):
    """An optional dependency is not installed; the message names the install command."""

    exit_code = 5


class QueryError(CurateError):
    """A SQL query or named query failed (unknown name, missing parameter, SQL error)."""

    exit_code = 6
