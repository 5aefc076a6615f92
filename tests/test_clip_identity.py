"""CLIP model identity (curate/stages/clip.py): a checkpoint is known by the sha256 of its
bytes, cached by (resolved path, size, mtime_ns) in the store's tmp/; an open_clip tag
keeps its tag identity (old stores' hashes unchanged) and records the cached file's
hash; each run records the device it used and the weights' hash.

On the tiny seeded open_clip model of tests/test_clip.py, saved as real checkpoint files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from curate import Store
from curate.errors import ConfigError
from curate.ingest import ingest
from curate.runner import RunOptions

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from curate import vectors as V  # noqa: E402 - only once torch and open_clip are known to import
from curate.stages.clip import ClipImage, ClipScore, embed  # noqa: E402 - as above
from tests.test_clip import REPO, Direct, make_coco, scores, tiny, tiny_stage  # noqa: E402,F401 - `tiny` is a fixture

OPTS = RunOptions(batch_size=5, progress=False)
#: the weights digest cache, under the store's tmp/
WEIGHTS_CACHE = "weights-sha256.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_weights(tiny: dict, path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(tiny["model"], pretrained=None).state_dict(), path)


def set_vectors(store: Store, name: str) -> dict[str, np.ndarray]:
    vs = V.open_set(store, name)
    return dict(zip(vs.ids().to_pylist(), np.concatenate(vs.arrays()).astype(np.float32)))


def stage_runs(store: Store) -> list[tuple]:
    return store.con.execute(
        "SELECT run_id, config_hash, json_extract_string(config, '$.config.pretrained'), "
        "json_extract_string(config, '$.config.weights_sha256'), json_extract_string(config, '$.config.device'), "
        "json_extract_string(config, '$.config.device_used') FROM runs WHERE kind = 'stage' ORDER BY run_id"
    ).fetchall()


def test_overwritten_weights_are_new_weights_scores_and_vectors(tmp_path, tiny, caplog):
    """Before: the second embed found 0 pending rows (the hash was of the path) and the
    store kept the old scores and vectors."""
    coco, files = make_coco(tmp_path / "imgs", n_good=4)
    w = tmp_path / "w.bin"
    save_weights(tiny, w, 1)
    t = {**tiny, "pretrained": str(w)}
    with Store.init(tmp_path / "s") as store:
        ingest(store, "coco", coco, "coco")
        first = embed(store, tiny_stage(t), OPTS)
        assert first["run"].pending_before == 16
        first_sha = sha256(w)
        shutil.copy(w, tmp_path / "first.bin")
        old_scores = scores(store)
        old_img = set_vectors(store, "clip.tiny-seed1234.image")

        before = w.stat()
        save_weights(tiny, w, 2)  # the same file name, size and model; other weights
        assert w.stat().st_size == before.st_size and w.stat().st_mtime_ns != before.st_mtime_ns
        direct = Direct(t)  # plain open_clip on the new bytes: the oracle
        second = embed(store, tiny_stage(t), OPTS)
        assert second["run"].pending_before == 16 and second["run"].config_hash != first["run"].config_hash
        assert (first["weights_sha256"], second["weights_sha256"]) == (first_sha, sha256(w))

        # the latest rows are the new weights' scores
        latest = dict(store.con.execute(
            "SELECT caption_id::VARCHAR, score FROM clip_scores_latest WHERE status = 'ok'").fetchall())
        texts = dict(store.con.execute("SELECT caption_id::VARCHAR, text FROM captions").fetchall())
        paths = dict(store.con.execute(
            "SELECT c.caption_id::VARCHAR, s.image_path FROM captions c JOIN samples s USING (uid)").fetchall())
        assert len(latest) == 8
        for cid, score in latest.items():
            want = float(direct.image(files[paths[cid]]) @ direct.text(texts[cid]))
            assert abs(score - want) < 1e-3
            assert abs(score - old_scores[cid][0]) > 1e-6

        # the vector sets hold the new weights' vectors only (replaced, not merged with the old ones)
        img = set_vectors(store, "clip.tiny-seed1234.image")
        assert img.keys() == old_img.keys() and len(img) == 4
        uid_path = dict(store.con.execute("SELECT uid::VARCHAR, image_path FROM samples").fetchall())
        for uid, vec in img.items():
            np.testing.assert_allclose(vec, direct.image(files[uid_path[uid]]), atol=2e-3)
            assert not np.allclose(vec, old_img[uid], atol=1e-3)
        txt = set_vectors(store, "clip.tiny-seed1234.text.human")
        assert len(txt) == 16
        for cid, vec in txt.items():
            np.testing.assert_allclose(vec, direct.text(texts[cid]), atol=2e-3)
        replaced = store.con.execute(
            "SELECT json_extract(r.config, '$.config.replaced')::BOOLEAN FROM vector_sets v JOIN runs r USING (run_id) "
            "WHERE v.name = 'clip.tiny-seed1234.image'").fetchall()
        assert replaced == [(True,)]

        # the first bytes back: their rows are committed (nothing pending, and they are the
        # latest again), but their vectors were replaced; finalising says so
        shutil.copy(tmp_path / "first.bin", w)
        with caplog.at_level(logging.WARNING, logger="curate.clip"):
            third = embed(store, tiny_stage(t), OPTS)
        assert third["run"].pending_before == 0 and third["run"].config_hash == first["run"].config_hash
        assert dict(store.con.execute("SELECT caption_id::VARCHAR, score FROM clip_scores_latest WHERE status = 'ok'"
                                      ).fetchall()) == {k: v[0] for k, v in old_scores.items() if v[1] == "ok"}
        warned = [r.getMessage() for r in caplog.records if "have no vector" in r.getMessage()]
        assert len(warned) == 2 and warned[0].startswith("vector set clip.tiny-seed1234.image: 4 committed rows of "
                                                         "tiny/seed1234 (clip.score.v1, config ")
        assert warned[1].startswith("vector set clip.tiny-seed1234.text.human: 16 committed rows")


def test_a_relative_and_an_absolute_path_are_one_model(tmp_path, tiny, monkeypatch):
    """Before: the relative path was another configuration and all 16 rows ran again."""
    coco, _ = make_coco(tmp_path / "imgs", n_good=4)
    (tmp_path / "weights").mkdir()
    w = tmp_path / "weights" / "tiny.bin"
    shutil.copy(tiny["pretrained"], w)
    with Store.init(tmp_path / "s") as store:
        ingest(store, "coco", coco, "coco")
        first = embed(store, tiny_stage({**tiny, "pretrained": str(w)}), OPTS)
        assert first["run"].rows_in == 16
        monkeypatch.chdir(tmp_path / "weights")
        for rel in ("tiny.bin", "./tiny.bin", "../weights/tiny.bin"):
            again = embed(store, tiny_stage({**tiny, "pretrained": rel}), OPTS)
            assert again["run"].pending_before == 0 and again["run"].config_hash == first["run"].config_hash, rel
            assert again["sets"] == []
        assert store.count("clip_scores") == 16
        # every run records the file resolved, and its hash
        assert {r[2:4] for r in stage_runs(store)} == {(str(w.resolve()), sha256(w))}


def test_runs_record_the_device_used_and_the_weights_hash(tmp_path, tiny, capsys):
    """Before: the run's config said device "auto" and named the weights by path only."""
    from tests.test_cli import curate as cli

    coco, _ = make_coco(tmp_path / "imgs", n_good=2)
    store = tmp_path / "s"
    with Store.init(store) as s:
        ingest(s, "coco", coco, "coco")
        embed(s, tiny_stage(tiny), OPTS)  # device "auto"
        embed(s, tiny_stage(tiny, cls=ClipImage, device="cpu"), OPTS)
    auto = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    rc, out, err = cli(capsys, "sql", "SELECT stage, json_extract_string(config, '$.config.device') AS asked, "
                       "json_extract_string(config, '$.config.device_used') AS device, "
                       "json_extract_string(config, '$.config.weights_sha256') AS sha256 FROM runs "
                       "WHERE kind = 'stage' ORDER BY run_id", "-f", "csv", "--store", store)
    assert rc == 0, err
    digest = sha256(Path(tiny["pretrained"]))
    assert out.splitlines() == ["stage,asked,device,sha256", f"clip.score.v1,auto,{auto},{digest}",
                                f"clip.embed_image.v1,cpu,cpu,{digest}"]
    # the vector writes record the weights' hash and model identity too
    with Store.open(store, read_only=True) as s:
        got = s.con.execute("SELECT DISTINCT json_extract_string(r.config, '$.config.weights_sha256') FROM vector_sets "
                            "v JOIN runs r USING (run_id)").fetchall()
    assert got == [(digest,)]


