"""`curate shards`: manifests of a real store to webdataset tars, read back with tarfile
and checked member by member against the images where the store keeps them (files, an
img2dataset-style tar, a parquet with image bytes); exclusions by reason; equal sizes;
determinism across worker counts; weights as repeats; re-encoding; a SIGKILLed run
resumed; the CLI and the pipeline step.

The store is built in SQL (samples pointing at generated images; raw, fused and rewrite
captions), the manifests by curate.mix policies. open_clip reading the shards is in
tests/test_shards_openclip.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import ConfigError, Store
from curate.cli import main
from curate.errors import InputError
from curate.mix import policy_from_dict, write_manifest
from curate.pipeline import load_pipeline, run_pipeline
from curate.shards import ShardOptions, write_shards
from curate.shards.captions import Candidate, apportion, draw, layout_error, slot_count, slot_layout

CLI = [sys.executable, "-c", "from curate.cli import main; import sys; sys.exit(main())"]


def _image(seed: int, size=(32, 24), fmt="JPEG") -> bytes:
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _uid(i: int) -> str:
    return hashlib.md5(f"s{i}".encode()).hexdigest()


N_FILES, N_TAR, N_PARQUET = 60, 30, 20
NO_IMAGE = range(110, 115)       # no reference at all: a failed download
MISSING = range(115, 117)        # image_path to a file that is not there
CORRUPT, GIF = 117, 118          # JPEG magic then garbage; a GIF open_clip cannot read
N = 119


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> dict:
    """A store of 119 samples whose images live in files, a tar and a parquet shard, with
    the expected bytes of each sample's image."""
    root = tmp_path_factory.mktemp("shards")
    (root / "img").mkdir()
    (root / "i2d").mkdir()
    expect: dict[str, bytes] = {}
    refs = []  # (i, image_path, image_shard, image_key)
    for i in range(N_FILES):
        ext, fmt = ("png", "PNG") if i % 10 == 3 else ("jpg", "JPEG")
        data = _image(i, fmt=fmt)
        (root / "img" / f"{i}.{ext}").write_bytes(data)
        expect[_uid(i)] = data
        refs.append((i, str(root / "img" / f"{i}.{ext}"), None, None))
    members = {}
    for i in range(N_FILES, N_FILES + N_TAR):
        key = f"{i:09d}"
        members[f"{key}.jpg"] = expect[_uid(i)] = _image(i)
        members[f"{key}.txt"] = b"caption in the tar"
        refs.append((i, None, str(root / "i2d" / "00000.tar"), key))
    _tar(root / "i2d" / "00000.tar", members)
    keys, blobs = [], []
    for i in range(N_FILES + N_TAR, N_FILES + N_TAR + N_PARQUET):
        keys.append(f"{i:09d}")
        blobs.append(_image(i, size=(20, 40)))
        expect[_uid(i)] = blobs[-1]
        refs.append((i, None, str(root / "i2d" / "00001.parquet"), keys[-1]))
    pq.write_table(pa.table({"key": keys, "jpg": pa.array(blobs, pa.binary())}), root / "i2d" / "00001.parquet")
    for i in NO_IMAGE:
        refs.append((i, None, None, None))
    for i in MISSING:
        refs.append((i, str(root / "img" / f"gone{i}.jpg"), None, None))
    (root / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all")
    expect[_uid(CORRUPT)] = (root / "img" / "corrupt.jpg").read_bytes()
    refs.append((CORRUPT, str(root / "img" / "corrupt.jpg"), None, None))
    (root / "img" / "g.gif").write_bytes(_image(GIF, fmt="GIF"))
    refs.append((GIF, str(root / "img" / "g.gif"), None, None))
    assert len(refs) == N
    store = root / "store"
    with Store.init(store) as s:
        s.con.register("refs", pa.table({"i": [r[0] for r in refs], "p": [r[1] for r in refs],
                                         "sh": [r[2] for r in refs], "k": [r[3] for r in refs]}))
        s.execute("""INSERT INTO samples (uid, source, url, image_path, image_shard, image_key, run_id)
            SELECT md5('s' || i)::UUID, CASE WHEN i % 2 = 0 THEN 'web' ELSE 'book' END, 'https://example.org/' || i,
                   p, sh, k, 1 FROM refs""")
        for variant, where in (("raw", "true"), ("fused", "i % 5 <> 0"), ("rewrite", "i % 7 = 0")):
            s.execute(f"""INSERT INTO captions (caption_id, uid, variant, text, source, run_id)
                SELECT md5('s' || i || '{variant}')::UUID, md5('s' || i)::UUID, '{variant}',
                       '{variant} caption of sample ' || i, CASE WHEN i % 2 = 0 THEN 'web' ELSE 'book' END, 1
                FROM refs WHERE {where}""")
        s.execute("""INSERT INTO captions (caption_id, uid, variant, text, source, run_id)
            SELECT md5('s' || i || 'rewrite2')::UUID, md5('s' || i)::UUID, 'rewrite',
                   'second rewrite of sample ' || i, CASE WHEN i % 2 = 0 THEN 'web' ELSE 'book' END, 1
            FROM refs WHERE i % 14 = 0""")
        manifests = {}
        for name, choose, fmt in (
                ("veclip", {"strategy": "veclip", "alt": "raw", "enriched": "fused", "enriched_share": 0.5}, "parquet"),
                ("laclip", {"strategy": "laclip", "variants": ["raw", "rewrite"]}, "parquet"),
                ("raw", {"strategy": "variant", "variant": "raw"}, "parquet"),
                ("veclip-json", {"strategy": "veclip", "alt": "raw", "enriched": "fused", "enriched_share": 0.5},
                 "json")):
            pol = policy_from_dict({"policy": {"name": name, "seed": 7}, "choose": choose,
                                    "output": {"format": fmt, **({"candidates": True} if fmt == "parquet" else {})}})
            manifests[name] = Path(write_manifest(s, pol)["path"])
    return {"root": root, "store": store, "expect": expect, "manifests": manifests}


def read_shards(out: Path) -> tuple[list[str], dict[str, dict[str, bytes]]]:
    """(shard names in order, key -> {ext: bytes}) of every tar in ``out``; a key seen
    twice fails."""
    names = sorted(p.name for p in out.glob("*.tar"))
    samples: dict[str, dict[str, bytes]] = {}
    for name in names:
        with tarfile.open(out / name) as tf:
            for m in tf:
                key, _, ext = m.name.partition(".")
                f = tf.extractfile(m)
                assert f is not None
                got = samples.setdefault(key, {})
                assert ext not in got, f"{m.name} twice"
                got[ext] = f.read()
    return names, samples


def _rows(manifest: Path) -> dict[str, dict]:
    return {r["uid"]: r for r in pq.read_table(manifest).to_pylist()}


def test_every_sample_carries_the_stored_bytes_its_caption_and_its_json(lake, tmp_path):
    out = tmp_path / "out"
    res = write_shards(lake["manifests"]["veclip"], out, ShardOptions(shard_size=25))
    c = res.counts
    # 119 rows: 5 without an image, 2 whose file is gone; the GIF is found unreadable
    # by open_clip only when its bytes are read; the corrupt JPEG is copied as stored
    assert c["rows"] == N and c["excluded_rows"] == {"no image": 5, "image not found": 2}
    assert c["excluded_while_writing"] == {"unsupported format": 1}
    assert c["samples"] == N - 5 - 2 - 1 == 111
    names, samples = read_shards(out)
    rows = _rows(lake["manifests"]["veclip"])
    assert len(samples) == 111
    for key, members in samples.items():
        uid, _, copy = key.partition("-")
        assert copy == "0" and uid in rows
        ext = next(e for e in members if e in ("jpg", "png"))
        assert members[ext] == lake["expect"][uid], key  # the stored bytes, not re-encoded
        assert ext == ("png" if lake["expect"][uid].startswith(b"\x89PNG") else "jpg")
        doc = json.loads(members["json"])
        assert doc["uid"] == uid and len(uid) == 32 and uid == uid.lower()
        assert members["txt"].decode() == doc["caption"] == rows[uid]["caption"]  # the manifest's draw
        assert doc["variant"] == rows[uid]["variant"]
        assert doc["source"] == rows[uid]["source"] and doc["weight"] == 1.0
        assert [(x["variant"], x["text"], x["prob"]) for x in doc["captions"]] == [
            (x["variant"], x["text"], x["prob"]) for x in rows[uid]["captions"]]
    # sizes.json, the per-shard stats (DataComp's "successes") and the sidecar agree with the tars
    sizes = json.loads((out / "sizes.json").read_text())
    per_tar: Counter[str] = Counter()
    for name in names:
        with tarfile.open(out / name) as tf:
            per_tar[name] = len({m.name.partition(".")[0] for m in tf})
    assert sizes == dict(per_tar) and sum(sizes.values()) == 111
    for name in names:
        stats = json.loads((out / name.replace(".tar", "_stats.json")).read_text())
        assert stats["successes"] == sizes[name]
        assert stats["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    side = json.loads((out / "shards.json").read_text())
    msha = hashlib.sha256(lake["manifests"]["veclip"].read_bytes()).hexdigest()
    mside = json.loads(Path(str(lake["manifests"]["veclip"]) + ".sidecar.json").read_text())
    assert side["manifest_sha256"] == msha and side["policy_hash"] == mside["policy_hash"]
    assert side["seed"] == 7 == mside["seed"]
    assert side["counts"]["excluded_rows"] == {"no image": 5, "image not found": 2}
    assert {e["reason"] for e in side["excluded_examples"]} == {"no image", "image not found"}
    assert side["open_clip"]["train_data"].endswith("{00000..00004}.tar")


def test_shards_are_equal_sized_and_named_with_five_digits(lake, tmp_path):
    res = write_shards(lake["manifests"]["raw"], tmp_path / "o", ShardOptions(shard_size=9, seed=1))
    sizes = json.loads((tmp_path / "o" / "sizes.json").read_text())
    assert list(sizes) == [f"{i:05d}.tar" for i in range(len(sizes))]
    planned = [json.loads((tmp_path / "o" / f"{i:05d}_stats.json").read_text())["count"] for i in range(len(sizes))]
    # every shard but the last holds shard_size planned samples
    assert planned[:-1] == [9] * (len(planned) - 1) and 1 <= planned[-1] <= 9
    assert sum(planned) == res.counts["planned"] == N - 7


def test_verify_images_excludes_undecodable_images_before_sharding(lake, tmp_path):
    res = write_shards(lake["manifests"]["raw"], tmp_path / "v", ShardOptions(shard_size=10, verify_images=True))
    c = res.counts
    assert c["excluded_rows"] == {"no image": 5, "image not found": 2, "undecodable": 1, "unsupported format": 1}
    assert c["excluded_while_writing"] == {}
    # known before sharding, so every shard but the last is full
    sizes = list(json.loads((tmp_path / "v" / "sizes.json").read_text()).values())
    assert sizes[:-1] == [10] * (len(sizes) - 1) and sum(sizes) == N - 9
    _, samples = read_shards(tmp_path / "v")
    assert f"{_uid(CORRUPT)}-0" not in samples and f"{_uid(GIF)}-0" not in samples


def test_same_seed_same_bytes_whatever_the_workers_other_seed_other_order(lake, tmp_path):
    m = lake["manifests"]["laclip"]
    a = write_shards(m, tmp_path / "a", ShardOptions(shard_size=8, workers=1))
    b = write_shards(m, tmp_path / "b", ShardOptions(shard_size=8, workers=2))
    c = write_shards(m, tmp_path / "c", ShardOptions(shard_size=8, seed=99))
    tars = sorted(p.name for p in (tmp_path / "a").glob("*.tar"))
    assert tars == sorted(p.name for p in (tmp_path / "b").glob("*.tar"))
    for t in tars:
        assert (tmp_path / "a" / t).read_bytes() == (tmp_path / "b" / t).read_bytes(), t
    assert (tmp_path / "a" / "sizes.json").read_bytes() == (tmp_path / "b" / "sizes.json").read_bytes()
    assert a.sidecar["shards"] == b.sidecar["shards"] != c.sidecar["shards"]
    # the same samples, in another order
    assert set(read_shards(tmp_path / "a")[1]) == set(read_shards(tmp_path / "c")[1])


def test_the_shuffle_moves_samples_away_from_manifest_order(lake, tmp_path):
    m = lake["manifests"]["raw"]
    order = [r["uid"] for r in pq.read_table(m).to_pylist() if r["uid"] in lake["expect"]]
    write_shards(m, tmp_path / "s", ShardOptions(shard_size=200, shuffle_buffer=50))
    write_shards(m, tmp_path / "k", ShardOptions(shard_size=200, shuffle_buffer=0))

    def seq(out: Path) -> list[str]:
        with tarfile.open(out / "00000.tar") as tf:
            return list(dict.fromkeys(m.name.partition("-")[0] for m in tf))

    kept = [u for u in order if u in set(seq(tmp_path / "k"))]
    assert seq(tmp_path / "k") == kept  # buffer 0: manifest order
    shuffled = seq(tmp_path / "s")
    assert sorted(shuffled) == sorted(kept) and shuffled != kept


def _weighted_manifest(lake, tmp_path: Path, weights) -> Path:
    """The raw manifest with other weights (a manifest is a plain file contract)."""
    t = pq.read_table(lake["manifests"]["raw"])
    w = [float(weights(i)) for i in range(t.num_rows)]
    t = t.set_column(t.schema.get_field_index("weight"), "weight", pa.array(w, pa.float64()))
    path = tmp_path / "weighted.parquet"
    pq.write_table(t, path)
    return path


def test_weights_become_repeats_integer_copies_and_a_seeded_fraction(lake, tmp_path):
    # weights 0.25, 1, 2.5 and 7 in turn; max_repeats 5 caps the 7s
    ws = [0.25, 1.0, 2.5, 7.0]
    m = _weighted_manifest(lake, tmp_path, lambda i: ws[i % 4])
    res = write_shards(m, tmp_path / "w", ShardOptions(shard_size=50, max_repeats=5, shuffle_buffer=1000))
    _, samples = read_shards(tmp_path / "w")
    rows = {r["uid"]: r["weight"] for r in pq.read_table(m).to_pylist()}
    per_uid = Counter(k.partition("-")[0] for k in samples)
    copies_of: dict[float, list[int]] = {w: [] for w in ws}
    for uid, w in rows.items():
        if uid in lake["expect"] and uid not in (_uid(GIF),):
            copies_of[w].append(per_uid.get(uid, 0))
    assert set(copies_of[1.0]) == {1}
    assert set(copies_of[2.5]) <= {2, 3} and set(copies_of[7.0]) == {5}
    assert set(copies_of[0.25]) <= {0, 1}
    # the fractional draws: binomial within 4 sigma of the fraction
    for w, frac in ((0.25, 0.25), (2.5, 0.5)):
        n = len(copies_of[w])
        hits = sum(c - math.floor(w) for c in copies_of[w])
        assert abs(hits - n * frac) <= 4 * math.sqrt(n * frac * (1 - frac)), (w, hits, n)
    # copy keys are uid-0 .. uid-(n-1), each once; each copy's json names its copy
    for uid, n in per_uid.items():
        assert {k for k in samples if k.startswith(uid)} == {f"{uid}-{j}" for j in range(n)}
    assert res.counts["rows_without_copies"] == copies_of[0.25].count(0)
    assert res.counts["repeats_added"] == sum(max(0, c - 1) for v in copies_of.values() for c in v)
    # --no-repeat: one copy each, whatever the weight
    once = write_shards(m, tmp_path / "once", ShardOptions(shard_size=50, repeat=False))
    assert once.counts["samples"] == N - 8 and once.counts["repeats_added"] == 0


def test_copies_draw_their_captions_independently(lake, tmp_path):
    m = lake["manifests"]["veclip"]
    t = pq.read_table(m)
    t = t.set_column(t.schema.get_field_index("weight"), "weight", pa.array([40.0] * t.num_rows, pa.float64()))
    pq.write_table(t, tmp_path / "heavy.parquet")
    write_shards(tmp_path / "heavy.parquet", tmp_path / "h", ShardOptions(shard_size=500, max_repeats=40))
    _, samples = read_shards(tmp_path / "h")
    both = [r["uid"] for r in t.to_pylist() if len(r["captions"]) == 2 and r["uid"] in lake["expect"]]
    fused = sum(json.loads(samples[f"{u}-{j}"]["json"])["variant"] == "fused" for u in both for j in range(40)
                if f"{u}-{j}" in samples)
    n = sum(f"{u}-{j}" in samples for u in both for j in range(40))
    assert n > 2000 and abs(fused - n / 2) <= 4 * math.sqrt(n / 4), (fused, n)


def test_reencode_jpeg_with_a_max_size_and_jpegs_within_it_kept(lake, tmp_path):
    from PIL import Image

    res = write_shards(lake["manifests"]["raw"], tmp_path / "r",
                       ShardOptions(shard_size=200, reencode="jpeg", max_size=28))
    _, samples = read_shards(tmp_path / "r")
    # the GIF is re-encoded now; the corrupt JPEG is undecodable when it must be resized
    assert res.counts["excluded_while_writing"] == {"undecodable": 1}
    assert f"{_uid(GIF)}-0" in samples
    for key, members in samples.items():
        uid = key.partition("-")[0]
        assert set(members) == {"jpg", "txt", "json"}
        with Image.open(io.BytesIO(members["jpg"])) as im:
            assert im.format == "JPEG" and max(im.size) <= 28
            small = uid in lake["expect"] and lake["expect"][uid].startswith(b"\xff\xd8") and \
                max(Image.open(io.BytesIO(lake["expect"][uid])).size) <= 28
        if small:
            assert members["jpg"] == lake["expect"][uid]  # not re-encoded: already a JPEG within the size


def test_a_json_manifest_reads_image_references_from_the_store(lake, tmp_path):
    with Store.open(lake["store"], read_only=True) as s:
        res = write_shards(lake["manifests"]["veclip-json"], tmp_path / "j", ShardOptions(shard_size=25), store=s)
    ref = write_shards(lake["manifests"]["veclip"], tmp_path / "p", ShardOptions(shard_size=25))
    assert res.counts["samples"] == ref.counts["samples"] == 111
    # the same samples and captions as from the parquet manifest of the same policy
    assert [s["sha256"] for s in res.sidecar["shards"]] == [s["sha256"] for s in ref.sidecar["shards"]]
    # the json manifest carries image_shard/image_key itself now; one without them (written
    # before they were added) reads them from the store by uid, and without a store is refused
    alone = write_shards(lake["manifests"]["veclip-json"], tmp_path / "alone", ShardOptions(shard_size=25))
    assert [s["sha256"] for s in alone.sidecar["shards"]] == [s["sha256"] for s in ref.sidecar["shards"]]
    old = _json_without_image_refs(lake["manifests"]["veclip-json"], tmp_path)
    with Store.open(lake["store"], read_only=True) as s:
        via_store = write_shards(old, tmp_path / "old", ShardOptions(shard_size=25), store=s)
    assert via_store.counts["samples"] == ref.counts["samples"]
    with pytest.raises(ConfigError, match="no image_shard/image_key"):
        write_shards(old, tmp_path / "x")


def _json_without_image_refs(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / "old.samples.jsonl"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    out.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("image_shard", "image_key")}) + "\n"
                           for r in lines), encoding="utf-8")
    return out


