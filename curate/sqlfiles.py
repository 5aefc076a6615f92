"""Named SQL queries kept in ``sql/<domain>/*.sql``.

A file holds one or more queries, each introduced by a ``-- name: NAME`` line. The
comment lines that follow the name (before the first SQL line) are the query's
documentation. Parameters use DuckDB's ``$param`` binding; a doc line
``defaults: raw=raw, synthetic=synthetic`` gives parameters default (text) values. A query is addressed as
``DOMAIN.NAME`` where DOMAIN is the folder. ``sql/schema`` holds migrations, not named
queries, and ``sql/checks`` holds invariants (queries that must return no rows).

A query can use another as a subquery by writing ``{{DOMAIN.NAME}}`` where a table would
go: the loader puts the other query's SQL there in parentheses, so a rule (what counts
as a kept or a supported entity, say) is written once and every report built on it
agrees. The included query's parameters become the including query's (same names, same
values) and so do its defaults, unless the including query gives its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import QueryError

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.I)
_PARAM = re.compile(r"(?<![:$\w])\$([a-z_][a-z0-9_]*)", re.I)
_INCLUDE = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*)\s*\}\}", re.I)


def sql_root() -> Path:
    """The folder holding the SQL files: ``curate/_sql`` in a wheel, ``sql/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "_sql", here.parent / "sql"):
        if (cand / "schema").is_dir():
            return cand
    raise FileNotFoundError(f"curate's SQL folder is missing (looked in {here / '_sql'} and {here.parent / 'sql'})")


@dataclass(frozen=True)
class NamedQuery:
    domain: str
    name: str
    doc: str
    sql: str
    params: tuple[str, ...]
    path: Path
    defaults: tuple[tuple[str, str], ...] = ()

    @property
    def qualname(self) -> str:
        return f"{self.domain}.{self.name}"


def parse_file(path: Path, domain: str) -> list[NamedQuery]:
    queries: list[NamedQuery] = []
    name: str | None = None
    doc: list[str] = []
    body: list[str] = []

    def flush() -> None:
        if name is None:
            return
        sql = "\n".join(body).strip().rstrip(";").strip()
        if not sql:
            raise QueryError(f"{path}: query {name!r} has no SQL")
        params = tuple(dict.fromkeys(_PARAM.findall(sql)))
        defaults: list[tuple[str, str]] = []
        for line in doc:
            if line.lower().startswith("defaults:"):
                for item in line.split(":", 1)[1].split(","):
                    k, sep, v = item.partition("=")
                    if not sep or (k.strip() not in params and not _INCLUDE.search(sql)):  # includes: in _expand
                        raise QueryError(f"{path}: query {name!r} has a bad default {item.strip()!r}")
                    defaults.append((k.strip(), v.strip()))
        queries.append(NamedQuery(domain, name, "\n".join(doc).strip(), sql, params, path, tuple(defaults)))

    for line in path.read_text(encoding="utf-8").splitlines():
        m = _NAME.match(line)
        if m:
            flush()
            name, doc, body = m.group(1), [], []
        elif name is not None and not body and line.startswith("--"):
            doc.append(line[2:].strip())
        elif name is not None:
            body.append(line)
    flush()
    return queries


@lru_cache(maxsize=1)
def named_queries() -> dict[str, NamedQuery]:
    root = sql_root()
    out: dict[str, NamedQuery] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "schema"):
        for f in sorted(folder.glob("*.sql")):
            for q in parse_file(f, folder.name):
                if q.qualname in out:
                    raise QueryError(f"named query {q.qualname} is defined twice ({out[q.qualname].path}, {f})")
                out[q.qualname] = q
    return {name: _expand(out, name, ()) for name in out}


def _expand(queries: dict[str, NamedQuery], qualname: str, stack: tuple[str, ...]) -> NamedQuery:
    """``qualname`` with every ``{{DOMAIN.NAME}}`` replaced by that query's (expanded) SQL."""
    q = queries[qualname]
    if qualname in stack:
        raise QueryError(f"named query {qualname} includes itself ({' -> '.join((*stack, qualname))})")
    if not _INCLUDE.search(q.sql):
        return q
    defaults = dict(q.defaults)
    extra_defaults: dict[str, str] = {}

    def sub(m: re.Match[str]) -> str:
        other = m.group(1)
        if other not in queries:
            raise QueryError(f"{q.path}: query {q.name!r} includes unknown named query {other!r}")
        inc = _expand(queries, other, (*stack, qualname))
        for k, v in inc.defaults:
            extra_defaults.setdefault(k, v)
        return "(\n" + inc.sql + "\n)"

    sql = _INCLUDE.sub(sub, q.sql)
    params = tuple(dict.fromkeys(_PARAM.findall(sql)))
    bad = [k for k in defaults if k not in params]
    if bad:
        raise QueryError(f"{q.path}: query {q.name!r} has a default for {', '.join(bad)}, which it does not use")
    merged = {**{k: v for k, v in extra_defaults.items() if k in params}, **defaults}
    return NamedQuery(q.domain, q.name, q.doc, sql, params, q.path, tuple(merged.items()))


def expand(sql: str) -> tuple[str, dict[str, str]]:
    """Ad-hoc ``sql`` with its ``{{DOMAIN.NAME}}`` includes expanded (as subqueries), and
    the defaults of the included queries' parameters."""
    defaults: dict[str, str] = {}

    def sub(m: re.Match[str]) -> str:
        inc = get_query(m.group(1))
        for k, v in inc.defaults:
            defaults.setdefault(k, v)
        return "(\n" + inc.sql + "\n)"

    return _INCLUDE.sub(sub, sql), defaults


def get_query(qualname: str) -> NamedQuery:
    queries = named_queries()
    if qualname not in queries:
        close = [q for q in queries if q.split(".")[-1] == qualname.split(".")[-1] or q.startswith(qualname)]
        hint = f"; did you mean {', '.join(close)}?" if close else "; `curate sql --list` shows them all"
        raise QueryError(f"unknown named query {qualname!r}{hint}")
    return queries[qualname]
