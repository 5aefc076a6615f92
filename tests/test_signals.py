"""SIGTERM and Ctrl-C give the guarantees of SIGKILL (the rerun ends with exactly the
rows of an uninterrupted run, no process left) plus one ``interrupted`` line on stderr,
no traceback, the run row ``interrupted``, and exit code 143 (SIGTERM) or 130 (SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil

from curate import Store
from curate.knowledge.ner import check_pipeline
from curate.registry import build_stage
from curate.runner import RunOptions, run_stage
from tests.test_download import i2d_python, server  # noqa: F401 - fixtures
from tests.test_processes import (  # noqa: F401 - small_store is a fixture
    MODEL,
    cmdline,
    curate,
    left_after,
    make_small_store,
    small_store,
    start_download,
)


def stop_after(proc: subprocess.Popen, batches: int, sig: int,
               group: bool = False) -> tuple[list[psutil.Process], list[str], str]:
    """Send ``sig`` once ``batches`` batches are committed (to the process group, as a
    terminal's Ctrl-C does, when ``group``); the descendants then, their command lines
    and the rest of stderr."""
    assert proc.stderr is not None
    seen = 0
    for line in proc.stderr:
        seen += "committed batch" in line
        if seen == batches:
            break
    assert seen == batches, f"the command ended after {seen} batches: rc {proc.wait()}"
    kids = psutil.Process(proc.pid).children(recursive=True)
    cmds = [cmdline(k) for k in kids]
    (os.killpg if group else os.kill)(proc.pid, sig)
    rest = proc.stderr.read()
    proc.wait(60)
    return kids, cmds, "".join(ln + "\n" for ln in rest.splitlines() if "committed batch" not in ln)


def table(path, sql: str) -> list[tuple]:
    with Store.open(path, read_only=True) as s:
        return sorted(s.con.execute(sql).fetchall())


def runs(path) -> list[tuple]:
    with Store.open(path, read_only=True) as s:
        return s.con.execute("SELECT kind, status, message FROM runs WHERE kind = 'stage' ORDER BY run_id").fetchall()


STATS = "SELECT caption_id::VARCHAR, words, chars, config_hash FROM caption_stats"


def test_sigterm_mid_stage_is_one_line_143_and_the_rerun_equals_an_uninterrupted_run(small_store, tmp_path, cc3m_file):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[[stage]]\nname = "text.caption_stats.v1"\nbatch_size = 5\n')
    proc = curate("-vv", "run", str(pipeline), "--store", str(small_store), "--no-progress",
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    _, _, err = stop_after(proc, 20, signal.SIGTERM)
    assert proc.returncode == 143
    assert err == ("interrupted (SIGTERM): what was committed is kept; run the same command again to resume\n")
    assert runs(small_store) == [("stage", "interrupted", "interrupted; run again to resume (SIGTERM)")]
    partial = len(table(small_store, STATS))
    assert 100 <= partial < 600  # 20 batches of 5 committed, not the batch in flight twice

    again = curate("run", str(pipeline), "--store", str(small_store), "--no-progress",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert f"({600 - partial:,} were pending)" in out

    clean = make_small_store(tmp_path / "clean", cc3m_file)
    with Store.open(clean) as s:
        run_stage(s, build_stage("text.caption_stats.v1", {}), RunOptions(batch_size=5))
    assert table(small_store, STATS) == table(clean, STATS)
    assert [r[1] for r in runs(small_store)] == ["interrupted", "ok"]


def test_ctrl_c_of_a_two_worker_knowledge_score_is_one_line_130_no_process_left_and_resumes(small_store, tmp_path,
                                                                                              cc3m_file):
    check_pipeline(MODEL)
    proc = curate("-vv", "knowledge", "score", "--store", str(small_store), "--workers", "2", "--model", MODEL,
                  "--batch-size", "20", "--no-progress", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                  start_new_session=True)
    kids, cmds, err = stop_after(proc, 3, signal.SIGINT, group=True)  # Ctrl-C: the whole group gets SIGINT
    assert proc.returncode == 130
    assert err == "interrupted (SIGINT): what was committed is kept; run the same command again to resume\n"
    assert sum("spawn_main" in c for c in cmds) == 2  # the two spaCy workers
    assert left_after(kids, 5) == []
    assert runs(small_store) == [("stage", "interrupted", "interrupted; run again to resume (SIGINT)")]

    knowledge = ("SELECT caption_id::VARCHAR, status, detail, entities::VARCHAR, n_entities, n_knowledge, n_numeric, "
                 "words, density, score, config_hash FROM caption_knowledge")
    partial = len(table(small_store, knowledge))
    assert 60 <= partial < 600
    stage = build_stage("knowledge.spacy_ner.v1", {"model": MODEL})
    with Store.open(small_store) as s:  # the rest in-process: the rows do not depend on the executor
        assert run_stage(s, stage, RunOptions(batch_size=100)).pending_before == 600 - partial
    clean = make_small_store(tmp_path / "clean", cc3m_file)
    with Store.open(clean) as s:
        run_stage(s, stage, RunOptions(batch_size=100))
    got = table(small_store, knowledge)
    assert len(got) == len({r[0] for r in got}) == 600
    assert got == table(clean, knowledge)
    assert [r[1] for r in runs(small_store)] == ["interrupted", "ok"]


def test_sigterm_of_a_download_stops_img2dataset_and_its_group_in_one_line(tmp_path, server, i2d_python):
    proc, kids = start_download(tmp_path, server, i2d_python)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err == "interrupted (SIGTERM): what was committed is kept; run the same command again to resume\n"
    assert left_after(kids, 5) == []
