"""Run bookkeeping for whole-set operations (vector writes, indexes, dedup, tags).

Every operation leaves one ``runs`` row: inserted as ``running`` before the work, then
set to ``ok`` *in the same transaction as the operation's writes* (so a result without
an ``ok`` run, or an ``ok`` run without its result, cannot exist), or to ``failed`` /
``interrupted`` with a message. A killed process leaves ``running``; the next writer
marks it ``interrupted`` (:func:`curate.runner.mark_interrupted`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from contextlib import contextmanager
from typing import Any, Iterator

from .. import __version__
from ..errors import CurateError
from ..store import Store


def config_hash(stage: str, config: dict[str, Any]) -> str:
    payload = json.dumps({"stage": stage, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Run:
    """One ``runs`` row. Use :func:`start_run`; call :meth:`commit_ok` inside the
    transaction that writes the result."""

    def __init__(self, store: Store, kind: str, stage: str, config: dict[str, Any]):
        from ..runner import mark_interrupted

        if store.read_only:
            raise CurateError(f"store {store.path} is open read-only")
        self.store, self.kind, self.stage, self.config = store, kind, stage, config
        self.hash = config_hash(stage, config)
        mark_interrupted(store)
        con = store.con
        self.id: int = con.execute("SELECT nextval('run_id_seq')").fetchall()[0][0]
        con.execute(
            "INSERT INTO runs (run_id, kind, stage, config, config_hash, status, started_at, curate_version) "
            "VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
            [self.id, kind, stage, json.dumps({"stage": stage, "config": config}, default=str), self.hash,
             _dt.datetime.now(), __version__],
        )
        self.t0 = time.perf_counter()
        self.done = False

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def commit_ok(self, cur, rows_in: int, rows_out: int, rows_rejected: int = 0, message: str | None = None) -> None:
        """Mark the run ok; ``cur`` is the cursor holding the open write transaction."""
        cur.execute(
            "UPDATE runs SET status = 'ok', rows_in = ?, rows_out = ?, rows_rejected = ?, seconds = ?, "
            "finished_at = ?, message = ? WHERE run_id = ?",
            [int(rows_in), int(rows_out), int(rows_rejected), self.seconds, _dt.datetime.now(), message, self.id],
        )
        self.done = True

    def fail(self, status: str, message: str) -> None:
        self.store.con.execute(
            "UPDATE runs SET status = ?, seconds = ?, finished_at = ?, message = ? WHERE run_id = ?",
            [status, self.seconds, _dt.datetime.now(), message[:1000], self.id],
        )

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
            self.done = False
            raise
        finally:
            cur.close()


@contextmanager
def start_run(store: Store, kind: str, stage: str, config: dict[str, Any]) -> Iterator[Run]:
    """Insert a ``running`` row; on an exception mark it failed (or interrupted) and re-raise."""
    run = Run(store, kind, stage, config)
    try:
        yield run
    except KeyboardInterrupt:
        run.fail("interrupted", "interrupted by the user; nothing was written")
        raise
    except BaseException as e:
        run.fail("failed", f"{type(e).__name__}: {e}")
        raise
    if not run.done:
        run.fail("failed", "the operation finished without writing its result")
