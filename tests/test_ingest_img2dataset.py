"""Ingest of img2dataset output folders, against real img2dataset 1.47.0 output.

The fixture (``tests/data/img2dataset/``, made by ``tests/data/make_img2dataset_fixture.py``
from a local HTTP server) has 13 input rows in 4 webdataset shards: JPEG and PNG images,
a 404, bytes that are not an image, an HTML page, two URLs with byte-identical images, an
``X-Robots-Tag: noai`` response, an image below ``min_image_size``, a refused connection
and a success with an empty caption; plus the first 6 rows in parquet output (no uid
column) and the first 3 in files output. img2dataset itself is not needed here.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import InputError
from curate.ids import sample_uid
from curate.ingest import format_options, ingest
from curate.ingest.img2dataset import find_shards, ingest_img2dataset
from curate.ingest.tables import TableMapping, ingest_table
from tests.conftest import TEST_DATA, table_snapshot

I2D = TEST_DATA / "img2dataset"
WDS = I2D / "webdataset"
PARQUET = I2D / "parquet"
FILES = I2D / "files"


def shard_meta(folder: Path) -> list[dict]:
    """Every row of every shard's metadata parquet, with its shard name (the oracle)."""
    rows = []
    for f in sorted(folder.glob("[0-9]*.parquet")):
        t = pq.read_table(f)
        t = t.drop_columns([c for c in ("jpg",) if c in t.column_names])
        rows += [{**r, "_shard": f.stem} for r in t.to_pylist()]
    return rows


def stats(folder: Path) -> dict[str, dict]:
    return {f.name.split("_")[0]: json.loads(f.read_text()) for f in sorted(folder.glob("*_stats.json"))}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a baseline/progressive JPEG's SOF header; fails on anything else."""
    assert data[:2] == b"\xff\xd8", "not a JPEG (no SOI marker)"
    assert data.rstrip(b"\0")[-2:] == b"\xff\xd9", "JPEG without EOI marker (truncated?)"
    i = 2
    while i + 9 < len(data):
        assert data[i] == 0xFF, f"bad JPEG segment at byte {i}"
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    raise AssertionError("JPEG without a frame header")


def rows(store, sql: str, params=None) -> list[dict]:
    cur = store.con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


# -- the fixture is what the tests below assume ------------------------------------------

def test_fixture_is_real_multi_shard_output():
    assert sorted(p.name for p in WDS.iterdir()) == [
        f"0000{i}{ext}" for i in range(4) for ext in (".parquet", ".tar", "_stats.json")]
    st = stats(WDS)
    assert sum(s["count"] for s in st.values()) == 13
    assert sum(s["successes"] for s in st.values()) == 7
    assert [s.layout for s in find_shards(WDS)] == ["webdataset"] * 4
    assert [s.layout for s in find_shards(PARQUET)] == ["parquet"] * 2
    assert [s.layout for s in find_shards(FILES)] == ["files"] * 2
    assert sum(f.stat().st_size for f in I2D.rglob("*") if f.is_file()) < 200_000


# -- webdataset output -------------------------------------------------------------------

def test_webdataset_counts_equal_stats_json(store):
    res = ingest_img2dataset(store, WDS, "dl")
    st = stats(WDS)
    total = {k: sum(s[k] for s in st.values()) for k in ("count", "successes", "failed_to_download", "failed_to_resize")}
    assert res.rows_in == total["successes"] == 7
    assert res.samples_added == total["successes"]  # the empty-caption image is kept (require_caption=False)
    assert res.extra == {"linked": 0, "downloads": total["count"], "shards": 4,
                         "failed downloads": total["failed_to_download"] + total["failed_to_resize"]}
    for name, s in st.items():
        tar = str((WDS / f"{name}.tar").resolve())
        n_samples = store.con.execute("SELECT count(*) FROM samples WHERE image_shard = ?", [tar]).fetchone()[0]
        by_status = dict(store.con.execute(
            "SELECT status, count(*) FROM downloads WHERE shard = ? GROUP BY 1", [tar]).fetchall())
        by_message = dict(store.con.execute(
            "SELECT coalesce(error_message, status), count(*) FROM downloads WHERE shard = ? GROUP BY 1", [tar]).fetchall())
        assert n_samples == s["successes"], name
        assert sum(by_status.values()) == s["count"], name
        assert by_status.get("failed_to_download", 0) == s["failed_to_download"], name
        assert by_status.get("failed_to_resize", 0) == s["failed_to_resize"], name
        assert by_message == s["status_dict"], name
        stored = store.con.execute("SELECT stats FROM download_shards WHERE source = 'dl' AND shard = ?", [tar]).fetchone()
        assert json.loads(stored[0]) == s