def test_a_folder_of_other_shards_or_other_files_is_refused(lake, tmp_path):
    out = tmp_path / "o"
    write_shards(lake["manifests"]["raw"], out, ShardOptions(shard_size=50))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="another manifest or other options"):
        write_shards(lake["manifests"]["raw"], out, ShardOptions(shard_size=40))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    again = write_shards(lake["manifests"]["raw"], out, ShardOptions(shard_size=40, overwrite=True))
    assert again.counts["shards"] == 3 and not (out / "00000.tar").read_bytes() == before["00000.tar"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="did not write"):
        write_shards(lake["manifests"]["raw"], tmp_path / "mine", ShardOptions(overwrite=True))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_finished_run_again_keeps_and_verifies_every_shard_and_rewrites_a_damaged_one(lake, tmp_path):
    out = tmp_path / "o"
    first = write_shards(lake["manifests"]["laclip"], out, ShardOptions(shard_size=20))
    good = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    again = write_shards(lake["manifests"]["laclip"], out, ShardOptions(shard_size=20, workers=2))
    assert again.counts["shards_kept"] == first.counts["shards"] and again.counts["shards_written"] == 0
    raw = bytearray((out / "00002.tar").read_bytes())
    raw[700] ^= 0xFF  # one flipped byte: same size, other sha256
    (out / "00002.tar").write_bytes(bytes(raw))
    (out / "00004.tar").unlink()
    third = write_shards(lake["manifests"]["laclip"], out, ShardOptions(shard_size=20))
    assert third.counts["shards_written"] == 2 and third.counts["shards_kept"] == first.counts["shards"] - 2
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == good


