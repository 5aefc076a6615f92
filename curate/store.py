"""The store: a directory with ``catalog.duckdb`` (the system of record) and folders
for what does not belong in a table (vectors, indexes, manifests, reports).

Opening a store applies any pending migration from ``sql/schema/NNN_*.sql`` in order,
each in its own transaction, and records it in ``schema_migrations``; a store made by
an earlier curate therefore opens and upgrades. A store made by a *newer* curate (it
has migrations this one does not know) is refused rather than guessed at.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from .errors import QueryError, StoreError
from .sqlfiles import get_query, sql_root

if TYPE_CHECKING:
    import polars as pl

DEFAULT_STORE = "curate-store"
CATALOG = "catalog.duckdb"
FOLDERS = ("vectors", "indexes", "manifests", "reports", "tmp")
#: New catalogs are written in a storage format DuckDB 1.4+ can read, so the store opens in
#: the ``duckdb`` CLI from PyPI (``duckdb-cli`` 1.5) and in older Python clients; DuckDB 2
#: reads and writes it as usual. Existing catalogs keep the format they were created with.
STORAGE_COMPATIBILITY = "v1.4.0"
_MIGRATION = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def default_store_path() -> Path:
    return Path(os.environ.get("CURATE_STORE") or DEFAULT_STORE)


def migrations() -> list[tuple[int, str, Path]]:
    out = []
    for f in sorted((sql_root() / "schema").glob("*.sql")):
        m = _MIGRATION.match(f.name)
        if not m:
            raise StoreError(f"migration file {f.name} does not match NNN_name.sql")
        out.append((int(m.group(1)), m.group(2), f))
    versions = [v for v, _, _ in out]
    if versions != list(range(1, len(versions) + 1)):
        raise StoreError(f"migrations must be numbered 001, 002, ... without gaps; found {versions}")
    return out


def check_identifier(name: str) -> str:
    """Identifiers that vary (table and column names) are checked, never interpolated raw."""
    if not _IDENT.match(name):
        raise QueryError(f"{name!r} is not a valid SQL identifier (letters, digits and _ only)")
    return name


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Store:
    """An open store. Use :meth:`open` or :meth:`init`; close it (or use ``with``)."""

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection, read_only: bool = False):
        self.path = path
        self.con = con
        self.read_only = read_only

    # -- opening -----------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str] | None = None) -> Store:
        """Create the store directory (if needed) and open it."""
        p = Path(path) if path is not None else default_store_path()
        p.mkdir(parents=True, exist_ok=True)
        return cls.open(p, create=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, create: bool = False, read_only: bool = False,
             memory_limit: str | None = None, threads: int | None = None) -> Store:
        p = Path(path) if path is not None else default_store_path()
        db = p / CATALOG
        if not db.exists() and not create:
            raise StoreError(f"no store at {p} (no {CATALOG}); create one with `curate init {p}`")
        p.mkdir(parents=True, exist_ok=True)
        for f in FOLDERS:
            (p / f).mkdir(exist_ok=True)
        # The environment gives the CLI a way to bound DuckDB: CURATE_MEMORY_LIMIT=4GB, CURATE_THREADS=2.
        memory_limit = memory_limit or os.environ.get("CURATE_MEMORY_LIMIT") or None
        if threads is None and os.environ.get("CURATE_THREADS"):
            raw = os.environ["CURATE_THREADS"]
            if not raw.strip().isdigit() or not 1 <= int(raw) <= 4096:
                raise StoreError(f"CURATE_THREADS must be a whole number from 1 to 4096, got {raw!r}")
            threads = int(raw)
        config: dict[str, Any] = {}
        if not db.exists():
            config["storage_compatibility_version"] = STORAGE_COMPATIBILITY
        if memory_limit:
            config["memory_limit"] = memory_limit
        if threads:
            config["threads"] = threads
        try:
            con = duckdb.connect(str(db), read_only=read_only, config=config)
        except duckdb.IOException as e:
            msg = str(e).splitlines()[0]
            if "lock" in msg.lower():
                raise StoreError(f"store {p} is in use by another process ({msg})") from None
            raise StoreError(f"cannot open store {p}: {msg}") from None
        except (duckdb.Error, OverflowError, ValueError) as e:  # a memory_limit or thread count DuckDB refuses
            given = ", ".join(f"{k}={v!r}" for k, v in config.items() if k in ("memory_limit", "threads"))
            raise StoreError(f"cannot open store {p} with {given or 'these settings'} "
                             f"(see CURATE_MEMORY_LIMIT, CURATE_THREADS): {str(e).splitlines()[0]}") from None
        con.execute("SET temp_directory = ?", [str((p / "tmp").resolve())])
        # DuckDB's own progress bar for long statements (ingest, audits) on a terminal only:
        # DuckDB 2 turns it on by default and prints it to stdout, which would mix it into
        # piped output whenever a statement runs long (machine load decides when)
        con.execute(f"SET enable_progress_bar = {'true' if sys.stderr.isatty() else 'false'}")
        store = cls(p, con, read_only=read_only)
        if not read_only:
            store._migrate()
        return store

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- schema ------------------------------------------------------------------
    def _migrate(self) -> list[int]:
        con = self.con
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)"
        )
        done = {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
        known = migrations()
        newer = sorted(done - {v for v, _, _ in known})
        if newer:
            raise StoreError(
                f"store {self.path} has schema migrations {newer} that this curate does not know; upgrade curate"
            )
        applied = []
        for version, name, f in known:
            if version in done:
                continue
            con.begin()
            try:
                con.execute(f.read_text(encoding="utf-8"))
                con.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, _dt.datetime.now()]
                )
                con.commit()
            except Exception as e:
                con.rollback()
                raise StoreError(f"migration {f.name} failed on {self.path}: {e}") from e
            applied.append(version)
        return applied

    @property
    def schema_version(self) -> int:
        return self.con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchall()[0][0]

    def tables(self) -> list[str]:
        return [r[0] for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_catalog = current_database() ORDER BY 1"
        ).fetchall()]

    def columns(self, table: str) -> dict[str, str]:
        rows = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_catalog = current_database() AND table_name = ? "
            "ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return {n: t for n, t in rows}

    def has_table(self, table: str) -> bool:
        return bool(self.columns(table))

    # -- queries -----------------------------------------------------------------
    def relation(self, sql: str, params: Mapping[str, Any] | None = None) -> duckdb.DuckDBPyRelation:
        """Run SQL and return a DuckDB relation (lazy for SELECTs)."""
        try:
            if params:
                return self.con.sql(sql, params=dict(params))
            return self.con.sql(sql)
        except duckdb.Error as e:
            raise QueryError(_one_line(e)) from None

    def arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        return _or_empty(self.relation(sql, params)).to_arrow_table()

    def df(self, sql: str, params: Mapping[str, Any] | None = None) -> pl.DataFrame:
        """Run SQL and return a polars DataFrame."""
        import polars as pl

        rel = self.relation(sql, params)
        return pl.DataFrame() if rel is None else rel.pl()

    def lazy(self, sql: str, params: Mapping[str, Any] | None = None) -> pl.LazyFrame:
        """Run SQL and return a polars LazyFrame streamed from DuckDB."""
        import polars as pl

        rel = self.relation(sql, params)
        return pl.LazyFrame() if rel is None else rel.pl(lazy=True)

    def execute(self, sql: str, params: Mapping[str, Any] | Iterable[Any] | None = None) -> duckdb.DuckDBPyConnection:
        try:
            return self.con.execute(sql, params) if params is not None else self.con.execute(sql)
        except duckdb.Error as e:
            raise QueryError(_one_line(e)) from None

    def query(self, qualname: str, **params: Any) -> duckdb.DuckDBPyRelation:
        """Run a named query from ``sql/<domain>/*.sql`` with ``$param`` values."""
        q = get_query(qualname)
        params = {**dict(q.defaults), **params}
        missing = [p for p in q.params if p not in params]
        if missing:
            raise QueryError(f"named query {qualname} needs parameter(s) {', '.join(missing)} (--param NAME=VALUE)")
        extra = [p for p in params if p not in q.params]
        if extra:
            raise QueryError(
                f"named query {qualname} takes {', '.join(q.params) or 'no parameters'}; got unknown {', '.join(extra)}"
            )
        try:
            return self.relation(q.sql, {k: params[k] for k in q.params})
        except QueryError as e:
            # a table a stage has not written yet: say so, with the query's own note on
            # where its inputs come from, rather than DuckDB's catalog message alone
            m = re.search(r"Table with name (\w+) does not exist", str(e))
            if not m:
                raise
            raise QueryError(f"named query {qualname} reads table {m.group(1)}, which this store does not have yet; "
                             f"{' '.join(q.doc.split())}") from None

    def count(self, table: str) -> int:
        check_identifier(table)
        return self.con.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchall()[0][0]

    def summary(self) -> dict[str, int]:
        return {t: self.count(t) for t in self.tables()}


def _or_empty(rel: duckdb.DuckDBPyRelation | None) -> duckdb.DuckDBPyRelation:
    if rel is None:
        raise QueryError("the statement returned no result set")
    return rel


def _one_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:3]) if lines else type(e).__name__


def open_store(path: str | os.PathLike[str] | None = None, **kw: Any) -> Store:
    """Open an existing store (``$CURATE_STORE`` or ``./curate-store`` by default)."""
    return Store.open(path, **kw)