def test_the_weights_hash_is_cached_in_the_store_by_path_size_and_mtime(tmp_path, tiny):
    w = tmp_path / "w.bin"
    shutil.copy(tiny["pretrained"], w)
    t = {**tiny, "pretrained": str(w)}
    with Store.init(tmp_path / "s") as store:
        cache = store.path / "tmp" / WEIGHTS_CACHE
        assert not cache.exists()
        assert tiny_stage(t).prepare(store).weights_sha256 == sha256(w)
        st = w.stat()
        entry = json.loads(cache.read_text())["files"][str(w.resolve())]
        assert entry == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256(w)}

        # an entry matching (path, size, mtime_ns) is believed: the file is not read again
        planted = "ab" * 32
        cache.write_text(json.dumps({"version": 1, "files": {str(w.resolve()): {**entry, "sha256": planted}}}))
        prepared = tiny_stage(t).prepare(store)
        assert prepared.weights_sha256 == planted and prepared.config_hash() != tiny_stage(t).config_hash()
        # another mtime: hashed again, and the entry replaced
        os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert tiny_stage(t).prepare(store).weights_sha256 == sha256(w)
        assert json.loads(cache.read_text())["files"][str(w.resolve())]["mtime_ns"] == st.st_mtime_ns + 1_000_000_000
        # a cache that is not JSON is rebuilt, not an error
        cache.write_text("{not json")
        assert tiny_stage(t).prepare(store).weights_sha256 == sha256(w)
        assert json.loads(cache.read_text())["files"][str(w.resolve())]["sha256"] == sha256(w)


