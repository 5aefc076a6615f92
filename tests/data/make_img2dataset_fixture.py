"""Regenerate ``tests/data/img2dataset/``: real img2dataset output, downloaded from a
local HTTP server on 127.0.0.1 (no other network address is contacted).

img2dataset is not a dependency of curate's test environment (it pins ``pandas<3`` and
``webdataset<0.3``), so run this script from a throwaway venv::

    python3 -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset pillow
    /tmp/i2d/bin/python tests/data/make_img2dataset_fixture.py

It replaces the whole ``tests/data/img2dataset/`` folder with:

* ``input/urls_uid.parquet``: url, caption, uid (32 hex, DataComp style), similarity;
  13 rows (the cases below).
* ``input/urls_nouid.parquet``: url, caption; the first 6 rows of the same list.
* ``webdataset/``: ``urls_uid`` downloaded with ``output_format="webdataset"``, 4
  samples per shard, so 4 shards ``0000{0,1,2,3}.tar|.parquet|_stats.json``.
* ``parquet/``: ``urls_nouid`` with ``output_format="parquet"`` (image bytes in the
  ``jpg`` column), 4 per shard, so 2 shards.
* ``files/``: the first 3 rows of ``urls_nouid`` with ``output_format="files"``, 2 per
  shard, so ``00000/`` and ``00001/`` image folders.
* ``README.md``: the img2dataset, pyarrow, webdataset and Pillow versions used (outside
  the output folders: img2dataset reads every ``*.json`` in an output folder as stats).

The cases (by input row): valid JPEG and PNG images of several sizes, one of them not
square (``original_width`` differs from ``width`` after the border resize to 16 px);
a 404; bytes that are not an image; an HTML page (``text/html``); two URLs serving
byte-identical images; a response with ``X-Robots-Tag: noai``; an image below
``min_image_size``; a refused connection (port 1 on 127.0.0.1); a success with an empty
caption; a non-ASCII caption. The URLs contain the server's random port, so a re-run
changes the URLs (and the uids derived from them) but not the shape of the fixture.

img2dataset's multiprocessing distributor uses ``spawn``: everything that runs lives
under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import tempfile
import threading
from pathlib import Path

# Loopback only: no proxy for the local server, no update checks, no telemetry.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ["WANDB_MODE"] = "disabled"

OUT = Path(__file__).resolve().parent / "img2dataset"


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files, with ``X-Robots-Tag: noai`` on /noai.jpg and quiet logs."""

    def end_headers(self) -> None:
        if self.path.endswith("noai.jpg"):
            self.send_header("X-Robots-Tag", "noai")
        super().end_headers()

    def log_message(self, *args) -> None:
        pass


def make_images(root: Path) -> None:
    from PIL import Image

    def save(name: str, size: tuple[int, int], color: tuple[int, int, int], fmt: str) -> None:
        img = Image.new("RGB", size, color)
        # a diagonal so the images are not flat colour
        for i in range(min(size)):
            img.putpixel((i, i), (255 - color[0], 255 - color[1], 255 - color[2]))
        img.save(root / name, format=fmt)

    save("red.jpg", (32, 32), (200, 30, 30), "JPEG")
    save("green.png", (32, 32), (30, 200, 30), "PNG")
    save("wide.jpg", (48, 24), (30, 30, 200), "JPEG")
    save("yellow.jpg", (24, 32), (220, 220, 40), "JPEG")
    save("tall.png", (16, 40), (120, 60, 160), "PNG")
    save("noai.jpg", (32, 32), (90, 90, 90), "JPEG")
    save("tiny.jpg", (4, 4), (10, 120, 120), "JPEG")
    save("same_a.jpg", (32, 32), (250, 140, 0), "JPEG")
    shutil.copyfile(root / "same_a.jpg", root / "same_b.jpg")  # byte-identical
    (root / "corrupt.jpg").write_bytes(b"these bytes are not an image\n" * 4)
    (root / "page.html").write_text("<html><body><p>not an image</p></body></html>\n")


def main() -> None:
    from importlib.metadata import version

    import pyarrow as pa
    import pyarrow.parquet as pq
    from img2dataset import download

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        www = tmp / "www"
        www.mkdir()
        make_images(www)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        rows = [  # (url path, caption); "refused" is a port where nothing listens
            ("red.jpg", "a red square with a dark diagonal"),
            ("green.png", "a green square, saved as PNG"),
            ("missing.jpg", "this image does not exist"),          # 404
            ("wide.jpg", "a wide blue rectangle"),                 # 48x24, not square
            ("corrupt.jpg", "bytes that are not an image"),        # failed_to_resize
            ("page.html", "an HTML page, not an image"),           # text/html
            ("same_a.jpg", "an orange square"),                    # byte-identical to same_b
            ("same_b.jpg", "the same orange square at another URL"),
            ("noai.jpg", "an image whose server says noai"),       # X-Robots-Tag: noai
            ("tiny.jpg", "a 4x4 image, below min_image_size"),     # failed_to_resize
            ("tall.png", ""),                                      # success with an empty caption
            ("yellow.jpg", "un carré jaune — légende non ASCII"),
            ("refused", "a server that refuses the connection"),   # connection refused
        ]
        urls = ["http://127.0.0.1:1/refused.jpg" if p == "refused" else f"{base}/{p}" for p, _ in rows]
        captions = [c for _, c in rows]
        uids = [f"{(i + 1) * 0x1111_2222_3333_4444_5555_6666_7777_8888 % (1 << 128):032x}" for i in range(len(rows))]
        similarity = [round(0.2 + 0.05 * i, 3) for i in range(len(rows))]

        if OUT.exists():
            shutil.rmtree(OUT)
        (OUT / "input").mkdir(parents=True)
        with_uid = OUT / "input" / "urls_uid.parquet"
        no_uid = OUT / "input" / "urls_nouid.parquet"
        pq.write_table(pa.table({"url": urls, "caption": captions, "uid": uids, "similarity": similarity}), with_uid)
        pq.write_table(pa.table({"url": urls[:6], "caption": captions[:6]}), no_uid)
        files_in = tmp / "urls_files.parquet"
        pq.write_table(pa.table({"url": urls[:3], "caption": captions[:3]}), files_in)

        common = dict(
            input_format="parquet", url_col="url", caption_col="caption", image_size=16, resize_mode="border",
            processes_count=1, thread_count=4, timeout=5, retries=0, min_image_size=8, enable_wandb=False,
            # not incremental_mode="overwrite": in 1.47.0 it deletes the _tmp folder it has just made
        )
        download(url_list=str(with_uid), output_folder=str(OUT / "webdataset"), output_format="webdataset",
                 number_sample_per_shard=4, save_additional_columns=["uid", "similarity"], **common)
        download(url_list=str(no_uid), output_folder=str(OUT / "parquet"), output_format="parquet",
                 number_sample_per_shard=4, **common)
        download(url_list=str(files_in), output_folder=str(OUT / "files"), output_format="files",
                 number_sample_per_shard=2, **common)
        server.shutdown()

    for d in ("webdataset", "parquet", "files"):
        shutil.rmtree(OUT / d / "_tmp", ignore_errors=True)
    versions = ", ".join(f"{p} {version(p)}" for p in ("img2dataset", "pyarrow", "webdataset", "pillow"))
    (OUT / "README.md").write_text(
        "Real img2dataset output made by `tests/data/make_img2dataset_fixture.py` "
        f"(see its docstring to re-run it) with {versions}.\n"
    )
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total:,} bytes) with {versions}")


if __name__ == "__main__":
    main()
