"""`curate download`: img2dataset (in its own venv) against a local HTTP server on
127.0.0.1 serving generated images, a 404, a corrupt image, a non-image content type
and a slow response; every outcome recorded; resumable; the result ingested and linked;
``--retry-failed`` fetches again what answered 503 or timed out, a 404 only when asked.

img2dataset pins pandas<3 and webdataset<0.3, so it never enters curate's venv: the
test uses ``$CURATE_IMG2DATASET_PYTHON``, else ``.venv-img2dataset/bin/python`` in the
repo, creating that venv (``pip install img2dataset==1.47.0``, about 30 s) when missing.
"""

from __future__ import annotations

import http.server
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import Store
from curate.download import download, find_python
from curate.errors import MissingExtraError
from curate.ingest import ingest

REPO = Path(__file__).resolve().parent.parent
IMG2DATASET = "img2dataset==1.47.0"


@pytest.fixture(scope="session")
def i2d_python() -> str:
    env = os.environ.get("CURATE_IMG2DATASET_PYTHON")
    if env:
        return env
    venv = REPO / ".venv-img2dataset"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", IMG2DATASET], check=True)
    return str(py)


def _jpeg(seed: int, size=(48, 36), fmt="JPEG") -> bytes:
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


ROUTES: dict[str, tuple[int, str, bytes, float]] = {}  # path -> (status, content type, body, delay)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, ctype, body, delay = ROUTES.get(self.path, (404, "text/plain", b"not found", 0.0))
        if delay:
            time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on the slow one
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    ROUTES.clear()
    ROUTES.update({
        "/a.jpg": (200, "image/jpeg", _jpeg(1), 0.0),
        "/b.jpg": (200, "image/jpeg", _jpeg(2, (30, 60)), 0.0),
        "/c.png": (200, "image/png", _jpeg(3, (40, 40), "PNG"), 0.0),
        "/d.jpg": (200, "image/jpeg", _jpeg(4), 0.0),
        "/corrupt.jpg": (200, "image/jpeg", b"\xff\xd8\xff\xe0 this is not a jpeg", 0.0),
        "/page.jpg": (200, "text/html", b"<html><body>a web page</body></html>", 0.0),
        "/slow.jpg": (200, "image/jpeg", _jpeg(5), 6.0),
    })
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_records_every_outcome_links_samples_and_resumes(tmp_path, server, i2d_python, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    names = ["a.jpg", "b.jpg", "c.png", "missing.jpg", "corrupt.jpg", "page.jpg", "slow.jpg", "d.jpg"]
    table = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [f"{server}/{n}" for n in names], "caption": [f"caption of {n}" for n in names]}),
                   table)
    opts = {"image_size": 32, "resize_mode": "border", "timeout": 2, "retries": 0, "number_sample_per_shard": 3,
            "thread_count": 4, "processes_count": 1}
    out = tmp_path / "images"
    with Store.init(tmp_path / "s") as store:
        ingest(store, "table", table, "web")
        assert store.con.execute("SELECT count(*) FROM samples WHERE image_shard IS NOT NULL").fetchall()[0][0] == 0
        res = download(store, out, source="web", img2dataset_python=i2d_python, options=opts)
        assert res.img2dataset_version == "1.47.0"
        assert sum(res.statuses.values()) == 8
        assert res.statuses["success"] == 4
        rows = dict(store.con.execute(
            "SELECT regexp_extract(url, '[^/]+$'), status || ': ' || coalesce(error_message, '') FROM downloads"
        ).fetchall())
        for n in ("a.jpg", "b.jpg", "c.png", "d.jpg"):
            assert rows[n].startswith("success"), rows
        assert "404" in rows["missing.jpg"]
        assert rows["corrupt.jpg"].startswith("failed_to_")
        assert rows["page.jpg"].startswith("failed_to_")
        assert rows["slow.jpg"].startswith("failed_to_download") and "timed out" in rows["slow.jpg"].lower()
        # the successes are linked to the URL table's samples (no new samples)
        assert store.count("samples") == 8
        linked = dict(store.con.execute(
            "SELECT regexp_extract(url, '[^/]+$'), image_shard IS NOT NULL AND image_key IS NOT NULL FROM samples"
        ).fetchall())
        assert linked == {n: n in ("a.jpg", "b.jpg", "c.png", "d.jpg") for n in names}
        (lst,) = out.glob("list-*")  # one img2dataset folder per url list
        assert res.output == lst
        assert sorted(p.name for p in lst.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
        before_rows = store.con.execute("SELECT * FROM downloads ORDER BY url").fetchall()
        before_links = store.con.execute("SELECT url, image_key FROM samples ORDER BY url").fetchall()

        # resume: a crash inside img2dataset leaves some shards finished and the store
        # untouched (the ingest never ran). Emulate it: drop shard 1 and what the ingest wrote.
        (lst / "00001_stats.json").unlink()
        (lst / "00001.tar").unlink()
        stamp = {p.name: p.stat().st_mtime_ns for p in lst.glob("*.tar")}
        store.execute("DELETE FROM downloads")
        store.execute("DELETE FROM download_shards")
        store.execute("UPDATE samples SET image_shard = NULL, image_key = NULL, sha256 = NULL, width = NULL, height = NULL")
        again = download(store, out, source="web", img2dataset_python=i2d_python, options=opts)
        assert again.output == lst  # the same pending list, so the same folder
        assert (lst / "00001_stats.json").exists() and (lst / "00001.tar").exists()
        assert all(lst.joinpath(n).stat().st_mtime_ns == t for n, t in stamp.items())  # finished shards kept
        assert store.count("samples") == 8 and sum(again.statuses.values()) == 8
        assert store.con.execute("SELECT url, image_key FROM samples ORDER BY url").fetchall() == before_links
        assert len(store.con.execute("SELECT * FROM downloads").fetchall()) == len(before_rows)

        # nothing pending: nothing runs
        done = download(store, out, source="web", img2dataset_python=i2d_python, options=opts)
        assert done.statuses == {} and "nothing to download" in done.summary()

        # the source grows: only its new samples are fetched, into a new folder; none twice
        more = tmp_path / "more.parquet"
        pq.write_table(pa.table({"url": [f"{server}/{n}#v2" for n in ("a.jpg", "b.jpg", "missing.jpg")],
                                 "caption": ["x", "y", "z"]}), more)
        ingest(store, "table", more, "web")
        grown = download(store, out, source="web", img2dataset_python=i2d_python, options=opts)
        assert grown.output != lst and sum(grown.statuses.values()) == 3
        per_url = store.con.execute("SELECT url, count(*) FROM downloads GROUP BY 1 HAVING count(*) > 1").fetchall()
        assert per_url == [] and store.count("downloads") == 11
        assert store.con.execute("SELECT count(*) FROM samples WHERE url LIKE '%#v2' AND image_key IS NOT NULL"
                                 ).fetchall()[0][0] == 2


def test_a_python_without_img2dataset_names_the_install(tmp_path, store):
    with pytest.raises(MissingExtraError) as e:
        find_python(sys.executable)
    assert "cannot import img2dataset" in str(e.value) and "--img2dataset-python" in str(e.value)


def test_retry_failed_fetches_again_only_what_said_try_later_and_404s_when_asked(tmp_path, server, i2d_python,
                                                                                  monkeypatch, capsys):
    from curate.cli import main
    from tests.test_cli import one_error_line

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    ROUTES["/busy1.jpg"] = ROUTES["/busy2.jpg"] = (503, "text/plain", b"try later", 0.0)
    ROUTES["/late.jpg"] = (200, "image/jpeg", _jpeg(7), 3.0)  # past the 1 s timeout
    names = ["a.jpg", "busy1.jpg", "busy2.jpg", "gone.jpg", "late.jpg", "corrupt.jpg"]  # gone.jpg: 404
    table = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [f"{server}/{n}" for n in names], "caption": names}), table)
    opts = {"image_size": 32, "timeout": 1, "retries": 0, "thread_count": 4, "processes_count": 1}
    out = tmp_path / "images"

    def outcomes(store) -> dict[str, list[str]]:
        got: dict[str, list[str]] = {}
        for name, status, err in store.con.execute(
                "SELECT regexp_extract(url, '[^/]+$'), status, coalesce(error_message, '') FROM downloads "
                "ORDER BY run_id").fetchall():
            got.setdefault(name, []).append(status if status == "success" else f"{status}: {err}")
        return got

    def linked(store) -> set[str]:
        return {r[0] for r in store.con.execute(
            "SELECT regexp_extract(url, '[^/]+$') FROM samples WHERE image_key IS NOT NULL").fetchall()}

    with Store.init(tmp_path / "s") as store:
        ingest(store, "table", table, "web")
        first = download(store, out, source="web", img2dataset_python=i2d_python, options=opts)
        assert first.statuses == {"success": 1, "failed_to_download": 4, "failed_to_resize": 1}
        got = outcomes(store)
        assert got["busy1.jpg"] == ["failed_to_download: HTTP Error 503: Service Unavailable"]
        assert got["gone.jpg"] == ["failed_to_download: HTTP Error 404: Not Found"]
        assert "timed out" in got["late.jpg"][0]

        # the server recovers; a retry fetches the 503s and the timeout, not the 404 or the bad image
        ROUTES["/busy1.jpg"] = ROUTES["/busy2.jpg"] = (200, "image/jpeg", _jpeg(8), 0.0)
        ROUTES["/late.jpg"] = (200, "image/jpeg", _jpeg(7), 0.0)
        ROUTES["/gone.jpg"] = (200, "image/jpeg", _jpeg(9), 0.0)  # it would answer now, but a 404 is not retried
        capsys.readouterr()
        retry = download(store, out, source="web", img2dataset_python=i2d_python, options=opts, retry_failed=True,
                         progress=True)
        assert "img2dataset" in capsys.readouterr().err  # the bar, forced on
        assert retry.retried == {"503": 2, "timeout": 1} and retry.not_retried == {"404": 1, "resize": 1}
        assert retry.statuses == {"success": 3} and retry.output != first.output
        assert retry.summary().startswith("retried 3 urls whose last attempt failed (503: 2, timeout: 1; "
                                          "not retried: 404: 1, resize: 1); downloaded 3 urls into ")
        got = outcomes(store)
        assert got["busy1.jpg"][1:] == got["busy2.jpg"][1:] == got["late.jpg"][1:] == ["success"]
        assert len(got["gone.jpg"]) == len(got["corrupt.jpg"]) == len(got["a.jpg"]) == 1  # not fetched again
        assert linked(store) == {"a.jpg", "busy1.jpg", "busy2.jpg", "late.jpg"}
        assert store.count("samples") == 6  # linked, not added

        none = download(store, out, source="web", img2dataset_python=i2d_python, options=opts, retry_failed=True)
        assert none.statuses == {} and none.summary().startswith(
            "nothing to retry: no sample of source 'web' has a last attempt that failed with timeout, 5xx, 429; "
            "not retried: 404: 1, resize: 1 (output ")

    # asked for by status, through the CLI; not a terminal, so no bar: one summary line
    cli = ["download", "--store", str(tmp_path / "s"), "--source", "web", "--out", str(out),
           "--img2dataset-python", i2d_python, "--image-size", "32", "--timeout", "1", "--option", "retries=0"]
    assert main([*cli, "--retry-failed", "--retry-status", "404"]) == 0
    stdout, stderr = capsys.readouterr()
    assert stderr == "" and len(stdout.splitlines()) == 1
    assert stdout.startswith("retried 1 urls whose last attempt failed (404: 1; not retried: resize: 1); downloaded 1 ")
    with Store.open(tmp_path / "s", read_only=True) as store:
        assert outcomes(store)["gone.jpg"][1:] == ["success"] and "gone.jpg" in linked(store)

    assert main([*cli, "--retry-failed", "--retry-status", "teapot"]) == 2
    assert "retry status 'teapot' is not one of: NNN (an HTTP status, e.g. 404), 4xx, 5xx, timeout" in \
        one_error_line(capsys.readouterr().err)
    assert main([*cli, "--retry-status", "404"]) == 2
    assert one_error_line(capsys.readouterr().err) == "error: --retry-status needs --retry-failed"