def test_failures_are_queryable_not_samples(store):
    ingest_img2dataset(store, WDS, "dl")
    failed = {r["url"].rsplit("/", 1)[1]: (r["status"], r["error_message"]) for r in rows(
        store, "SELECT url, status, error_message FROM downloads WHERE status <> 'success'")}
    assert failed == {
        "missing.jpg": ("failed_to_download", "HTTP Error 404: File not found"),
        "noai.jpg": ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive"),
        "refused.jpg": ("failed_to_download", "<urlopen error [Errno 111] Connection refused>"),
        "corrupt.jpg": ("failed_to_resize", "Image decoding error"),
        "page.html": ("failed_to_resize", "Image decoding error"),
        "tiny.jpg": ("failed_to_resize", "image too small"),
    }
    in_samples = store.con.execute(
        "SELECT count(*) FROM samples WHERE uid IN (SELECT uid FROM downloads WHERE status <> 'success')").fetchone()[0]
    assert in_samples == 0
    # failures keep their own uid (the saved DataComp uid), so they can be joined to the URL table
    meta = {r["url"]: r["uid"] for r in shard_meta(WDS)}
    for r in rows(store, "SELECT uid, url FROM downloads"):
        assert r["uid"] == uuid.UUID(meta[r["url"]])


def test_webdataset_samples_resolve_into_the_tars(store):
    ingest_img2dataset(store, WDS, "dl")
    samples = rows(store, """
        SELECT s.uid, s.url, s.image_shard, s.image_key, s.image_path, s.sha256, s.width, s.height, s.extra,
               c.text AS caption, d.width AS stored_w, d.height AS stored_h
        FROM samples s JOIN downloads d USING (uid) LEFT JOIN captions c USING (uid) ORDER BY s.image_key""")
    assert len(samples) == 7
    for s in samples:
        assert s["image_path"] is None
        with tarfile.open(s["image_shard"]) as tar:
            names = tar.getnames()
            assert f"{s['image_key']}.jpg" in names
            image = tar.extractfile(f"{s['image_key']}.jpg").read()
            meta = json.loads(tar.extractfile(f"{s['image_key']}.json").read())
            text = tar.extractfile(f"{s['image_key']}.txt").read().decode()
        # the stored image decodes to img2dataset's resized size (16 px, border mode)
        assert jpeg_size(image) == (s["stored_w"], s["stored_h"]) == (16, 16)
        # sha256 is of the downloaded original, which is not in the tar: compare with its json
        assert s["sha256"] == meta["sha256"] and len(s["sha256"]) == 64
        assert (s["url"], s["uid"]) == (meta["url"], uuid.UUID(meta["uid"]))
        # width/height are the original size (original_width/original_height)
        assert (s["width"], s["height"]) == (meta["original_width"], meta["original_height"])
        assert (s["caption"] or "") == text
        assert json.loads(s["extra"]) == {"similarity": meta["similarity"]}


def test_sizes_are_original_and_identical_bytes_share_sha256(store):
    ingest_img2dataset(store, WDS, "dl")
    by_name = {r["url"].rsplit("/", 1)[1]: r for r in rows(store, "SELECT url, sha256, width, height FROM samples")}
    assert (by_name["wide.jpg"]["width"], by_name["wide.jpg"]["height"]) == (48, 24)
    assert (by_name["tall.png"]["width"], by_name["tall.png"]["height"]) == (16, 40)
    assert by_name["same_a.jpg"]["sha256"] == by_name["same_b.jpg"]["sha256"]
    assert by_name["same_a.jpg"]["sha256"] != by_name["red.jpg"]["sha256"]
    # two URLs, two samples: identical bytes are a dedup stage's business, not ingest's
    assert len(by_name) == 7


