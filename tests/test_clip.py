"""CLIP embeddings and scores (curate/stages/clip.py, curate/images.py).

No weights can be downloaded here: a tiny open_clip ViT (width 64, 2 layers, 32 px
images, 16-token context) is registered from a JSON config, initialised with a fixed
seed and saved as a local checkpoint, which is exactly the offline product path
(``pretrained = "/path/checkpoint.bin"``). Images are real JPEG/PNG files made with PIL
and the real img2dataset fixture in tests/data/img2dataset/.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import Store
from curate.errors import ConfigError
from curate.images import ImageFailure, ImageRef, read_images
from curate.ingest import ingest
from curate.runner import RunOptions

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from curate import vectors as V  # noqa: E402 - only once torch and open_clip are known to import
from curate.stages.clip import ClipImage, ClipScore, embed, finalize_vectors  # noqa: E402 - as above

TEST_DATA = Path(__file__).resolve().parent / "data"
TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
TINY_NAME = "tiny-clip-test"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """The tiny model's config file and seeded checkpoint."""
    d = tmp_path_factory.mktemp("tiny")
    cfg = d / f"{TINY_NAME}.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(cfg)
    torch.manual_seed(1234)
    m = open_clip.create_model(TINY_NAME, pretrained=None)
    ckpt = d / "tiny.bin"
    torch.save(m.state_dict(), ckpt)
    return {"model": TINY_NAME, "pretrained": str(ckpt), "model_config": str(cfg), "model_id": "tiny/seed1234"}