def test_a_given_weights_sha256_is_checked(tmp_path, tiny):
    with Store.init(tmp_path / "s") as store:
        good = sha256(Path(tiny["pretrained"]))
        assert tiny_stage(tiny, weights_sha256=good).prepare(store).weights_sha256 == good
        with pytest.raises(ConfigError, match=f"have sha256 {good}, but the configuration asks for "
                                              f"weights_sha256 = {'0' * 64}"):
            tiny_stage(tiny, weights_sha256="0" * 64).prepare(store)
    with pytest.raises(ConfigError, match="weights_sha256 must be 64 lowercase hex digits"):
        ClipScore.from_config({"weights_sha256": "xyz"})


TAG_SCRIPT = textwrap.dedent("""
    import json, sys
    from curate import Store
    from curate.stages.clip import ClipScore
    with Store.init(sys.argv[1]) as store:
        out = {}
        for tag in ("laion2b_s34b_b79k", "openai"):
            p = ClipScore(pretrained=tag).prepare(store)
            out[tag] = [p.weights_sha256, p.config_hash(), p.pretrained]
        print(json.dumps(out))
""")


def test_named_tags_keep_their_identity_and_record_the_cached_files_hash(tmp_path):
    """The config hash of a tag configuration is what it was before checkpoints were
    hashed by content (values computed by the code as it was), so the rows of old stores
    stay current; prepare() records the sha256 of the file open_clip would load from the
    Hugging Face cache, laid out as huggingface_hub lays it out."""
    assert ClipScore().config_hash() == "8b0965462596f044"
    assert ClipScore(pretrained="openai").config_hash() == "b0863e506cfb9796"
    assert ClipImage().config_hash() == "af0e6a975a59d0f7"
    assert ClipScore(model="ViT-B-16", pretrained="openai", model_id="b16", device="cuda",
                     precision="fp16").config_hash() == "82ccf9373a7b4e1a"

    hub = tmp_path / "hub"
    repo = hub / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    weights = repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors"
    weights.write_bytes(b"the bytes of a cached weights file")
    script = tmp_path / "tags.py"
    script.write_text(TAG_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "s")], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["laion2b_s34b_b79k"] == [sha256(weights), "8b0965462596f044", "laion2b_s34b_b79k"]
    assert got["openai"] == [None, "b0863e506cfb9796", "openai"]  # nothing cached for it here