def test_captions_and_the_empty_caption(store):
    res = ingest_img2dataset(store, WDS, "dl")
    caps = {r["url"].rsplit("/", 1)[1]: r for r in rows(
        store, "SELECT s.url, c.text, c.variant, c.generator FROM captions c JOIN samples s USING (uid)")}
    assert caps["yellow.jpg"]["text"] == "un carré jaune — légende non ASCII"
    assert {(r["variant"], r["generator"]) for r in caps.values()} == {("raw", "alt-text")}
    assert "tall.png" not in caps and res.by_variant == {"raw": 6}
    rej = rows(store, "SELECT row_ref, reason FROM rejects")
    assert rej == [{"row_ref": "00002.tar:000022", "reason": "empty caption"}]  # shard file:key


def test_require_caption_drops_the_image_without_caption(store):
    res = ingest_img2dataset(store, WDS, "dl", require_caption=True)
    assert res.samples_added == 6
    assert res.reject_reasons == {"empty caption": 1, "no valid caption": 1}
    assert store.con.execute("SELECT count(*) FROM downloads WHERE url LIKE '%tall.png'").fetchone()[0] == 1


def test_ingest_twice_adds_nothing(store):
    first = ingest_img2dataset(store, WDS, "dl")
    before = table_snapshot(store)
    again = ingest_img2dataset(store, WDS, "dl")
    after = table_snapshot(store)
    assert (again.samples_added, again.captions_added) == (0, 0)
    assert again.already_present == first.samples_added
    assert again.extra == {"linked": 0, "downloads": 0, "failed downloads": 0, "shards": 0}
    for t in before:
        if t != "runs":
            assert after[t] == before[t], t
    assert len(after["runs"]) == len(before["runs"]) + 1


# -- parquet and files output -------------------------------------------------------------

def test_parquet_output_reads_metadata_not_image_bytes(store):
    res = ingest_img2dataset(store, PARQUET, "cc")
    meta = shard_meta(PARQUET)
    assert res.samples_added == sum(r["status"] == "success" for r in meta) == 3
    assert store.con.execute("SELECT count(*) FROM downloads").fetchone()[0] == len(meta) == 6
    for s in rows(store, "SELECT uid, url, image_shard, image_key, image_path, extra FROM samples"):
        # no uid column: the uid is the hash of source and url
        assert s["uid"] == sample_uid("cc", url=s["url"])
        assert s["image_path"] is None and s["extra"] is None  # the jpg column is not an extra
        assert s["image_shard"].endswith(".parquet")
        t = pq.read_table(s["image_shard"], columns=["key", "jpg"]).to_pylist()
        (image,) = [r["jpg"] for r in t if r["key"] == s["image_key"]]
        assert jpeg_size(image) == (16, 16)


def test_files_output_points_at_image_files(store):
    res = ingest_img2dataset(store, FILES, "f")
    assert res.samples_added == 2 and res.extra["failed downloads"] == 1
    for s in rows(store, "SELECT image_shard, image_key, image_path, sha256 FROM samples"):
        assert s["image_shard"] is None
        path = Path(s["image_path"])
        assert path.name == f"{s['image_key']}.jpg" and path.parent.parent == FILES.resolve()
        assert jpeg_size(path.read_bytes()) == (16, 16)
        assert json.loads(path.with_suffix(".json").read_text())["sha256"] == s["sha256"]
    shards = [r[0] for r in store.con.execute("SELECT shard FROM download_shards ORDER BY 1").fetchall()]
    assert shards == [str((FILES / "00000").resolve()), str((FILES / "00001").resolve())]


def test_the_dispatcher_knows_the_options(store):
    assert {"caption_col", "uid_col", "require_caption", "skip_incomplete"} <= set(format_options("img2dataset"))
    res = ingest(store, "img2dataset", WDS, None, skip_incomplete=False)
    assert res.source == "webdataset" and res.samples_added == 7


# -- linking to a URL table ingested before -----------------------------------------------

