"""`curate embed` and `curate download` end to end through ``curate.cli.main`` (in-process,
``main(argv) -> exit code``), on the tiny seeded open_clip model and real image files of
tests/test_clip.py, and the local HTTP server plus real img2dataset (in its own venv) of
tests/test_download.py. The CLI's numbers are checked against the Python API run on a
second store, and its download outcomes against what the server serves."""

from __future__ import annotations

import collections
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import tests.test_download as td
from curate import Store
from curate.ingest import ingest
from curate.runner import RunOptions
from curate.stages.clip import embed
from tests.test_cli import curate as cli
from tests.test_cli import one_error_line
from tests.test_clip import REPO, make_coco, scores, tiny, tiny_stage  # noqa: F401 - `tiny` is a fixture
from tests.test_download import i2d_python, server  # noqa: F401 - fixtures


# -- curate embed ---------------------------------------------------------------------------
def embed_argv(store: Path, tiny: dict, *more: str) -> list:
    return ["embed", "--store", store, "--model", tiny["model"], "--pretrained", tiny["pretrained"],
            "--model-config", tiny["model_config"], "--model-id", tiny["model_id"], "--decode-workers", "0",
            "--batch-size", "5", "--no-progress", *more]


BAD = {"corrupt.jpg": ("undecodable", "OSError: Truncated File Read"),
       "text.jpg": ("undecodable", "UnidentifiedImageError: cannot identify image file")}


def test_cli_embed_equals_the_python_api_and_a_rerun_does_nothing(tmp_path, tiny, capsys):
    coco, files = make_coco(tmp_path / "imgs")
    store = tmp_path / "cli"
    rc, out, _ = cli(capsys, "ingest", "coco", coco, "--source", "coco", "--store", store)
    assert rc == 0 and "24 captions added" in out

    rc, out, err = cli(capsys, *embed_argv(store, tiny))
    assert rc == 0, err
    assert "clip.score.v1: 24 rows in, 24 rows out (24 were pending)" in out
    assert "8 images (" in out and "24 texts (" in out
    assert "vector set 'clip.tiny-seed1234.image': 8 image vectors of dim 32" in out
    assert "vector set 'clip.tiny-seed1234.text.human': 24 text vectors of dim 32" in out
    # the clip.status table: 16 ok captions, 6 undecodable (3 bad files), 2 of the missing file
    cells = [[c.strip(" │") for c in line.split("┆")] for line in out.splitlines() if line.count("┆") == 4]
    shown = {c[1]: (c[2], c[3]) for c in cells if c[0] == "tiny/seed1234"}  # status: (captions, samples)
    assert shown == {"ok": ("16", "8"), "undecodable": ("6", "3"), "image not found": ("2", "1")}, out

    with Store.open(store, read_only=True) as s:
        got = scores(s)
        by_file = s.con.execute(
            "SELECT s.image_path, k.status, k.detail, count(*) FROM clip_scores k JOIN samples s USING (uid) "
            "GROUP BY ALL").fetchall()
        cli_config = s.con.execute("SELECT DISTINCT model, config_hash FROM clip_scores").fetchall()
    assert len(got) == 24
    statuses = {Path(p).name: (st, d, n) for p, st, d, n in by_file}
    assert len(statuses) == 12 and all(n == 2 for *_, n in statuses.values())  # one row per caption
    for path in files:
        assert statuses[Path(path).name][:2] == ("ok", None)
    for name, want in BAD.items():
        assert statuses[name][:2] == want
    assert statuses["truncated.jpg"][0] == "undecodable" and "Truncated" in statuses["truncated.jpg"][1]
    assert statuses["missing.jpg"][:2] == ("image not found", f"{tmp_path / 'imgs' / 'missing.jpg'}: no such file")
    assert all((score is None) == (status != "ok") for score, status, _ in got.values())

    # the Python API on a second store: the same rows, scores, statuses and config hash
    with Store.init(tmp_path / "api") as s:
        ingest(s, "coco", coco, "coco")
        embed(s, tiny_stage(tiny), RunOptions(batch_size=5, progress=False))
        want = scores(s)
        api_config = s.con.execute("SELECT DISTINCT model, config_hash FROM clip_scores").fetchall()
    assert got.keys() == want.keys()
    for cid, (score, status, detail) in want.items():
        assert got[cid][1:] == (status, detail)
        assert (score is None and got[cid][0] is None) or abs(got[cid][0] - score) < 1e-5, (cid, got[cid], score)
    assert cli_config == api_config and cli_config[0][0] == "tiny/seed1234"

    # a rerun has nothing to do and writes no vector set
    rc, out, err = cli(capsys, *embed_argv(store, tiny, "--batch-size", "7"))
    assert rc == 0, err
    assert "clip.score.v1: 0 rows in, 0 rows out (0 were pending)" in out
    assert "0 images (" in out and "vector set" not in out
    with Store.open(store, read_only=True) as s:
        assert scores(s) == got
        assert s.con.execute("SELECT status FROM runs WHERE kind = 'stage' ORDER BY run_id").fetchall() == \
            [("ok",), ("ok",)]

    # --images-only: clip.embed_image.v1 over the 12 samples, into clip_images
    rc, out, err = cli(capsys, *embed_argv(store, tiny, "--images-only"))
    assert rc == 0, err
    assert "clip.embed_image.v1: 12 rows in, 12 rows out (12 were pending)" in out and "0 texts" in out
    with Store.open(store, read_only=True) as s:
        assert dict(s.con.execute("SELECT status, count(*) FROM clip_images GROUP BY 1").fetchall()) == \
            {"ok": 8, "undecodable": 3, "image not found": 1}


