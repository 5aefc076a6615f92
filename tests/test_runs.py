"""The run lifecycle (curate/runs.py): the one writer of ``runs`` rows. A run is
``running`` while it works, ``ok`` only together with its result, ``failed`` or
``interrupted`` (with a message) otherwise; a row inside a caller's transaction goes
with that transaction; a dead process's rows are marked interrupted by the next run."""

from __future__ import annotations

import json
import re

import pytest

from curate.errors import CurateError
from curate.runs import MESSAGE_CHARS, Run, config_hash, mark_interrupted, record_run, start_run

from .conftest import REPO

COLUMNS = "kind, stage, config, config_hash, status, rows_in, rows_out, rows_rejected, message"


def row(store, run_id):
    got = store.con.execute(f"SELECT {COLUMNS}, seconds, finished_at FROM runs WHERE run_id = ?",
                            [run_id]).fetchall()
    return got[0] if got else None


def test_exactly_one_place_inserts_into_runs():
    hits = []
    for p in sorted((REPO / "curate").rglob("*.py")):
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"insert\s+into\s+runs\b", line, re.I):
                hits.append((p.relative_to(REPO).as_posix(), i))
    assert [h[0] for h in hits] == ["curate/runs.py"], hits


def test_ok_run_commits_its_counts_with_the_result(store):
    store.con.execute("CREATE TABLE result (x INTEGER)")
    with start_run(store, "similarity", "test.thing.v1", {"a": 1}) as run:
        assert row(store, run.id)[4] == "running"
        with run.transaction() as w:
            w.execute("INSERT INTO result VALUES (1), (2)")
            run.commit_ok(w, 5, 2, 1, "two rows")
    kind, stage, cfg, h, status, rin, rout, rrej, msg, seconds, finished = row(store, run.id)
    assert (kind, stage, status, rin, rout, rrej, msg) == ("similarity", "test.thing.v1", "ok", 5, 2, 1, "two rows")
    assert json.loads(cfg) == {"stage": "test.thing.v1", "config": {"a": 1}}
    assert h == config_hash("test.thing.v1", {"a": 1})
    assert seconds is not None and finished is not None


def test_options_are_stored_but_not_hashed(store):
    with start_run(store, "stage", "test.thing.v1", {"a": 1}, options={"batch_size": 7}) as run:
        run.ok(rows_in=3, rows_out=3)
    _, _, cfg, h, status, rin, rout, rrej, *_ = row(store, run.id)
    assert list(json.loads(cfg)) == ["stage", "config", "options"]
    assert json.loads(cfg)["options"] == {"batch_size": 7}
    assert h == config_hash("test.thing.v1", {"a": 1})
    assert (status, rin, rout, rrej) == ("ok", 3, 3, 0)


def test_an_exception_fails_the_run_and_rolls_its_result_back(store):
    store.con.execute("CREATE TABLE result (x INTEGER)")
    with pytest.raises(ValueError, match="bad data"):
        with start_run(store, "similarity", "test.thing.v1", {}) as run:
            with run.transaction() as w:
                w.execute("INSERT INTO result VALUES (1)")
                run.commit_ok(w, 1, 1)
                raise ValueError("bad data")
    assert row(store, run.id)[4:9:4] == ("failed", "ValueError: bad data")
    assert store.con.execute("SELECT count(*) FROM result").fetchall() == [(0,)]


def test_ctrl_c_interrupts_the_run(store):
    with pytest.raises(KeyboardInterrupt):
        with start_run(store, "dedup", "test.thing.v1", {}, interrupted="stopped; run again") as run:
            raise KeyboardInterrupt
    assert row(store, run.id)[4:9:4] == ("interrupted", "stopped; run again")


def test_a_body_that_writes_no_result_fails_the_run(store):
    with start_run(store, "similarity", "test.thing.v1", {}) as run:
        pass
    assert row(store, run.id)[4:9:4] == ("failed", "the operation finished without writing its result")