def test_download_links_the_url_table_samples_same_source(store):
    table = ingest_table(store, I2D / "input" / "urls_nouid.parquet", "cc",
                         mapping=TableMapping(url_col="url", caption_col="caption"))
    assert table.samples_added == 6
    res = ingest_img2dataset(store, PARQUET, "cc")
    assert (res.samples_added, res.captions_added) == (0, 0)
    assert res.extra["linked"] == 3 and res.already_present == 3
    samples = rows(store, "SELECT url, image_shard, image_key, sha256, width, height, run_id FROM samples")
    assert len(samples) == 6  # no duplicates
    meta = {r["url"]: r for r in shard_meta(PARQUET)}
    for s in samples:
        m = meta[s["url"]]
        if m["status"] == "success":
            assert s["image_shard"] == str((PARQUET / f"{m['_shard']}.parquet").resolve())
            assert (s["image_key"], s["sha256"]) == (m["key"], m["sha256"])
            assert (s["width"], s["height"]) == (m["original_width"], m["original_height"])
        else:
            assert s["image_shard"] is None and s["sha256"] is None
        assert s["run_id"] == table.run_id  # linked in place: the sample is still the table's
    assert store.con.execute("SELECT count(*) FROM captions").fetchone()[0] == 6
    # linked once: a second ingest neither links nor adds
    again = ingest_img2dataset(store, PARQUET, "cc")
    assert again.extra["linked"] == 0 and again.samples_added == 0


def test_download_links_datacomp_uids_whatever_the_source_name(store):
    table = ingest_table(store, I2D / "input" / "urls_uid.parquet", "datacomp",
                         mapping=TableMapping(url_col="url", caption_col="caption", uid_col="uid"))
    assert table.samples_added == 12  # the empty caption is not a sample of a URL table
    res = ingest_img2dataset(store, WDS, "datacomp-download")
    assert res.extra["linked"] == 6  # the 7 successes minus tall.png, which was never a sample
    assert res.samples_added == 1  # tall.png: an image with an empty caption is kept
    assert store.con.execute("SELECT count(*) FROM samples").fetchone()[0] == 13
    assert store.con.execute("SELECT count(DISTINCT uid) FROM samples").fetchone()[0] == 13
    linked = store.con.execute(
        "SELECT count(*) FROM samples WHERE source = 'datacomp' AND image_shard IS NOT NULL").fetchone()[0]
    assert linked == 6
    # extra from the URL table is kept as it came
    extra = store.con.execute("SELECT DISTINCT json_keys(extra) FROM samples WHERE source = 'datacomp'").fetchall()
    assert extra == [(["similarity"],)]
    # the linked rows are the URL table's samples (same uid, same url), not uid conflicts
    assert res.already_present == 6 and res.reject_reasons == {"empty caption": 1}
    assert res.rows_in == res.samples_added + res.already_present + res.rows_rejected == 7


def test_a_download_whose_uid_has_another_url_is_a_conflict_and_not_linked(store, tmp_path):
    """The URL table gives red.jpg's DataComp uid to another url: the download of red.jpg
    under another source is then a ``uid conflict`` naming both, and the other url's
    sample gets no image (before, it was linked to red.jpg's)."""
    t = pq.read_table(I2D / "input" / "urls_uid.parquet").to_pylist()
    red = next(r for r in t if r["url"].endswith("/red.jpg"))
    red["url"] = "http://elsewhere.example/not-red.jpg"
    pq.write_table(pa.Table.from_pylist(t), tmp_path / "urls.parquet")
    ingest_table(store, tmp_path / "urls.parquet", "datacomp",
                 mapping=TableMapping(url_col="url", caption_col="caption", uid_col="uid"))
    res = ingest_img2dataset(store, WDS, "datacomp-download")
    assert res.extra["linked"] == 5 and res.already_present == 5
    assert res.reject_reasons == {"empty caption": 1, "uid conflict": 1}
    assert (res.rows_in, res.samples_added, res.rows_rejected) == (7, 1, 1)
    detail = store.con.execute("SELECT detail FROM rejects WHERE reason = 'uid conflict'").fetchone()[0]
    assert "source 'datacomp' with url http://elsewhere.example/not-red.jpg" in detail and detail.endswith("/red.jpg")
    assert store.con.execute("SELECT image_shard FROM samples WHERE url = ?", [red["url"]]).fetchall() == [(None,)]
    assert store.con.execute("SELECT count(*) FROM samples WHERE url LIKE '%/red.jpg'").fetchone()[0] == 0