def test_cli_embed_bad_inputs_fail_in_one_line_before_any_work(tmp_path, tiny, capsys):
    coco, _ = make_coco(tmp_path / "imgs", n_good=2)
    store = tmp_path / "s"
    assert cli(capsys, "ingest", "coco", coco, "--source", "coco", "--store", store)[0] == 0

    # a --model-config that does not exist is a click usage error (checked before curate runs)
    argv = embed_argv(store, tiny)
    argv[argv.index("--model-config") + 1] = tmp_path / "nope.json"
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert "Error: Invalid value for '--model-config'" in err and "nope.json' does not exist" in err
    assert "Traceback" not in err

    # curate's own checks: one `error:` line each, exit code 2 (ConfigError)
    cases = {
        "--pretrained": (str(tmp_path / "missing.bin"), "checkpoint '", "does not exist"),
        "--device": ("tpu", "device must be auto, cpu, cuda or cuda:N", "'tpu'"),
    }
    for flag, (value, *phrases) in cases.items():
        argv = embed_argv(store, tiny, flag, value)
        rc, out, err = cli(capsys, *argv)
        line = one_error_line(err)
        assert rc == 2 and all(p in line for p in phrases), (flag, line)
    argv = embed_argv(store, tiny)
    argv[argv.index("--model") + 1] = "no-such-clip"
    argv.remove("--model-config")
    argv.remove(tiny["model_config"])
    rc, _, err = cli(capsys, *argv)
    assert rc == 2 and "open_clip has no model 'no-such-clip'" in one_error_line(err)

    # a store that does not exist: StoreError, and nothing is created
    rc, _, err = cli(capsys, *embed_argv(tmp_path / "nowhere", tiny))
    assert rc == 4 and "no store at" in one_error_line(err)
    assert not (tmp_path / "nowhere").exists()

    # none of the failures wrote anything
    with Store.open(store, read_only=True) as s:
        assert "clip_scores" not in s.tables()
        assert s.con.execute("SELECT count(*) FROM runs WHERE kind = 'stage'").fetchall()[0][0] == 0
    assert not (store / "vectors").exists() or not list((store / "vectors").rglob("*.*"))