def test_a_run_failed_by_its_body_keeps_its_own_message_and_counts(store):
    with pytest.raises(CurateError, match="worker died"):
        with start_run(store, "stage", "test.thing.v1", {}) as run:
            run.progress(rows_in=10, rows_out=9)
            run.counts.update(rows_in=20, rows_out=18)
            run.fail("failed", "a worker process died (oom)")
            raise CurateError("worker died")
    assert row(store, run.id)[4:9] == ("failed", 20, 18, 0, "a worker process died (oom)")


def test_long_failure_messages_are_cut(store):
    with pytest.raises(ValueError):
        with start_run(store, "similarity", "test.thing.v1", {}) as run:
            raise ValueError("x" * 5000)
    assert len(row(store, run.id)[8]) == MESSAGE_CHARS


def test_a_dead_process_is_marked_interrupted_by_the_next_run(store):
    dead = Run(store, "similarity", "test.thing.v1", {})  # never finished: the process "died"
    assert row(store, dead.id)[4] == "running"
    with start_run(store, "similarity", "test.other.v1", {}) as run:
        assert row(store, dead.id)[4:9:4] == ("interrupted", "the process died before the run finished")
        run.ok(rows_in=0, rows_out=0)
    assert mark_interrupted(store) == 0


def test_a_row_inside_the_callers_transaction_goes_with_it(store):
    """The ingest guarantee: its running row is inside its one transaction."""
    con = store.con
    con.begin()
    run = Run(store, "ingest", "ingest.test", {"format": "test"}, record={"format": "test"}, hash="h", con=con,
              mark=False)
    run.ok(con, rows_in=1, rows_out=1, rows_rejected=0, message="{}")
    con.rollback()
    assert row(store, run.id) is None
    con.begin()
    run = Run(store, "ingest", "ingest.test", {"format": "test"}, record={"format": "test"}, hash="h", con=con,
              mark=False)
    run.ok(con, rows_in=4, rows_out=3, rows_rejected=1, message="{}")
    con.commit()
    kind, stage, cfg, h, status, rin, rout, rrej, msg, *_ = row(store, run.id)
    assert (json.loads(cfg), h, status, rin, rout, rrej, msg) == ({"format": "test"}, "h", "ok", 4, 3, 1, "{}")


def test_a_recorded_run_is_ok_in_the_result_transaction(store):
    con = store.con
    con.begin()
    rid = record_run(con, "concepts", "concepts.test", {"v": 1}, "abc", rows_in=3, rows_out=2)
    con.rollback()
    assert row(store, rid) is None
    con.begin()
    rid = record_run(con, "concepts", "concepts.test", {"v": 1}, "abc", rows_in=3, rows_out=2, message="note")
    con.commit()
    kind, stage, cfg, h, status, rin, rout, rrej, msg, seconds, finished = row(store, rid)
    assert (kind, stage, json.loads(cfg), h, status, rin, rout, rrej, msg) == \
        ("concepts", "concepts.test", {"v": 1}, "abc", "ok", 3, 2, 0, "note")
    assert seconds is None and finished is not None


def test_a_read_only_store_refuses_a_run(tmp_path):
    from curate import Store

    Store.init(tmp_path / "s").close()
    with Store.open(tmp_path / "s", read_only=True) as s:
        with pytest.raises(CurateError, match="read-only"):
            with start_run(s, "similarity", "test.thing.v1", {}):
                pass


def test_sigterm_during_a_duckdb_query_interrupts_the_run(store):
    """DuckDB runs the signal handler during a query and raises ``RuntimeError: Query
    interrupted`` instead of the handler's exception; the run is still ``interrupted``
    by SIGTERM and the caller gets the interrupt, not the RuntimeError."""
    import os
    import signal
    import threading

    from curate.procs import Interrupted, handle_signals

    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or what an earlier test's ray.init left
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    with handle_signals(), pytest.raises(Interrupted) as e:
        with start_run(store, "stage", "test.thing.v1", {}, interrupted="stopped; run again") as run:
            timer.start()
            store.con.execute("SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 3").fetchall()
    timer.join()
    assert e.value.exit_code == 143
    assert row(store, run.id)[4:9:4] == ("interrupted", "stopped; run again (SIGTERM)")
    assert signal.getsignal(signal.SIGTERM) is before  # handle_signals put the old handler back
