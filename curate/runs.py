"""The run lifecycle: the one place that writes ``runs`` rows.

Every operation that changes a store leaves one ``runs`` row (``kind``, ``stage``, the
resolved ``config`` as JSON, ``config_hash``, counts, ``seconds``, ``status``, ...):

* **Started, then finished** (:func:`start_run`, :class:`Run`): the row is inserted as
  ``running`` before the work; the operation records progress with :meth:`Run.progress`
  (a stage batch commits its counters with its rows), then sets it ``ok`` with
  :meth:`Run.ok` / :meth:`Run.commit_ok` *in the same transaction as its result* (so a
  result without an ``ok`` run, or an ``ok`` run without its result, cannot exist). An
  exception sets it ``failed`` (``<Error>: <message>``, at most 1,000 characters) or,
  for Ctrl-C and SIGTERM (:class:`curate.procs.Interrupted`), ``interrupted``; a write
  that found the disk full is raised as one :class:`StoreError` naming the cause. An
  operation whose whole work is one transaction (an ingest) passes that transaction's
  cursor: its ``running`` row is inside it, and a failure rolls the row back with the
  rest.
* **Recorded** (:func:`record_run`): an operation whose work is a single short
  transaction (a vocabulary or published-counts import) inserts its row as ``ok``
  inside that transaction.
* **Interrupted**: a killed process leaves ``running``; the next run started by
  :func:`start_run` marks every such row ``interrupted`` (:func:`mark_interrupted`;
  DuckDB's file lock means no other writer can be alive then).

What goes in ``config`` is the caller's: by default ``{"stage": stage, "config":
config}`` (plus ``"options"`` when given: how it was executed, not part of the hash),
which is the shape views read (``json_extract_string(config, '$.config.model_id')``);
an ingest stores its flat input description. ``config_hash`` defaults to
:func:`config_hash` of ``(stage, config)``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import config_hash
from .errors import CurateError, StoreError
from .procs import Interrupted, as_interrupt

#: the longest ``message`` a failed or interrupted run records
if TYPE_CHECKING:
    from .store import Store


MESSAGE_CHARS = 1000
COUNTS = ("rows_in", "rows_out", "rows_rejected")

_INSERT = (
    "INSERT INTO runs (run_id, kind, stage, config, config_hash, status, rows_in, rows_out, rows_rejected, seconds, "
    "started_at, finished_at, curate_version, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def next_run_id(con: Any) -> int:
    run_id: int = con.execute("SELECT nextval('run_id_seq')").fetchall()[0][0]
    return run_id


def mark_interrupted(store_or_con: Any) -> int:
    """Mark every ``running`` row ``interrupted`` (its process died); returns how many."""
    con = getattr(store_or_con, "con", store_or_con)
    n: int = con.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchall()[0][0]
    if n:
        con.execute(
            "UPDATE runs SET status = 'interrupted', message = 'the process died before the run finished' "
            "WHERE status = 'running'"
        )
    return n


def _insert(con: Any, run_id: int, kind: str, stage: str, record: Any, chash: str, status: str, *,
            rows_in: int = 0, rows_out: int = 0, rows_rejected: int = 0, seconds: float | None = None,
            started_at: _dt.datetime | None = None, finished_at: _dt.datetime | None = None,
            message: str | None = None) -> None:
    # rows_* default to 0, as the table's own defaults do
    con.execute(_INSERT, [run_id, kind, stage, json.dumps(record, default=str), chash, status, int(rows_in),
                          int(rows_out), int(rows_rejected), seconds, started_at or _dt.datetime.now(), finished_at,
                          __version__, message])


def record_run(con: Any, kind: str, stage: str, record: Any, chash: str, *, rows_in: int = 0, rows_out: int = 0,
               started_at: _dt.datetime | None = None, message: str | None = None,
               run_id: int | None = None) -> int:
    """Insert a finished (``ok``) runs row on ``con``, a cursor holding the transaction
    that writes the result; ``record`` is the ``config`` JSON as stored. Returns the run id."""
    run_id = next_run_id(con) if run_id is None else run_id
    now = _dt.datetime.now()
    _insert(con, run_id, kind, stage, record, chash, "ok", rows_in=rows_in, rows_out=rows_out,
            started_at=started_at or now, finished_at=now, message=message)
    return run_id


class Run:
    """One ``runs`` row, inserted ``running`` on construction. Prefer :func:`start_run`,
    which also marks the row failed or interrupted on an exception.

    ``con``: where to insert the row (default the store's connection; a cursor holding an
    open transaction puts the row inside it). ``record``: the ``config`` JSON as stored
    (default ``{"stage", "config"[, "options"]}``); ``hash``: the config hash (default
    :func:`config_hash` of ``stage`` and ``config``); ``mark``: first mark rows of dead
    processes interrupted; ``t0``: when the work started (``time.perf_counter()``),
    for ``seconds``."""

    def __init__(self, store: Store, kind: str, stage: str, config: Any, *, options: dict[str, Any] | None = None,
                 record: Any = None, hash: str | None = None, con: Any = None, mark: bool = True,
                 t0: float | None = None):
        if store.read_only:
            raise CurateError(f"store {store.path} is open read-only")
        self.store, self.kind, self.stage, self.config = store, kind, stage, config
        self.con = con if con is not None else store.con
        if record is None:
            record = {"stage": stage, "config": config, **({"options": options} if options is not None else {})}
        self.record = record
        self.hash = hash if hash is not None else config_hash(stage, config)
        if mark:
            mark_interrupted(self.con)
        self.id: int = next_run_id(self.con)
        _insert(self.con, self.id, kind, stage, record, self.hash, "running")
        self.t0 = time.perf_counter() if t0 is None else t0
        #: the counts known so far (rows_in, rows_out, rows_rejected); written by progress, ok and fail
        self.counts: dict[str, int] = {}
        self.status = "running"

    @property
    def done(self) -> bool:
        """True once the run is ``ok`` (its result committed)."""
        return self.status == "ok"

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def _update(self, cur: Any, sets: dict[str, Any]) -> None:
        cols = ", ".join(f"{k} = ?" for k in sets)
        (cur if cur is not None else self.con).execute(f"UPDATE runs SET {cols} WHERE run_id = ?",
                                                       [*sets.values(), self.id])

    def _counts(self, counts: dict[str, int]) -> dict[str, int]:
        bad = sorted(set(counts) - set(COUNTS))
        if bad:
            raise TypeError(f"unknown run count(s) {', '.join(bad)}")  # a programming error
        self.counts.update({k: int(v) for k, v in counts.items()})
        return dict(self.counts)

    def progress(self, cur: Any = None, **counts: int) -> None:
        """Record the counts so far and the seconds; ``cur`` is the cursor of the
        transaction that commits the rows they count (a stage batch)."""
        self._update(cur, {**self._counts(counts), "seconds": self.seconds})

    def ok(self, cur: Any = None, *, message: str | None = None, seconds: float | None = None, **counts: int) -> None:
        """Mark the run ok with its counts; ``cur`` is the cursor holding the open write
        transaction of the result (None: the store's connection). ``seconds`` defaults
        to the time since the run started."""
        self._update(cur, {"status": "ok", **self._counts(counts),
                           "seconds": self.seconds if seconds is None else seconds,
                           "finished_at": _dt.datetime.now(), "message": message})
        self.status = "ok"

    def commit_ok(self, cur: Any, rows_in: int, rows_out: int, rows_rejected: int = 0,
                  message: str | None = None) -> None:
        """:meth:`ok` with all three counts, inside the transaction ``cur`` holds."""
        self.ok(cur, rows_in=rows_in, rows_out=rows_out, rows_rejected=rows_rejected, message=message)

    def fail(self, status: str, message: str) -> None:
        """Mark the run ``failed`` or ``interrupted`` (outside any transaction of the run)."""
        if status not in ("failed", "interrupted"):
            raise ValueError(f"a run fails as failed or interrupted, not {status!r}")  # a programming error
        self.store.con.execute(
            f"UPDATE runs SET status = ?, {''.join(f'{k} = ?, ' for k in self.counts)}seconds = ?, finished_at = ?, "
            "message = ? WHERE run_id = ?",
            [status, *self.counts.values(), self.seconds, _dt.datetime.now(), message[:MESSAGE_CHARS], self.id],
        )
        self.status = status

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor with an open transaction: everything written in it, or nothing."""
        cur = self.store.con.cursor()
        cur.begin()
        try:
            yield cur
            cur.commit()
        except BaseException:
            cur.rollback()
            if self.status == "ok":  # marked ok in the transaction that was rolled back
                self.status = "running"
            raise
        finally:
            cur.close()


@contextmanager
def start_run(store: Store, kind: str, stage: str, config: Any, *,
              interrupted: str = "interrupted; nothing was written", **kw: Any) -> Iterator[Run]:
    """A :class:`Run` (``kw``: its keyword arguments) for the body of the ``with``: an
    exception marks it ``failed`` and is re-raised; Ctrl-C marks it ``interrupted`` with
    the message ``interrupted`` (plus the signal's name when the CLI caught SIGINT or
    SIGTERM); a full disk (:func:`disk_full`) is raised as one :class:`StoreError`. A
    body that ends without :meth:`Run.ok` fails the run. A row that is no longer
    ``running`` in the store (the body marked it failed with its own message, or its
    result was committed before the exception) is left as it is."""
    run = Run(store, kind, stage, config, **kw)
    try:
        yield run
    except KeyboardInterrupt as e:
        if _running(run):
            how = f" ({e.args[0]})" if isinstance(e, Interrupted) else ""  # which signal
            run.fail("interrupted", f"{interrupted}{how}")
        raise
    except BaseException as e:
        intr = as_interrupt(e)  # e.g. DuckDB's "Query interrupted" for a signal during a query
        if intr is not None:
            if _running(run):
                run.fail("interrupted", f"{interrupted} ({intr.args[0]})")
            raise intr from None
        full = disk_full(e)
        if full is not None:
            with contextlib.suppress(Exception):  # the full disk may refuse this update too
                if _running(run):
                    run.fail("failed", f"the disk is full: {full}")
            raise StoreError(f"{stage}: the store's disk is full ({full}); the work committed before it is kept "
                             "and the store is usable: free space under "
                             f"{store.path} and run again to resume") from None
        if _running(run):
            run.fail("failed", f"{type(e).__name__}: {e}")
        raise
    if _running(run):
        run.fail("failed", "the operation finished without writing its result")


#: what the OS (and DuckDB, quoting it) says when a write finds the disk full
NO_SPACE = "No space left on device"


def disk_full(e: BaseException) -> str | None:
    """The cause, in a few words, when ``e`` is a write that found the disk full (an
    ``OSError`` ENOSPC, or a DuckDB error quoting it); else None."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"{NO_SPACE}: {e.filename}" if e.filename else NO_SPACE
    text = str(e)
    if NO_SPACE not in text:
        return None
    # DuckDB: 'TransactionException: Failed to commit: Could not write file "/x/catalog.duckdb.wal":
    # No space left on device' (or an IOException of the same shape); keep the file and the cause
    words = " ".join(text.split())
    m = re.search(r'([Ww]rite|[Ww]riting|[Ff]ile)[^"]*"([^"]+)"', words)
    return f"{NO_SPACE} writing {m.group(2)}" if m else NO_SPACE


def _running(run: Run) -> bool:
    """Whether the run's row is still ``running`` in the store (what was committed, not
    what the Python object believes: a transaction that marked it ok may have rolled back)."""
    try:
        got = run.store.con.execute("SELECT status FROM runs WHERE run_id = ?", [run.id]).fetchall()
    except Exception:  # noqa: BLE001 - the connection is unusable; the object's view is all there is
        return run.status == "running"
    if got and got[0][0] != "running":
        run.status = got[0][0]
    return bool(got) and got[0][0] == "running"