class Payload:
    """Unpickling this runs a shell command: what a malicious "weights file" holds."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_cli_embed_refuses_weights_it_cannot_load_safely_in_one_line(tmp_path, tiny, capsys):
    """Before: a pickle payload, a truncated or corrupt file, an empty file or a file of
    other weights ended in an UnpicklingError/RuntimeError/EOFError traceback."""
    import torch

    coco, _ = make_coco(tmp_path / "imgs", n_good=2)
    store = tmp_path / "s"
    assert cli(capsys, "ingest", "coco", coco, "--source", "coco", "--store", store)[0] == 0
    sentinel = tmp_path / "PAYLOAD-RAN"
    good = Path(tiny["pretrained"]).read_bytes()
    files = {
        "payload.pkl": pickle.dumps(Payload(sentinel)),  # a bare pickle stream
        "truncated.bin": good[: len(good) // 2],
        "corrupt.bin": bytes(range(256)) * 40,
        "empty.bin": b"",
        "junk.safetensors": b"\xff" * 64,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"state_dict": Payload(sentinel)}, tmp_path / "payload.bin")  # torch's own zip format
    torch.save(torch.zeros(3), tmp_path / "tensor.bin")
    want = {
        "payload.pkl": "safe loading (torch.load with weights_only=True) refused it",
        "payload.bin": "refused it (Trying to load unsupported GLOBAL posix.system",
        "truncated.bin": "(truncated or corrupt?): PytorchStreamReader failed reading zip archive",
        "corrupt.bin": "safe loading (torch.load with weights_only=True) refused it",
        "empty.bin": "it is empty or ends too early",
        "junk.safetensors": "(truncated or corrupt?): Error while deserializing header",
        "tensor.bin": "it holds a Tensor, not a model's state dict",
    }
    for name, phrase in want.items():
        path = tmp_path / name
        rc, out, err = cli(capsys, *embed_argv(store, tiny, "--pretrained", path))
        line = one_error_line(err)
        assert rc == 3 and line.startswith(f"error: {path} is not a loadable weights file") and phrase in line, \
            (name, line)
    assert not sentinel.exists()  # nothing in a weights file ever runs
    for path, what in ((tmp_path / "missing.bin", "does not exist"), (tmp_path / "imgs", "is not a file")):
        rc, _, err = cli(capsys, *embed_argv(store, tiny, "--pretrained", path))
        assert rc == 2 and f"checkpoint '{path}' {what}" in one_error_line(err)
    with Store.open(store, read_only=True) as s:  # all refused before any work
        assert "clip_scores" not in s.tables()
        assert s.con.execute("SELECT count(*) FROM runs WHERE kind = 'stage'").fetchall() == [(0,)]

    # a real state dict of other weights: it loads safely, but does not fit the model (found
    # when the model is built, so the run is recorded as failed with the same line)
    torch.save({"not.a.clip.weight": torch.zeros(3)}, tmp_path / "other.bin")
    rc, _, err = cli(capsys, *embed_argv(store, tiny, "--pretrained", tmp_path / "other.bin"))
    line = one_error_line(err)
    assert rc == 3 and "other.bin holds weights that do not fit model tiny-clip-test: " in line, line
    assert re.search(r"\d+ missing keys \(e\.g\. [a-z_.]+, ", line) and "1 unexpected keys (e.g. not.a.clip.weight)" in line
    with Store.open(store, read_only=True) as s:
        assert s.con.execute("SELECT status, message LIKE 'InputError: %do not fit model%' FROM runs "
                             "WHERE kind = 'stage'").fetchall() == [("failed", True)]
    # the same with worker processes: the worker's setup error comes back as the same one
    # line (an initializer that raised used to break the pool with a traceback)
    rc, _, err = cli(capsys, *embed_argv(store, tiny, "--pretrained", tmp_path / "other.bin"), "--workers", "2")
    line = one_error_line(err)
    assert rc == 3 and "other.bin holds weights that do not fit model tiny-clip-test: " in line, line


def test_the_documented_delete_embeds_failed_images_again(tmp_path, tiny, capsys):
    """docs/clip.md (Limits) said to run a DELETE through `curate sql`, which opens the
    store read-only and refuses it; the command it gives now works: after the missing
    image arrives, the rows that failed are embedded again."""
    from tests.test_clip import _image_bytes

    coco, _ = make_coco(tmp_path / "imgs", n_good=2)
    store = tmp_path / "my-store"
    assert cli(capsys, "ingest", "coco", coco, "--source", "coco", "--store", store)[0] == 0
    assert cli(capsys, *embed_argv(store, tiny))[0] == 0
    rc, _, err = cli(capsys, "sql", "DELETE FROM clip_scores WHERE status <> 'ok'", "--store", store)
    assert rc == 6 and "read-only" in one_error_line(err)

    doc = (REPO / "docs" / "clip.md").read_text(encoding="utf-8")
    commands = re.findall(r"^python -c .*DELETE FROM clip_scores.*$", doc, flags=re.M)
    assert len(commands) == 1, commands
    (tmp_path / "imgs" / "missing.jpg").write_bytes(_image_bytes(7))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "-c", commands[0].replace("python", f"'{sys.executable}'", 1)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rc, out, err = cli(capsys, *embed_argv(store, tiny))
    assert rc == 0, err
    assert "clip.score.v1: 8 rows in, 8 rows out (8 were pending)" in out  # the missing image and 3 bad files
    with Store.open(store, read_only=True) as s:
        st = dict(s.con.execute("SELECT status, count(*) FROM clip_scores GROUP BY 1").fetchall())
        assert st == {"ok": 6, "undecodable": 6}
        missing_uid = s.con.execute("SELECT uid::VARCHAR FROM samples WHERE image_path LIKE '%missing.jpg'"
                                    ).fetchall()[0][0]
        import curate.vectors as V

        img = V.open_set(s, "clip.tiny-seed1234.image")
        assert img.count == 3 and missing_uid in img.ids().to_pylist()


# -- curate download ------------------------------------------------------------------------
class CountingRoutes(dict):
    """The test server's routes, counting the requests each path gets."""

    def __init__(self, routes: dict):
        super().__init__(routes)
        self.hits: collections.Counter = collections.Counter()

    def get(self, key, default=None):
        self.hits[key] += 1
        return super().get(key, default)


