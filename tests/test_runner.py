"""The stage contract and runner: results, resume, config hashes, process pool, SIGKILL,
Ray, and a full disk (a tmpfs the test mounts)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pytest

from curate import ConfigError, CurateError, Store
from curate.ingest import ingest
from curate.runner import RunOptions, run_stage
from curate.stages.base import Stage
from curate.stages.caption_stats import CaptionStats

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def laion_store(store, laion_file, cc3m_file):
    ingest(store, "table", laion_file, "laion", preset="laion")
    ingest(store, "table", cc3m_file, "cc3m", preset="cc3m")
    return store


def stats_rows(store: Store) -> list[tuple]:
    return sorted(store.con.execute(
        "SELECT caption_id::VARCHAR, words, chars, stage, config_hash FROM caption_stats").fetchall())


def test_caption_stats_match_python_oracle(laion_store):
    res = run_stage(laion_store, CaptionStats(), RunOptions(batch_size=3000))
    assert res.status == "ok" and res.rows_in == res.rows_out == 25_832
    got = dict(laion_store.con.execute(
        "SELECT c.text, (s.words, s.chars) FROM captions c JOIN caption_stats s USING (caption_id)").fetchall())
    assert len(got) > 25_000
    for text, (words, chars) in got.items():
        assert words == len(text.split()), text
        assert chars == len(text), text


def test_second_run_processes_nothing_and_limit_resumes(laion_store):
    partial = run_stage(laion_store, CaptionStats(), RunOptions(batch_size=1000, limit=4500))
    assert partial.rows_in == 4500
    rest = run_stage(laion_store, CaptionStats(), RunOptions(batch_size=1000))
    assert rest.pending_before == 25_832 - 4500 and rest.rows_in == 25_832 - 4500
    again = run_stage(laion_store, CaptionStats(), RunOptions(batch_size=1000))
    assert again.rows_in == 0
    n, distinct = laion_store.con.execute(
        "SELECT count(*), count(DISTINCT caption_id) FROM caption_stats").fetchall()[0]
    assert n == distinct == 25_832
    runs = laion_store.con.execute(
        "SELECT rows_in, status FROM runs WHERE kind = 'stage' ORDER BY run_id").fetchall()
    assert runs == [(4500, "ok"), (25_832 - 4500, "ok"), (0, "ok")]


def test_new_captions_are_scored_incrementally(store, laion_file, cc3m_file):
    ingest(store, "table", laion_file, "laion", preset="laion")
    first = run_stage(store, CaptionStats())
    ingest(store, "table", cc3m_file, "cc3m", preset="cc3m")
    second = run_stage(store, CaptionStats())
    assert (first.rows_in, second.rows_in) == (9_999, 15_833)


def test_process_pool_gives_the_same_rows_as_inline(tmp_path, laion_file):
    stores = []
    for name, workers in (("inline", 1), ("pool", 2)):
        s = Store.init(tmp_path / name)
        ingest(s, "table", laion_file, "laion", preset="laion")
        run_stage(s, CaptionStats(), RunOptions(batch_size=2000, workers=workers))
        stores.append(stats_rows(s))
        s.close()
    assert stores[0] == stores[1] and len(stores[0]) == 9_999


@dataclasses.dataclass(frozen=True)
class Truncate(Stage):
    """A test stage with configuration: the first ``n`` characters, upper-cased or not."""

    name: ClassVar[str] = "test.truncate"
    version: ClassVar[int] = 1
    reads: ClassVar[tuple[str, ...]] = ("text",)
    output_table: ClassVar[str] = "test_truncate"
    output_schema: ClassVar[pa.Schema] = pa.schema([("head", pa.string())])
    n: int = 5
    upper: bool = False
    drop_one: bool = False

    def __call__(self, batch):
        texts = [t[: self.n] for t in batch.column("text").to_pylist()]
        if self.upper:
            texts = [t.upper() for t in texts]
        ids = batch.column("caption_id")
        if self.drop_one:
            return pa.table({"caption_id": ids.slice(1), "head": texts[1:]})
        return pa.table({"caption_id": ids, "head": texts})


def test_other_config_writes_beside_old_rows(laion_store):
    a = run_stage(laion_store, Truncate(n=3))
    b = run_stage(laion_store, Truncate(n=3, upper=True))
    assert a.config_hash != b.config_hash and a.rows_in == b.rows_in == 25_832
    per_hash = dict(laion_store.con.execute("SELECT config_hash, count(*) FROM test_truncate GROUP BY 1").fetchall())
    assert per_hash == {a.config_hash: 25_832, b.config_hash: 25_832}
    assert run_stage(laion_store, Truncate(n=3)).rows_in == 0


def test_stage_that_loses_rows_fails_loudly_and_keeps_earlier_batches(laion_store):
    with pytest.raises(CurateError, match="one row per input key"):
        run_stage(laion_store, Truncate(drop_one=True), RunOptions(batch_size=30_000))
    status, message = laion_store.con.execute(
        "SELECT status, message FROM runs ORDER BY run_id DESC LIMIT 1").fetchall()[0]
    assert status == "failed" and "one row per input key" in message
    assert laion_store.count("test_truncate") == 0


def test_config_validation():
    with pytest.raises(ConfigError, match=r"config: unknown key\(s\) nn; valid: drop_one, n, upper"):
        Truncate.from_config({"nn": 3})
    with pytest.raises(ConfigError, match="config.n: expected an integer, got str"):
        Truncate.from_config({"n": "3"})
    with pytest.raises(ConfigError, match="config.upper: expected true or false"):
        Truncate.from_config({"upper": 1})
    assert Truncate.from_config({"n": 7}).n == 7
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        RunOptions(batch_size=0)


def test_changed_output_schema_is_refused(laion_store):
    laion_store.con.execute("CREATE TABLE test_truncate (caption_id UUID, head INTEGER)")
    with pytest.raises(ConfigError, match="needs a new version"):
        run_stage(laion_store, Truncate())


def _curate(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "curate.cli", *args], env=env, text=True, **kw)


def test_sigkill_mid_stage_then_rerun_equals_uninterrupted_run(tmp_path, cc3m_file):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f"""
[[ingest]]
format = "table"
path = "{cc3m_file}"
source = "cc3m"
preset = "cc3m"

