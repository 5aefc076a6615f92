"""`curate download`: img2dataset (in its own venv) against a local HTTP server on
127.0.0.1 serving generated images, a 404, a corrupt image, a non-image content type
and a slow response; every outcome recorded; resumable; the result ingested and linked.

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