DL_OPTS = ["--image-size", "32", "--timeout", "2", "--threads", "4", "--shard-size", "3", "--option", "retries=0"]
GOOD_IMAGES = ("a.jpg", "b.jpg", "c.png", "d.jpg")


def _outcomes(s: Store, source: str) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in s.con.execute(
        "SELECT regexp_extract(url, '[^/]+$'), status, error_message FROM downloads WHERE source = ?",
        [source]).fetchall()}


def _tables(s: Store) -> dict:
    return {t: sorted(s.con.execute(f"SELECT * EXCLUDE (run_id) FROM {t}").fetchall(), key=repr)
            for t in ("samples", "captions", "downloads", "download_shards")}


def test_cli_download_store_samples_and_a_url_file_then_resume(tmp_path, server, i2d_python, capsys, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    routes = CountingRoutes(td.ROUTES)
    monkeypatch.setattr(td, "ROUTES", routes)
    store = tmp_path / "s"
    py = ["--img2dataset-python", i2d_python]

    # (a) the samples of a store source: every outcome recorded, successes linked to them
    names = ["a.jpg", "b.jpg", "c.png", "missing.jpg", "corrupt.jpg", "page.jpg", "d.jpg"]
    table = tmp_path / "web.parquet"
    pq.write_table(pa.table({"url": [f"{server}/{n}" for n in names], "caption": [f"caption of {n}" for n in names]}),
                   table)
    assert cli(capsys, "ingest", "table", table, "--source", "web", "--store", store)[0] == 0
    rc, _, err = cli(capsys, "download", "--store", store, "--source", "nope", "--out", tmp_path / "x", *py)
    assert rc == 2 and "source 'nope' has no samples with a url; sources: web" in one_error_line(err)
    # options curate sets itself, and malformed ones, fail in one line before img2dataset runs
    rc, _, err = cli(capsys, "download", "--store", store, "--source", "web", "--out", tmp_path / "x", *py,
                     "--option", f"url_list={tmp_path}")
    assert rc == 2 and "url_list are set by curate download" in one_error_line(err)
    rc, _, err = cli(capsys, "download", "--store", store, "--source", "web", "--out", tmp_path / "x", *py,
                     "--option", "retries")
    assert rc == 2 and "'retries' should be KEY=VALUE" in one_error_line(err)
    assert not routes.hits and not (tmp_path / "x").exists()

    web = tmp_path / "web-images"
    rc, out, err = cli(capsys, "download", "--store", store, "--source", "web", "--out", web, *py, *DL_OPTS)
    assert rc == 0, err
    assert f"downloaded 7 urls into {web}{os.sep}list-" in out and "success: 4" in out and "img2dataset 1.47.0" in out
    assert "4 linked; 7 downloads; 3 failed downloads; 3 shards" in out
    assert "HTTP Error 404: Not Found" in out  # the error table
    assert all(routes.hits[f"/{n}"] == 1 for n in names), routes.hits
    with Store.open(store, read_only=True) as s:
        rows = _outcomes(s, "web")
        assert rows.keys() == set(names)
        for n in GOOD_IMAGES:
            assert rows[n] == ("success", None)
        assert rows["missing.jpg"] == ("failed_to_download", "HTTP Error 404: Not Found")
        for n in ("corrupt.jpg", "page.jpg"):
            assert rows[n][0].startswith("failed_to_") and rows[n][1], rows[n]
        assert s.count("samples") == 7  # linked, no new samples
        linked = dict(s.con.execute(
            "SELECT regexp_extract(url, '[^/]+$'), image_shard IS NOT NULL AND image_key IS NOT NULL FROM samples"
        ).fetchall())
        assert linked == {n: n in GOOD_IMAGES for n in names}
        web_rows = rows
        before = _tables(s)
    shards = {p.name: p.stat().st_mtime_ns for p in web.glob("list-*/*.tar")}
    assert sorted(shards) == ["00000.tar", "00001.tar", "00002.tar"]

    # the same command again: every sample has a download row, so nothing runs
    routes.hits.clear()
    rc, out, err = cli(capsys, "download", "--store", store, "--source", "web", "--out", web, *py, *DL_OPTS)
    assert rc == 0, err
    assert "nothing to download: every sample of source 'web' with a url has a download row" in out
    assert not routes.hits, routes.hits
    assert {p.name: p.stat().st_mtime_ns for p in web.glob("list-*/*.tar")} == shards
    with Store.open(store, read_only=True) as s:
        assert _tables(s) == before

    # (b) a URL file (url, caption; no uid) under a new source: successes become its samples
    names_b = ["b.jpg", "gone.jpg", "page.jpg", "c.png"]
    url_file = tmp_path / "more.parquet"
    pq.write_table(pa.table({"url": [f"{server}/{n}" for n in names_b],
                             "caption": [f"another caption of {n}" for n in names_b]}), url_file)
    files = tmp_path / "file-images"
    routes.hits.clear()
    rc, out, err = cli(capsys, "download", "--store", store, "--source", "files", "--urls", url_file, "--out", files,
                       *py, *DL_OPTS)
    assert rc == 0, err
    assert f"downloaded 4 urls into {files}" in out and "success: 2" in out
    assert "ingest img2dataset into source 'files'" in out and "2 added, 0 already present, 0 rejected; 2 captions added" in out
    assert all(routes.hits[f"/{n}"] == 1 for n in names_b), routes.hits
    with Store.open(store, read_only=True) as s:
        rows = _outcomes(s, "files")
        assert rows.keys() == set(names_b)
        assert rows["b.jpg"] == rows["c.png"] == ("success", None)
        assert rows["gone.jpg"] == ("failed_to_download", "HTTP Error 404: Not Found")
        assert rows["page.jpg"][0].startswith("failed_to_") and rows["page.jpg"][1]
        new = s.con.execute(
            "SELECT regexp_extract(s.url, '[^/]+$'), s.image_shard, c.text, c.variant FROM samples s "
            "JOIN captions c USING (uid) WHERE s.source = 'files' ORDER BY 1").fetchall()
        assert [(n, text, v) for n, _, text, v in new] == \
            [("b.jpg", "another caption of b.jpg", "raw"), ("c.png", "another caption of c.png", "raw")]
        assert all(shard.startswith(str(files)) for _, shard, _, _ in new)
        assert _outcomes(s, "web") == web_rows  # the other source is untouched
        assert s.count("samples") == 9
        before = _tables(s)

    routes.hits.clear()
    rc, out, err = cli(capsys, "download", "--store", store, "--source", "files", "--urls", url_file, "--out", files,
                       *py, *DL_OPTS)
    assert rc == 0, err
    assert "0 added" in out and "0 captions added" in out and "0 downloads" in out
    assert not routes.hits, routes.hits
    with Store.open(store, read_only=True) as s:
        assert _tables(s) == before



def test_cli_download_a_csv_url_file_without_uid(tmp_path, server, i2d_python, capsys, monkeypatch):
    """A CSV url file with url and caption only: curate asks img2dataset only for the
    columns the file has (before the fix it asked for `uid` and img2dataset failed with
    KeyError after its workers started)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    store = tmp_path / "s"
    assert cli(capsys, "init", "--store", store)[0] == 0
    csv = tmp_path / "urls.csv"
    csv.write_text("url,caption\n" + "".join(f"{server}/{n},caption of {n}\n" for n in ("a.jpg", "missing.jpg")),
                   encoding="utf-8")
    rc, out, err = cli(capsys, "download", "--store", store, "--source", "csvfile", "--urls", csv,
                       "--out", tmp_path / "imgs", "--img2dataset-python", i2d_python, *DL_OPTS)
    assert rc == 0, err
    assert "success: 1" in out and "1 added, 0 already present, 0 rejected; 1 captions added" in out
    with Store.open(store, read_only=True) as s:
        rows = _outcomes(s, "csvfile")
        assert rows["a.jpg"] == ("success", None) and rows["missing.jpg"][0] == "failed_to_download"
        assert s.execute("SELECT text FROM captions").fetchall() == [("caption of a.jpg",)]
    bad = tmp_path / "nourl.csv"
    bad.write_text("link,caption\nx,y\n", encoding="utf-8")
    rc, _, err = cli(capsys, "download", "--store", store, "--source", "csvfile", "--urls", bad,
                     "--out", tmp_path / "imgs2", "--img2dataset-python", i2d_python)
    assert rc != 0 and "nourl.csv has no column 'url'; columns: link, caption" in err