[[stage]]
name = "text.caption_stats.v1"
batch_size = 25
""")
    killed = tmp_path / "killed"
    proc = _curate("-vv", "run", str(pipeline), "--store", str(killed), "--no-progress",
                   stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    committed = 0
    deadline = time.time() + 120
    assert proc.stderr is not None
    for line in proc.stderr:
        if "committed batch" in line:
            committed += 1
            if committed == 40:
                os.kill(proc.pid, signal.SIGKILL)
                break
        assert time.time() < deadline, "the stage never got going"
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    with Store.open(killed) as s:
        partial = s.count("caption_stats")
        assert 40 * 25 <= partial < 15_833, partial

    rerun = _curate("run", str(pipeline), "--store", str(killed), "--no-progress",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"({15_833 - partial:,} were pending)" in out

    clean = tmp_path / "clean"
    once = _curate("run", str(pipeline), "--store", str(clean), "--no-progress",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert once.wait(timeout=300) == 0

    def rows(path):
        with Store.open(path) as s:
            return sorted(s.con.execute(
                "SELECT caption_id::VARCHAR, words, chars, stage, config_hash FROM caption_stats").fetchall()), \
                s.con.execute("SELECT status FROM runs WHERE kind = 'stage' ORDER BY run_id").fetchall(), \
                sorted(s.con.execute("SELECT uid::VARCHAR, url FROM samples").fetchall())

    k_rows, k_runs, k_samples = rows(killed)
    c_rows, _, c_samples = rows(clean)
    assert len(k_rows) == len(c_rows) == 15_833
    assert k_rows == c_rows
    assert k_samples == c_samples
    assert k_runs == [("interrupted",), ("ok",)]


@dataclasses.dataclass(frozen=True)
class DieOnMarker(Stage):
    """A test stage whose worker process dies (os._exit) on the batch holding the caption
    named by $CURATE_TEST_DIE_AT (read in the worker, so the config hash does not change)."""

    name: ClassVar[str] = "test.die"
    version: ClassVar[int] = 1
    reads: ClassVar[tuple[str, ...]] = ("text",)
    input_order: ClassVar[str | None] = "caption_id"
    output_table: ClassVar[str] = "test_die"
    output_schema: ClassVar[pa.Schema] = pa.schema([("n", pa.int32())])

    def __call__(self, batch):
        if os.environ.get("CURATE_TEST_DIE_AT") in {str(x) for x in batch.column("caption_id").to_pylist()}:
            os._exit(3)
        return pa.table({"caption_id": batch.column("caption_id"), "n": pa.array([1] * batch.num_rows, pa.int32())})


def test_a_dead_worker_is_a_clear_error_and_the_rerun_completes(store, laion_file, monkeypatch):
    ingest(store, "table", laion_file, "laion", preset="laion")
    ids = [str(r[0]) for r in store.con.execute("SELECT caption_id FROM captions ORDER BY caption_id").fetchall()]
    monkeypatch.setenv("CURATE_TEST_DIE_AT", ids[5_500])
    with pytest.raises(CurateError, match=r"a worker process died .*run again to resume"):
        run_stage(store, DieOnMarker(), RunOptions(batch_size=1000, workers=2))
    status, message = store.con.execute("SELECT status, message FROM runs ORDER BY run_id DESC LIMIT 1").fetchall()[0]
    assert status == "failed" and "worker process died" in message
    done = store.count("test_die")
    assert done <= 5_000 and done % 1000 == 0
    monkeypatch.delenv("CURATE_TEST_DIE_AT")
    rest = run_stage(store, DieOnMarker(), RunOptions(batch_size=1000, workers=2))
    assert rest.rows_in == 9_999 - done
    assert store.con.execute("SELECT count(*), count(DISTINCT caption_id) FROM test_die").fetchall()[0] == (9_999, 9_999)


# -- Ray executor (real Ray, started on this machine) --------------------------------
@dataclasses.dataclass(frozen=True)
class Boom(Stage):
    """A test stage that raises on the batch holding the caption named by ``at``."""

    name: ClassVar[str] = "test.boom"
    version: ClassVar[int] = 1
    reads: ClassVar[tuple[str, ...]] = ("text",)
    input_order: ClassVar[str | None] = "caption_id"
    output_table: ClassVar[str] = "test_boom"
    output_schema: ClassVar[pa.Schema] = pa.schema([("n", pa.int32())])
    at: str = ""

    def __call__(self, batch):
        if self.at in {str(x) for x in batch.column("caption_id").to_pylist()}:
            raise ValueError(f"boom at {self.at}")
        return pa.table({"caption_id": batch.column("caption_id"), "n": pa.array([2] * batch.num_rows, pa.int32())})


@pytest.fixture
def ray_session():
    """A local Ray started by the test, as a user's script would; run_stage finds it
    running and leaves it."""
    import logging

    import ray

    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def test_ray_actors_give_the_same_rows_as_inline(tmp_path, laion_file, ray_session):
    got = {}
    for name, opts in (("inline", RunOptions(batch_size=2000)),
                       ("ray", RunOptions(batch_size=2000, workers=2, executor="ray"))):
        with Store.init(tmp_path / name) as s:
            ingest(s, "table", laion_file, "laion", preset="laion")
            a = run_stage(s, CaptionStats(), opts)
            b = run_stage(s, Truncate(n=4, upper=True), opts)  # the configured stage object reaches the actors
            assert a.rows_in == b.rows_in == 9_999
            got[name] = (stats_rows(s), sorted(s.con.execute(
                "SELECT caption_id::VARCHAR, head FROM test_truncate").fetchall()))
            opts_row = s.con.execute("SELECT config->'options'->>'executor' FROM runs WHERE kind = 'stage' "
                                     "ORDER BY run_id DESC LIMIT 1").fetchall()[0][0]
            assert opts_row == ("ray" if name == "ray" else "local")
    assert got["inline"] == got["ray"]
    assert len(got["ray"][0]) == 9_999 and all(h == h.upper() and len(h) <= 4 for _, h in got["ray"][1])
    assert ray_session.is_initialized()  # a Ray the caller started is left running


def test_a_stage_error_in_a_ray_actor_is_raised_as_itself(store, laion_file, ray_session):
    ingest(store, "table", laion_file, "laion", preset="laion")
    ids = [str(r[0]) for r in store.con.execute("SELECT caption_id FROM captions ORDER BY caption_id").fetchall()]
    with pytest.raises(ValueError, match=f"boom at {ids[4_200]}"):
        run_stage(store, Boom(at=ids[4_200]), RunOptions(batch_size=1000, workers=2, executor="ray"))
    status, message = store.con.execute("SELECT status, message FROM runs ORDER BY run_id DESC LIMIT 1").fetchall()[0]
    assert status == "failed" and "boom" in message
    assert store.count("test_boom") <= 4_000 and store.count("test_boom") % 1000 == 0


def test_ray_started_for_a_run_a_dead_actor_is_a_clear_error_and_the_rerun_completes(store, laion_file, monkeypatch):
    import ray

    assert not ray.is_initialized()
    ingest(store, "table", laion_file, "laion", preset="laion")
    ids = [str(r[0]) for r in store.con.execute("SELECT caption_id FROM captions ORDER BY caption_id").fetchall()]
    monkeypatch.setenv("CURATE_TEST_DIE_AT", ids[5_500])  # Ray starts inside run_stage and passes it on
    with pytest.raises(CurateError, match=r"a Ray worker died .*run again to resume"):
        run_stage(store, DieOnMarker(), RunOptions(batch_size=1000, workers=2, executor="ray"))
    assert not ray.is_initialized()  # the Ray started for the run is stopped, also on failure
    done = store.count("test_die")
    assert done <= 5_000 and done % 1000 == 0
    monkeypatch.delenv("CURATE_TEST_DIE_AT")
    rest = run_stage(store, DieOnMarker(), RunOptions(batch_size=1000, workers=2, executor="ray"))
    assert rest.rows_in == 9_999 - done and not ray.is_initialized()
    assert store.con.execute("SELECT count(*), count(DISTINCT caption_id) FROM test_die").fetchall()[0] == (9_999, 9_999)


def test_executor_options_are_validated():
    with pytest.raises(ConfigError, match="executor must be one of local, ray, got 'spark'"):
        RunOptions(executor="spark")
    with pytest.raises(ConfigError, match="need executor"):
        RunOptions(ray_address="auto")
    with pytest.raises(ConfigError, match="gpus_per_worker must be 0 or more"):
        RunOptions(executor="ray", gpus_per_worker=-1)


def test_a_stage_error_in_a_fresh_process_is_raised_as_itself(tmp_path, laion_file):
    """Regression: the runner's ``except`` named ``concurrent.futures.process``, which a
    fresh interpreter has not imported, so any in-process stage error surfaced as an
    AttributeError about that module instead of itself."""
    script = f"""