#: main before weights were known by content: the code that wrote "old" stores
OLD_COMMIT = "5c7462c"
OLD_SCRIPT = textwrap.dedent("""
    import sys
    from curate import Store
    from curate.ingest import ingest
    from curate.runner import RunOptions
    from curate.stages.clip import ClipScore, embed
    store, coco, model, ckpt, cfg = sys.argv[1:6]
    with Store.init(store) as s:
        ingest(s, "coco", coco, "coco")
        stage = ClipScore(model=model, pretrained=ckpt, model_config=cfg, model_id="tiny/seed1234", decode_workers=0)
        print(embed(s, stage, RunOptions(batch_size=5, progress=False))["run"].rows_in)
""")


def test_a_store_written_before_content_identity_stays_readable(tmp_path, tiny):
    """A store written by the code as it was (run here from git): its rows are read as
    they were; the first embed of the same checkpoint embeds it once more under the
    content identity (which bytes the old rows came from is unknown) and replaces the
    old-style vector set; after that, nothing is pending."""
    import io
    import tarfile

    got = subprocess.run(["git", "-C", str(REPO), "archive", OLD_COMMIT, "curate", "sql"], capture_output=True,
                         check=False)
    if got.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT} is not in this checkout's history")
    with tarfile.open(fileobj=io.BytesIO(got.stdout)) as tf:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tf.extractall(tmp_path / "old", filter="data")
        else:  # pragma: no cover - older 3.11 releases
            tf.extractall(tmp_path / "old")
    coco, _ = make_coco(tmp_path / "imgs", n_good=4)
    store = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "old")}
    script = tmp_path / "old.py"
    script.write_text(OLD_SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(store), str(coco), tiny["model"], tiny["pretrained"],
                          tiny["model_config"]], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert run.returncode == 0 and run.stdout.split()[-1] == "16", run.stderr[-2000:]

    with Store.open(store) as s:
        old_rows = scores(s)
        assert len(old_rows) == 16
        assert s.con.execute("SELECT count(*) FROM clip_scores_latest").fetchall() == [(16,)]
        assert {r["status"]: r["captions"] for r in s.query("clip.status").to_arrow_table().to_pylist()} == \
            {"ok": 8, "undecodable": 6, "image not found": 2}
        old_img = set_vectors(s, "clip.tiny-seed1234.image")

        again = embed(s, tiny_stage(tiny), OPTS)
        assert again["run"].pending_before == 16  # once, under the content identity
        assert s.count("clip_scores") == 32
        latest = dict(s.con.execute("SELECT caption_id::VARCHAR, score FROM clip_scores_latest").fetchall())
        assert latest.keys() == old_rows.keys()
        for cid, (score, _, _) in old_rows.items():  # the same bytes: the same numbers
            assert (score is None and latest[cid] is None) or abs(score - latest[cid]) < 1e-5
        img = set_vectors(s, "clip.tiny-seed1234.image")
        assert img.keys() == old_img.keys()
        for uid, vec in img.items():
            np.testing.assert_allclose(vec, old_img[uid], atol=1e-3)
        assert embed(s, tiny_stage(tiny), OPTS)["run"].pending_before == 0