@pytest.fixture(scope="module")
def big_manifest(lake, tmp_path_factory) -> Path:
    """8,000 rows over the lake's images (the file images repeated under new uids), for a
    run long enough to kill."""
    t = pq.read_table(lake["manifests"]["raw"]).to_pylist()
    files = [r for r in t if r["image_path"] and r["uid"] in lake["expect"] and not r["image_path"].endswith(".gif")
             and r["uid"] != _uid(CORRUPT)]
    rows = []
    for i in range(8000):
        r = dict(files[i % len(files)])
        r["uid"] = hashlib.md5(f"big{i}".encode()).hexdigest()
        r["caption"] = f"{r['caption']} #{i}"
        r["captions"] = [{**c, "text": f"{c['text']} #{i}"} for c in r["captions"]]
        rows.append(r)
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_a_sigkilled_run_resumes_keeping_finished_shards_and_doubling_nothing(big_manifest, tmp_path):
    ref = tmp_path / "ref"
    args = ["--shard-size", "20", "--workers", "2", "--no-progress"]
    done = subprocess.run(CLI + ["shards", str(big_manifest), str(ref), *args], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    n_shards = len(list(ref.glob("*.tar")))
    assert n_shards == 400

    out = tmp_path / "killed"
    proc = subprocess.Popen(CLI + ["shards", str(big_manifest), str(out), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while len(list(out.glob("*_stats.json"))) < 120:
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the planner and its writer processes
    proc.wait()
    finished = {p.name for p in out.glob("*_stats.json")}
    assert 120 <= len(finished) < n_shards
    assert not (out / "shards.json").exists() and not (out / "sizes.json").exists()

    again = subprocess.run(CLI + ["shards", str(big_manifest), str(out), *args], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    side = json.loads((out / "shards.json").read_text())
    assert side["counts"]["shards_kept"] == len(finished)  # a stats file is written after its tar is complete
    assert side["counts"]["shards_kept"] + side["counts"]["shards_written"] == n_shards
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    for p in ref.glob("*.tar"):
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    assert (out / "sizes.json").read_bytes() == (ref / "sizes.json").read_bytes()
    _, samples = read_shards(out)
    assert len(samples) == 8000  # nothing lost, nothing doubled


def test_cli_writes_shards_and_prints_one_summary_line_and_open_clip_arguments(lake, tmp_path, capsys):
    code = main(["shards", str(lake["manifests"]["veclip"]), str(tmp_path / "c"), "--shard-size", "50"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("shards: 111 samples in 3 shards (0 kept, 3 written) from 119 manifest rows; "
                               "excluded 7 rows (no image 5, image not found 2); 1 samples failed while writing "
                               "(unsupported format 1); ")
    assert "--train-data" in lines[1] and "{00000..00002}.tar" in lines[1]
    assert lines[2].endswith("--json-text-key 'c0;c1' --json-text-key-probs 1 1")
    assert err == ""  # no progress bar when stderr is not a terminal


@pytest.mark.parametrize("args, code, message", [
    (["--max-size", "64"], 2, "max_size applies when re-encoding"),
    (["--shard-size", "0"], 2, "shard_size must be at least 1"),
    (["--jpeg-quality", "101"], 2, "jpeg_quality must be from 1 to 95"),
])
def test_cli_bad_options_are_one_line_errors(lake, tmp_path, capsys, args, code, message):
    got = main(["shards", str(lake["manifests"]["raw"]), str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert got == code and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_refuses_manifests_it_cannot_shard(lake, tmp_path, capsys):
    with Store.open(lake["store"]) as s:
        csv = Path(write_manifest(s, policy_from_dict({"policy": {"name": "c"}, "output": {"format": "csv"}}))["path"])
    assert main(["shards", str(csv), str(tmp_path / "x")]) == 3
    assert "has no uid" in capsys.readouterr().err
    assert main(["shards", str(tmp_path / "nope.parquet"), str(tmp_path / "x")]) == 3
    assert "does not exist" in capsys.readouterr().err
    assert main(["shards", str(_json_without_image_refs(lake["manifests"]["veclip-json"], tmp_path)),
                 str(tmp_path / "x"), "--store", str(tmp_path / "nostore")]) == 2
    assert "give the store it came from" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["shards", str(lake["manifests"]["raw"]), str(tmp_path / "afile" / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write shards into") and len(err.strip().splitlines()) == 1


def test_no_readable_image_at_all_exits_3_after_recording_why(lake, tmp_path, capsys):
    t = pq.read_table(lake["manifests"]["raw"]).to_pylist()
    none = [r for r in t if r["image_path"] is None and r["image_shard"] is None]
    pq.write_table(pa.Table.from_pylist(none), tmp_path / "none.parquet")
    assert main(["shards", str(tmp_path / "none.parquet"), str(tmp_path / "x")]) == 3
    assert "none of the 5 manifest rows has a readable image" in capsys.readouterr().err
    assert json.loads((tmp_path / "x" / "shards.json").read_text())["counts"]["excluded_rows"] == {"no image": 5}


def test_bad_rows_in_a_manifest_are_one_line_input_errors(lake, tmp_path):
    t = pq.read_table(lake["manifests"]["raw"]).to_pylist()
    t[3]["uid"] = "not-a-uid"
    pq.write_table(pa.Table.from_pylist(t), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r"bad.parquet row 4: uid 'notauid' is not 32 hex digits"):
        write_shards(tmp_path / "bad.parquet", tmp_path / "x")


def test_pipeline_shards_step_runs_after_its_mix_and_is_checked_before_any_work(lake, tmp_path):
    pol = tmp_path / "p.toml"
    pol.write_text('[policy]\nname = "pv"\nseed = 3\n[choose]\nstrategy = "veclip"\nalt = "raw"\nenriched = "fused"\n'
                   '[output]\nformat = "parquet"\ncandidates = true\n')
    good = tmp_path / "good.toml"
    good.write_text('[[mix]]\npolicy = "p.toml"\n[[shards]]\nmix = "pv"\nout = "sh"\nshard_size = 40\n')
    pipe = load_pipeline(good)
    assert pipe.resolved()["shards"][0]["out"] == str(tmp_path / "sh")
    with Store.open(lake["store"]) as s:
        results = run_pipeline(s, pipe)
    assert results[-1].counts["samples"] == 111 and (tmp_path / "sh" / "00002.tar").exists()
    for text, message in (
            ('[[mix]]\npolicy = "p.toml"\n[[shards]]\nmix = "other"\nout = "x"\n', "no [[mix]] step writes a manifest named 'other'"),
            ('[[shards]]\nout = "x"\n', "give one of 'mix'"),
            ('[[shards]]\nmanifest = "nope.parquet"\nout = "x"\n', "does not exist"),
            ('[[mix]]\npolicy = "p.toml"\n[[shards]]\nmix = "pv"\nout = "x"\nshard_sise = 3\n', "unknown key(s) shard_sise"),
            ('[[mix]]\npolicy = "p.toml"\n[[shards]]\nmix = "pv"\nout = "x"\nmax_size = 3\n', "max_size applies"),
            ('[[mix]]\npolicy = "p.toml"\n[[shards]]\nmix = "pv"\n', "missing key 'out'")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                           .replace(")", r"\)")):
            load_pipeline(bad)
    assert not (tmp_path / "x").exists()


# -- the caption layout ---------------------------------------------------------------
def test_slot_count_is_the_least_common_multiple_of_the_denominators():
    assert slot_count([[0.5, 0.5], [1.0]]) == (2, True)                     # VeCLIP, some without the enriched
    assert slot_count([[0.5, 0.5], [1 / 3] * 3, [0.25] * 4]) == (12, True)  # LaCLIP with 1-3 rewrites
    assert slot_count([[0.7, 0.3]]) == (10, True)
    assert slot_count([[1 / 7] * 7, [0.5, 0.5]], max_slots=60) == (14, True)
    assert slot_count([[0.123, 0.877]]) == (60, False)


def test_the_layout_apportions_slots_by_the_largest_remainder():
    cands = [Candidate("raw", "a", 1 / 3), Candidate("rewrite", "b", 1 / 3), Candidate("rewrite", "c", 1 / 3)]
    assert slot_layout(cands, 12) == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert layout_error(cands, 12) < 1e-12
    assert apportion([0.123, 0.877], 60) == [7, 53]
    assert layout_error([Candidate("x", "a", 0.123), Candidate("y", "b", 0.877)], 60) < 1 / 60
    assert sum(apportion([0.2, 0.2, 0.2, 0.2, 0.2], 12)) == 12


def test_draws_follow_the_probabilities():
    cands = [Candidate("raw", "a", 0.2), Candidate("fused", "b", 0.8)]
    n = 20000
    got = Counter(draw(cands, 0, f"{i:032x}", 0, 0).text for i in range(n))
    assert abs(got["b"] - 0.8 * n) <= 4 * math.sqrt(n * 0.8 * 0.2)
    assert draw(cands, 0, "u", 1, 0) == draw(cands, 0, "u", 1, 0)  # a function of its arguments