class Direct:
    """Plain open_clip: the oracle the store's numbers must equal."""

    def __init__(self, tiny: dict):
        self.model, _, self.pre = open_clip.create_model_and_transforms(tiny["model"], pretrained=tiny["pretrained"])
        self.model.eval()
        self.tok = open_clip.get_tokenizer(tiny["model"])

    def image(self, data: bytes) -> np.ndarray:
        from PIL import Image

        x = self.pre(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            e = self.model.encode_image(x).numpy()[0]
        return e / np.linalg.norm(e)

    def text(self, t: str) -> np.ndarray:
        with torch.no_grad():
            e = self.model.encode_text(self.tok([t])).numpy()[0]
        return e / np.linalg.norm(e)


def _image_bytes(i: int, fmt: str = "JPEG", size=(40, 30), mode: str = "RGB") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(i)
    arr = rng.integers(0, 255, (size[1], size[0], 4 if mode == "RGBA" else 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGBA" if mode == "RGBA" else "RGB")
    if mode == "L":
        im = im.convert("L")
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def make_coco(folder: Path, n_good: int = 8) -> tuple[Path, dict[str, bytes]]:
    """A COCO captions file over real image files: JPEG and PNG (RGB, RGBA, grey, of
    several sizes), plus a corrupt file, a truncated JPEG, a text file named .jpg and a
    missing file. Two captions per image."""
    folder.mkdir(parents=True, exist_ok=True)
    images, anns, files = [], [], {}
    kinds = [("JPEG", (40, 30), "RGB"), ("PNG", (32, 32), "RGB"), ("PNG", (50, 20), "RGBA"), ("JPEG", (64, 64), "L")]
    for i in range(n_good):
        fmt, size, mode = kinds[i % len(kinds)]
        p = folder / f"img{i}.{'jpg' if fmt == 'JPEG' else 'png'}"
        p.write_bytes(_image_bytes(i, fmt, size, mode))
        files[str(p)] = p.read_bytes()
    bad = {"corrupt.jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
           "truncated.jpg": _image_bytes(99)[:60],
           "text.jpg": b"<html>this is a web page</html>"}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    paths = [str(folder / f"img{i}.{'jpg' if kinds[i % len(kinds)][0] == 'JPEG' else 'png'}") for i in range(n_good)]
    paths += [str(folder / n) for n in bad] + [str(folder / "missing.jpg")]
    for i, p in enumerate(paths):
        images.append({"id": i, "file_name": p, "coco_url": f"http://example.test/{i}.jpg"})
        for j, text in enumerate([f"a photo number {i}", f"picture {i} of random noise"]):
            anns.append({"id": 100 * i + j, "image_id": i, "caption": text})
    f = folder / "captions.json"
    f.write_text(json.dumps({"images": images, "annotations": anns}))
    return f, files


def tiny_stage(tiny: dict, cls=ClipScore, **kw):
    kw.setdefault("decode_workers", 0)
    return cls(model=tiny["model"], pretrained=tiny["pretrained"], model_config=tiny["model_config"],
               model_id=tiny["model_id"], **kw)


def scores(store: Store) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in store.con.execute(
        "SELECT caption_id::VARCHAR, score, status, detail FROM clip_scores").fetchall()}


def test_scores_equal_open_clip_and_bad_images_have_reasons(tmp_path, tiny):
    coco, files = make_coco(tmp_path / "imgs")
    with Store.init(tmp_path / "s") as store:
        ingest(store, "coco", coco, "coco")
        out = embed(store, tiny_stage(tiny), RunOptions(batch_size=5, progress=False))
        assert out["run"].rows_in == 24
        assert out["images"] == 8 and out["texts"] == 24
        rows = store.con.execute(
            "SELECT k.caption_id::VARCHAR, k.uid::VARCHAR, s.image_path, c.text, k.score, k.status, k.detail, k.model, "
            "k.variant FROM clip_scores k JOIN captions c USING (caption_id) JOIN samples s ON s.uid = k.uid").fetchall()
        direct = Direct(tiny)
        statuses = {}
        for _cid, _uid, path, text, score, status, detail, model, variant in rows:
            assert model == "tiny/seed1234" and variant == "human"
            statuses[Path(path).name] = (status, detail)
            if path in files:
                want = float(direct.image(files[path]) @ direct.text(text))
                assert status == "ok" and detail is None
                assert abs(score - want) < 1e-3, (path, text, score, want)
            else:
                assert score is None
        assert statuses["corrupt.jpg"] == ("undecodable", "OSError: Truncated File Read")
        assert statuses["truncated.jpg"][0] == "undecodable" and "Truncated" in statuses["truncated.jpg"][1]
        assert statuses["text.jpg"][0] == "undecodable" and statuses["text.jpg"][1] == \
            "UnidentifiedImageError: cannot identify image file"
        assert statuses["missing.jpg"] == ("image not found", f"{tmp_path / 'imgs' / 'missing.jpg'}: no such file")

        # the vector sets: image vectors of the 8 good images, text vectors of all 24 captions
        names = V.list_sets(store)
        assert names == ["clip.tiny-seed1234.image", "clip.tiny-seed1234.text.human"]
        img = V.open_set(store, "clip.tiny-seed1234.image")
        assert (img.kind, img.count, img.dim, img.model) == ("image", 8, 32, "tiny/seed1234")
        paths = dict(store.con.execute("SELECT uid::VARCHAR, image_path FROM samples").fetchall())
        for uid, vec in zip(img.ids().to_pylist(), np.concatenate(img.arrays())):
            np.testing.assert_allclose(vec.astype(np.float32), direct.image(files[paths[uid]]), atol=2e-3)
        txt = V.open_set(store, "clip.tiny-seed1234.text.human")
        assert (txt.kind, txt.count, txt.variant) == ("text", 24, "human")
        texts = dict(store.con.execute("SELECT caption_id::VARCHAR, text FROM captions").fetchall())
        for cid, vec in zip(txt.ids().to_pylist(), np.concatenate(txt.arrays())):
            np.testing.assert_allclose(vec.astype(np.float32), direct.text(texts[cid]), atol=2e-3)
        assert not list((store.path / "vectors" / ".parts").rglob("*.npy"))  # parts consumed

        # the named queries
        hist = store.query("clip.score_histogram", bins=4).to_arrow_table().to_pylist()
        assert sum(r["n"] for r in hist) == 16 and {r["variant"] for r in hist} == {"human"}
        thr = store.query("clip.threshold_for_fraction", fraction=0.25).to_arrow_table().to_pylist()
        assert thr[0]["kept"] == 4 and thr[0]["scored"] == 16
        ok = sorted((r[4] for r in rows if r[4] is not None), reverse=True)
        assert abs(thr[0]["threshold"] - ok[3]) < 1e-12
        status = store.query("clip.status").to_arrow_table().to_pylist()
        assert {r["status"]: r["captions"] for r in status} == {"ok": 16, "undecodable": 6, "image not found": 2}

        # a rerun has nothing to do and leaves the sets as they are
        again = embed(store, tiny_stage(tiny, model_batch_size=3), RunOptions(batch_size=7, progress=False))
        assert again["run"].pending_before == 0 and again["sets"] == []
        assert V.open_set(store, "clip.tiny-seed1234.image").count == 8


def test_mix_reads_the_latest_clip_scores(tmp_path, tiny):
    """A CLIP-score policy on real clip.score.v1 output: the top half of the human
    captions' scores, after a rescore with another checkpoint under the same model label.
    clip_scores then holds both runs; the policy must read only the latest one and only
    images that loaded, so its threshold, selection and sidecar are those of that run."""
    from curate.mix import OneVariant, Policy, col, keep_fraction, run_policy, write_manifest

    coco, files = make_coco(tmp_path / "imgs")
    torch.manual_seed(99)
    other = tmp_path / "other.bin"
    torch.save(open_clip.create_model(tiny["model"], pretrained=None).state_dict(), other)
    with Store.init(tmp_path / "s") as store:
        ingest(store, "coco", coco, "coco")
        embed(store, tiny_stage(tiny), RunOptions(batch_size=8, progress=False))
        embed(store, tiny_stage({**tiny, "pretrained": str(other)}), RunOptions(batch_size=8, progress=False))
        runs = store.con.execute("SELECT run_id, config_hash FROM runs WHERE stage = 'clip.score.v1' "
                                 "ORDER BY run_id").fetchall()
        assert len(runs) == 2 and runs[0][1] != runs[1][1]
        rows = store.con.execute("SELECT caption_id::VARCHAR, uid::VARCHAR, score, config_hash FROM clip_scores "
                                 "WHERE status = 'ok'").fetchall()
        assert len(rows) == 32  # 8 good images x 2 captions x 2 runs
        latest = {cid: (uid, score) for cid, uid, score, h in rows if h == runs[1][1]}
        first = {cid: score for cid, uid, score, h in rows if h == runs[0][1]}
        assert len(latest) == 16 and any(abs(first[c] - latest[c][1]) > 1e-4 for c in latest)

        pol = Policy("top-half", choose=OneVariant("human"), select=keep_fraction(col("clip_score", "human"), 0.5))
        res = run_policy(store, pol)
        thr = res.thresholds[0]
        want_thr = sorted((sc for _, sc in latest.values()), reverse=True)[7]
        assert (thr["pool_values"], thr["keep"], thr["threshold"]) == (16, 8, want_thr)
        got = {r[0] for r in store.con.execute("SELECT uid::VARCHAR FROM _mix_final").fetchall()}
        assert got == {uid for uid, sc in latest.values() if sc >= want_thr}
        side = write_manifest(store, pol, path=tmp_path / "m.parquet")
    clip = [st for st in side["stages"] if st["table"] == "clip_scores"]
    assert [(st["stage"], st["model"], st["run_id"], st["config_hash"]) for st in clip] == \
        [("clip.score.v1", tiny["model_id"], runs[1][0], runs[1][1])]


def test_ray_actors_give_the_scores_and_vectors_of_one_process(tmp_path, tiny):
    """The CPU twin of GPU actors (executor="ray", gpus_per_worker=0): two Ray actors each
    load the model, write their vector parts, and the store's process commits."""
    import ray

    coco, _ = make_coco(tmp_path / "imgs")
    got = {}
    for name, opts in (("inline", RunOptions(batch_size=5, progress=False)),
                       ("ray", RunOptions(batch_size=5, progress=False, workers=2, executor="ray"))):
        with Store.init(tmp_path / name) as store:
            ingest(store, "coco", coco, "coco")
            out = embed(store, tiny_stage(tiny), opts)
            assert out["run"].rows_in == 24 and out["images"] == 8
            vecs = {}
            for set_name in V.list_sets(store):
                vs = V.open_set(store, set_name)
                vecs[set_name] = dict(zip(vs.ids().to_pylist(), np.concatenate(vs.arrays()).tolist()))
            got[name] = (scores(store), vecs)
            assert not list((store.path / "vectors" / ".parts").rglob("*.npy"))
    assert not ray.is_initialized()
    assert got["ray"][0].keys() == got["inline"][0].keys()
    for cid, (score, status, detail) in got["inline"][0].items():
        r_score, r_status, r_detail = got["ray"][0][cid]
        assert (r_status, r_detail) == (status, detail)
        assert (score is None and r_score is None) or abs(score - r_score) < 1e-5
    assert got["ray"][1].keys() == got["inline"][1].keys()
    for set_name, vecs in got["inline"][1].items():
        assert got["ray"][1][set_name].keys() == vecs.keys()
        for k, v in vecs.items():
            np.testing.assert_allclose(got["ray"][1][set_name][k], v, atol=1e-3)


def test_img2dataset_shards_decode_workers_and_new_rows_extend_the_sets(tmp_path, tiny):
    """webdataset tars, parquet image bytes and files from real img2dataset output; a
    second source added later extends the registered sets."""
    direct = Direct(tiny)
    with Store.init(tmp_path / "s") as store:
        ingest(store, "img2dataset", TEST_DATA / "img2dataset" / "webdataset", "wds")
        ingest(store, "img2dataset", TEST_DATA / "img2dataset" / "parquet", "pq")
        out = embed(store, tiny_stage(tiny, decode_workers=2), RunOptions(batch_size=4, progress=False))
        # a download with an empty caption is a sample without captions: clip.score.v1 has no row for it
        n_samples = store.con.execute("SELECT count(DISTINCT uid) FROM captions").fetchall()[0][0]
        assert out["images"] == n_samples == store.count("samples") - 1
        rows = store.con.execute(
            "SELECT s.image_shard, s.image_key, c.text, k.score, k.status FROM clip_scores k "
            "JOIN captions c USING (caption_id) JOIN samples s ON s.uid = k.uid").fetchall()
        assert rows and all(r[4] == "ok" for r in rows)
        for shard, key, text, score, _ in rows:
            if shard.endswith(".tar"):
                with tarfile.open(shard) as tf:
                    data = tf.extractfile(f"{key}.jpg").read()
            else:
                t = pq.read_table(shard, columns=["key", "jpg"]).to_pylist()
                data = next(r["jpg"] for r in t if r["key"] == key)
            assert abs(score - float(direct.image(data) @ direct.text(text))) < 1e-3
        assert V.open_set(store, "clip.tiny-seed1234.image").count == n_samples

        ingest(store, "img2dataset", TEST_DATA / "img2dataset" / "files", "files")
        more = embed(store, tiny_stage(tiny), RunOptions(batch_size=4, progress=False))
        assert more["run"].rows_in == store.count("captions") - len(rows)
        assert V.open_set(store, "clip.tiny-seed1234.image").count == \
            store.con.execute("SELECT count(DISTINCT uid) FROM captions").fetchall()[0][0]
        assert V.open_set(store, "clip.tiny-seed1234.text.raw").count == store.count("captions")


def test_image_stage_and_hf_parquet_and_row_numbers(tmp_path, tiny):
    """clip.embed_image.v1 over samples; HF-style image structs addressed by key or #row."""
    coco, files = make_coco(tmp_path / "imgs", n_good=3)
    hf = tmp_path / "hf.parquet"
    blobs = list(files.values())
    pq.write_table(pa.table({
        "key": ["a", "b", "c"],
        "image": pa.array([{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(blobs)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}), hf)
    got = read_images([ImageRef(image_shard=str(hf), image_key="b"), ImageRef(image_shard=str(hf), image_key="#2"),
                       ImageRef(image_shard=str(hf), image_key="#7"), ImageRef(image_shard=str(hf), image_key="zz"),
                       ImageRef()])
    assert got[0] == blobs[1] and got[1] == blobs[2]
    assert got[2] == ImageFailure("image not found", "hf.parquet: no image for key #7")
    assert got[3].reason == "image not found" and got[4].reason == "no image"
    with Store.init(tmp_path / "s") as store:
        ingest(store, "coco", coco, "coco")
        out = embed(store, tiny_stage(tiny, cls=ClipImage), RunOptions(batch_size=3, progress=False))
        st = dict(store.con.execute("SELECT status, count(*) FROM clip_images GROUP BY 1").fetchall())
        assert st == {"ok": 3, "undecodable": 3, "image not found": 1}
        assert out["images"] == 3 and V.open_set(store, "clip.tiny-seed1234.image").count == 3


KILL_SCRIPT = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(message)s")
    import open_clip
    from curate import Store
    from curate.runner import RunOptions
    from curate.stages.clip import ClipScore, embed
    store_path, model, ckpt, cfg = sys.argv[1:5]
    stage = ClipScore(model=model, pretrained=ckpt, model_config=cfg, model_id="tiny/seed1234", decode_workers=0)
    with Store.open(store_path) as s:
        out = embed(s, stage, RunOptions(batch_size=4, progress=False))
        print("done", out["run"].rows_in, flush=True)
""")


def _snapshot(path: Path):
    with Store.open(path) as s:
        rows = sorted(s.con.execute(
            "SELECT caption_id::VARCHAR, uid::VARCHAR, variant, model, score, status, detail, config_hash "
            "FROM clip_scores").fetchall())
        sets = {}
        for name in V.list_sets(s):
            vs = V.open_set(s, name)
            ids = vs.ids().to_pylist()
            arr = np.concatenate(vs.arrays()).astype(np.float32)
            sets[name] = {i: arr[k] for k, i in enumerate(ids)}
        return rows, sets


def test_sigkill_mid_run_resumes_to_the_same_result(tmp_path, tiny):
    coco, _ = make_coco(tmp_path / "imgs", n_good=40)
    for name in ("killed", "clean"):
        with Store.init(tmp_path / name) as s:
            ingest(s, "coco", coco, "coco")
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    args = [sys.executable, str(script), "", tiny["model"], tiny["pretrained"], tiny["model_config"]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args[2] = str(tmp_path / "killed")
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    committed, deadline = 0, time.time() + 120
    assert proc.stderr is not None
    for line in proc.stderr:
        if "committed batch" in line:
            committed += 1
            if committed == 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
        assert time.time() < deadline, "the stage never got going"
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with Store.open(tmp_path / "killed") as s:
        partial = s.count("clip_scores")
        assert 12 <= partial < 88, partial
        assert V.list_sets(s) == []  # nothing registered yet: the vectors are parts
    parts = list((tmp_path / "killed" / "vectors" / ".parts").rglob("*.parquet"))
    assert parts

    args[2] = str(tmp_path / "killed")
    rerun = subprocess.run(args, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"done {88 - partial}" in rerun.stdout
    args[2] = str(tmp_path / "clean")
    clean = subprocess.run(args, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert clean.returncode == 0, clean.stderr[-2000:]

    k_rows, k_sets = _snapshot(tmp_path / "killed")
    c_rows, c_sets = _snapshot(tmp_path / "clean")
    assert len(k_rows) == len(c_rows) == 88
    for a, b in zip(k_rows, c_rows):
        assert a[:4] == b[:4] and a[5:] == b[5:]
        assert (a[4] is None and b[4] is None) or abs(a[4] - b[4]) < 1e-5
    assert k_sets.keys() == c_sets.keys() == {"clip.tiny-seed1234.image", "clip.tiny-seed1234.text.human"}
    for name in k_sets:
        assert k_sets[name].keys() == c_sets[name].keys()
        for i, v in k_sets[name].items():
            np.testing.assert_allclose(v, c_sets[name][i], atol=1e-3)
    with Store.open(tmp_path / "killed") as s:
        assert s.con.execute("SELECT status FROM runs WHERE kind = 'stage' ORDER BY run_id").fetchall() == \
            [("interrupted",), ("ok",)]
    assert not list((tmp_path / "killed" / "vectors" / ".parts").rglob("*.npy"))


def test_orphan_parts_are_ignored_and_removed(tmp_path, tiny):
    """A part whose rows never committed (a kill between the part and the commit) is not
    registered; finalising removes it."""
    coco, _ = make_coco(tmp_path / "imgs", n_good=2)
    with Store.init(tmp_path / "s") as store:
        ingest(store, "coco", coco, "coco")
        stage = tiny_stage(tiny).prepare(store)
        from curate.stages.clip import write_part

        fake = "00000000-0000-0000-0000-000000000001"
        write_part(Path(stage.parts_dir), "img-orphan", "uid", [fake], np.ones((1, 32), np.float32))
        embed(store, tiny_stage(tiny), RunOptions(batch_size=50, progress=False))
        img = V.open_set(store, "clip.tiny-seed1234.image")
        assert fake not in img.ids().to_pylist() and img.count == 2
        assert not (Path(stage.parts_dir) / "img-orphan.parquet").exists()
        assert finalize_vectors(store, tiny_stage(tiny)) == []


def test_an_unreachable_hub_fails_at_once_without_hf_hub_offline(tmp_path, monkeypatch):
    import socket

    with socket.socket() as probe:  # a local port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot be reached.*pretrained = \"/path/open_clip_pytorch_model.bin\""):
        ClipScore().preflight()
    assert time.perf_counter() - t0 < 10


def test_offline_and_bad_model_configs_fail_before_work(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError) as e:
        ClipScore().preflight()
    msg = str(e.value)
    assert "\n" not in msg and "ViT-B-32/laion2b_s34b_b79k" in msg
    assert 'pretrained = "/path/open_clip_pytorch_model.bin"' in msg
    with pytest.raises(ConfigError, match="no pretrained tag 'nope'"):
        ClipScore(pretrained="nope").preflight()
    with pytest.raises(ConfigError, match="does not exist"):
        ClipScore(pretrained=str(tmp_path / "missing.bin")).preflight()
    with pytest.raises(ConfigError, match="has no model 'ViT-Q-99'"):
        ClipScore(model="ViT-Q-99").preflight()
    with pytest.raises(ConfigError, match="device must be"):
        ClipScore.from_config({"device": "tpu"})
    # settings that change no number keep the config hash (a resume on another device continues)
    a = tiny_stage(tiny)
    assert a.config_hash() == tiny_stage(tiny, cls=ClipScore, model_batch_size=7, threads=1).config_hash()
    assert a.config_hash() != ClipScore(model=tiny["model"], pretrained=tiny["pretrained"]).config_hash()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the CPU twin is tested above)")
def test_cuda_autocast_matches_cpu(tmp_path, tiny):  # pragma: no cover - GPU machines only
    coco, _ = make_coco(tmp_path / "imgs", n_good=4)
    res = {}
    for dev in ("cpu", "cuda"):
        with Store.init(tmp_path / dev) as s:
            ingest(s, "coco", coco, "coco")
            embed(s, tiny_stage(tiny, device=dev), RunOptions(batch_size=8, progress=False))
            res[dev] = scores(s)
    for k, v in res["cpu"].items():
        if v[0] is not None:
            assert abs(v[0] - res["cuda"][k][0]) < 2e-2