import sys
from curate import Store
from curate.ingest import ingest
from curate.runner import RunOptions, run_stage
from tests.test_runner import Boom
with Store.init({str(tmp_path / 's')!r}) as s:
    ingest(s, "table", {str(laion_file)!r}, "laion", preset="laion")
    first = str(s.con.execute("SELECT min(caption_id) FROM captions").fetchall()[0][0])
    try:
        run_stage(s, Boom(at=first), RunOptions(batch_size=1000))
    except ValueError as e:
        print("raised:", e)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("raised: boom at "), out.stdout + out.stderr[-2000:]


def test_the_ray_executor_without_ray_fails_before_any_work(laion_store, monkeypatch):
    from curate.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    runs_before = laion_store.con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
    with pytest.raises(MissingExtraError, match=r"executor = \"ray\" needs the Python package 'ray'.*pip install 'curate\[ray\]'"):
        run_stage(laion_store, CaptionStats(), RunOptions(executor="ray", workers=2))
    assert laion_store.con.execute("SELECT count(*) FROM runs").fetchall()[0][0] == runs_before
    assert not laion_store.has_table("caption_stats")



# -- a full disk ------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs mounted for the test (we run as root in CI); skipped with the reason
    where mounting is refused."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {(r.stderr or r.stdout).strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_stage_on_a_full_disk_is_one_store_error_and_the_store_stays_usable(small_disk, tmp_path, cc3m_file, capsys):
    from curate.cli import main
    from tests.test_cli import one_error_line

    store = small_disk / "s"
    with Store.init(store) as s:
        ingest(s, "table", cc3m_file, "cc3m", preset="cc3m")
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    with open(filler, "wb") as f:  # leave 300 KB: a few batches fit, then the disk is full
        os.posix_fallocate(f.fileno(), 0, free - 300 * 1024)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[[stage]]\nname = "text.caption_stats.v1"\nbatch_size = 1000\n')

    assert main(["run", str(pipeline), "--store", str(store), "--no-progress"]) == 4
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: text.caption_stats.v1: the store's disk is full (No space left on device writing "
                           f"{store / 'catalog.duckdb'}"), line
    assert "run again to resume" in line
    with Store.open(store, read_only=True) as s:  # readable on the full disk; the run says why it stopped
        (status, message, rows_in), = s.con.execute("SELECT status, message, rows_in FROM runs WHERE kind = 'stage'"
                                                    ).fetchall()
        committed = s.count("caption_stats")
    assert status == "failed" and message.startswith("the disk is full: No space left on device")
    assert rows_in == committed and 0 < committed < 15_833 and committed % 1000 == 0

    filler.unlink()
    assert main(["check", "--store", str(store)]) == 0
    assert main(["run", str(pipeline), "--store", str(store), "--no-progress"]) == 0
    assert f"({15_833 - committed:,} were pending)" in capsys.readouterr().out
    with Store.init(tmp_path / "clean") as clean:
        ingest(clean, "table", cc3m_file, "cc3m", preset="cc3m")
        run_stage(clean, CaptionStats(), RunOptions(batch_size=1000))
        want = stats_rows(clean)
    with Store.open(store, read_only=True) as s:
        assert stats_rows(s) == want
