"""An ingest killed with SIGKILL halfway through its appends leaves the store as it was,
and running it again gives exactly the rows of an ingest that was never interrupted.

DuckDB writes the row groups of a large append into the database file before the
transaction commits, so the catalog file grows while the ingest runs. The test kills the
process once the file has grown by 70% of what the whole ingest adds: samples are
written and captions are being written, and nothing is committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from curate import Store
from curate.ingest import ingest

CLI = [sys.executable, "-c", "from curate.cli import main; main()"]


def _big_parquet(laion: Path, out: Path, copies: int) -> int:
    """Real LAION alt-text, each URL made distinct per copy (the file repeats one URL)."""
    duckdb.execute(f"""COPY (
        SELECT URL || '?copy=' || i AS URL, TEXT
        FROM read_parquet('{laion}'), range({copies}) t(i)
    ) TO '{out}' (FORMAT parquet)""")
    return duckdb.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0]


def _contents(store_dir: Path) -> dict[str, object]:
    """Every table as an order-free digest (row count plus a sum of row hashes) and
    the runs table without its timings."""
    with Store.open(store_dir, read_only=True) as s:
        out: dict[str, object] = {}
        for t in ("samples", "captions", "rejects", "downloads"):
            cols = [c for c in s.columns(t) if c != "run_id"]
            sel = ", ".join(f'"{c}"' for c in cols)
            out[t] = s.con.execute(f"SELECT count(*), sum(hash(({sel}))) FROM {t}").fetchall()[0]
        out["runs"] = s.con.execute(
            "SELECT stage, status, rows_in, rows_out, rows_rejected FROM runs ORDER BY run_id").fetchall()
    return out


def _ingest_cli(store_dir: Path, path: Path) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["ingest", "table", str(path), "--store", str(store_dir), "--preset", "laion",
                                   "--source", "big"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_during_an_ingest_loses_and_doubles_nothing(tmp_path, laion_file, capsfusion_file):
    big = tmp_path / "big.parquet"
    n = _big_parquet(laion_file, big, copies=120)
    assert n == 1_200_000
    capsfusion = capsfusion_file

    # The reference: the same two ingests, never interrupted.
    ref = tmp_path / "ref"
    with Store.init(ref) as s:
        ingest(s, "capsfusion", capsfusion, "cf")
    empty_size = (ref / "catalog.duckdb").stat().st_size
    done = _ingest_cli(ref, big)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    full_size = (ref / "catalog.duckdb").stat().st_size
    assert full_size > empty_size + 50_000_000, (empty_size, full_size)

    killed = tmp_path / "killed"
    with Store.init(killed) as s:
        ingest(s, "capsfusion", capsfusion, "cf")
    before = _contents(killed)
    start = (killed / "catalog.duckdb").stat().st_size
    threshold = start + (full_size - empty_size) * 7 // 10
    proc = _ingest_cli(killed, big)
    deadline = time.time() + 300
    while (killed / "catalog.duckdb").stat().st_size < threshold:
        assert proc.poll() is None, "the ingest ended before it could be killed: " + proc.stderr.read()
        assert time.time() < deadline, "the catalog never grew"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "catalog.duckdb").stat().st_size >= threshold  # rows were written, uncommitted

    # Reopened, the store holds what it held before: no sample, caption, reject or run row.
    assert _contents(killed) == before
    check = subprocess.run(CLI + ["check", "--store", str(killed)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr

    # Run again: exactly the rows of the uninterrupted ingest, none lost or doubled.
    again = _ingest_cli(killed, big)
    out2, err2 = again.communicate(timeout=300)
    assert again.returncode == 0, err2
    assert out2.split("; ")[:3] == out.split("; ")[:3]  # records read, samples and captions added
    assert _contents(killed) == _contents(ref)
    with Store.open(killed, read_only=True) as s:
        assert s.con.execute("SELECT count(*) FROM samples WHERE source = 'big'").fetchall()[0][0] == n - 120
        assert s.con.execute("SELECT count(*) - count(DISTINCT uid) FROM samples").fetchall()[0][0] == 0