# -- bad input: one-line InputError, store unchanged ----------------------------------------

def _copy(tmp_path: Path, folder: Path = WDS) -> Path:
    dst = tmp_path / "out"
    shutil.copytree(folder, dst)
    for f in dst.rglob("*"):
        f.chmod(0o644 if f.is_file() else 0o755)
    return dst


def _missing_parquet(d: Path) -> None:
    (d / "00001.parquet").unlink()


def _truncated_parquet(d: Path) -> None:
    f = d / "00002.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _stats_not_json(d: Path) -> None:
    (d / "00001_stats.json").write_text('{"count": 4, "successes": ')


def _stats_missing(d: Path) -> None:
    (d / "00003_stats.json").unlink()


def _empty(d: Path) -> None:
    shutil.rmtree(d)
    d.mkdir()


def _url_list(d: Path) -> None:
    shutil.rmtree(d)
    shutil.copytree(I2D / "input", d)


def _not_shard_metadata(d: Path) -> None:
    shutil.copyfile(I2D / "input" / "urls_uid.parquet", d / "00000.parquet")


def _no_images(d: Path) -> None:
    (d / "00000.tar").unlink()


def _gone(d: Path) -> None:
    shutil.rmtree(d)


BAD = [
    (_missing_parquet, r"00001\.tar has no 00001\.parquet beside it"),
    (_truncated_parquet, r"00002\.parquet is not a readable parquet file \(truncated or corrupt\?\)"),
    (_stats_not_json, r"00001_stats\.json is not valid JSON \(Expecting value at line 1"),
    (_stats_missing, r"shard 00003 has no 00003_stats\.json: img2dataset did not finish it"),
    (_empty, r"out is empty; expected an img2dataset output folder"),
    (_url_list, r"out is not img2dataset output: no NNNNN\.parquet .*\(found urls_nouid\.parquet, urls_uid\.parquet\)"),
    (_not_shard_metadata, r"00000\.parquet is not img2dataset shard metadata: no column\(s\) key, status, error_message"),
    (_no_images, r"shard 00000 has no images: no 00000\.tar, no 00000/ folder and no image column"),
    (_gone, r"out does not exist"),
]


@pytest.mark.parametrize("damage, message", BAD, ids=[f.__name__.strip("_") for f, _ in BAD])
def test_bad_input_fails_in_one_line_and_writes_nothing(store, tmp_path, damage, message):
    ingest_img2dataset(store, PARQUET, "cc")  # the store is not empty
    folder = _copy(tmp_path)
    damage(folder)
    before = table_snapshot(store)
    with pytest.raises(InputError, match=message) as e:
        ingest_img2dataset(store, folder, "dl")
    assert "\n" not in str(e.value)
    assert table_snapshot(store) == before


def test_a_caption_column_named_explicitly_must_exist(store):
    before = table_snapshot(store)
    with pytest.raises(InputError, match=r"column 'alt' \(the caption column\) is missing"):
        ingest_img2dataset(store, WDS, "dl", caption_col="alt")
    assert table_snapshot(store) == before
    res = ingest_img2dataset(store, WDS, "dl", caption_col=None)  # images without captions
    assert (res.samples_added, res.captions_added) == (7, 0)


def test_skip_incomplete_leaves_out_unfinished_shards(store, tmp_path):
    folder = _copy(tmp_path)
    (folder / "00001_stats.json").unlink()
    res = ingest_img2dataset(store, folder, "dl", skip_incomplete=True)
    assert res.samples_added == 7 - stats(WDS)["00001"]["successes"]
    assert res.extra["shards"] == 3
    assert store.con.execute("SELECT count(*) FROM downloads WHERE shard LIKE '%00001.tar'").fetchone()[0] == 0


def test_a_moved_copy_is_another_download(store, tmp_path):
    """Shards are identified by path: a copy elsewhere records its own outcomes, but its
    samples (same uids) are not added twice."""
    ingest_img2dataset(store, WDS, "dl")
    res = ingest_img2dataset(store, _copy(tmp_path), "dl")
    assert res.samples_added == 0 and res.extra["downloads"] == 13
