"""CLIP throughput: curate's stages vs a plain open_clip loop over the same files.

    .venv/bin/python benchmarks/bench_clip.py [--images 512] [--model ViT-B-32] [--batch 64]

No weights can be downloaded here, so the model is the real architecture (ViT-B-32 by
default) with seeded random weights saved as a local checkpoint: speed depends on the
architecture, not on the weights. Images are generated JPEGs (256x256, smooth gradients
plus noise, about 20 KB each), two captions each, ingested as a COCO captions file.

Each mode runs in its own process (so peak RSS is its own; decode workers' RSS is
counted through RUSAGE_CHILDREN):

* ``plain``: PIL open -> open_clip preprocess -> ``encode_image`` in batches, then
  ``tokenizer`` -> ``encode_text`` in batches; no store, no writes;
* ``curate-images``: ``clip.embed_image.v1`` (read, DataLoader decode, embed, parts,
  row commits, vector set registration);
* ``curate-score``: ``clip.score.v1`` (both towers, scores, text sets per variant).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_data(folder: Path, n: int, model: str) -> None:
    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    y, x = np.mgrid[0:256, 0:256]
    for i in range(n):
        base = (np.stack([x * rng.uniform(0.3, 1), y * rng.uniform(0.3, 1), (x + y) * rng.uniform(0.1, 0.5)], -1)
                + rng.normal(0, 12, (256, 256, 3)))
        p = folder / f"img{i:05d}.jpg"
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(p, quality=90)
        images.append({"id": i, "file_name": str(p)})
        anns.append({"id": 2 * i, "image_id": i, "caption": f"a photo of object number {i} on a table"})
        anns.append({"id": 2 * i + 1, "image_id": i, "caption": f"gradient picture {i} with some noise, outdoors"})
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    torch.manual_seed(0)
    torch.save(open_clip.create_model(model, pretrained=None).state_dict(), folder / "model.bin")


def plain(folder: Path, model: str, batch: int) -> dict:
    import open_clip
    import torch
    from PIL import Image

    m, _, pre = open_clip.create_model_and_transforms(model, pretrained=str(folder / "model.bin"))
    m.eval()
    tok = open_clip.get_tokenizer(model)
    doc = json.loads((folder / "captions.json").read_text())
    files = [im["file_name"] for im in doc["images"]]
    texts = [a["caption"] for a in doc["annotations"]]
    t0 = time.perf_counter()
    out = []
    with torch.inference_mode():
        for s in range(0, len(files), batch):
            x = torch.stack([pre(Image.open(f).convert("RGB")) for f in files[s:s + batch]])
            e = m.encode_image(x)
            out.append(e / e.norm(dim=-1, keepdim=True))
    t_img = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(texts), batch):
            e = m.encode_text(tok(texts[s:s + batch]))
            out.append(e / e.norm(dim=-1, keepdim=True))
    t_txt = time.perf_counter() - t0
    return {"images": len(files), "texts": len(texts), "image_s": t_img, "text_s": t_txt, "total_s": t_img + t_txt}


def curate_run(folder: Path, model: str, batch: int, images_only: bool, decode_workers: int) -> dict:
    import shutil

    from curate import Store
    from curate.ingest import ingest
    from curate.runner import RunOptions
    from curate.stages.clip import ClipImage, ClipScore, embed

    store_dir = folder / ("store-images" if images_only else "store-score")
    shutil.rmtree(store_dir, ignore_errors=True)
    with Store.init(store_dir) as s:
        ingest(s, "coco", folder / "captions.json", "bench")
        cls = ClipImage if images_only else ClipScore
        stage = cls(model=model, pretrained=str(folder / "model.bin"), model_batch_size=batch,
                    decode_workers=decode_workers)
        t0 = time.perf_counter()
        out = embed(s, stage, RunOptions(batch_size=4 * batch, progress=False))
        total = time.perf_counter() - t0
    return {"images": out["images"], "texts": out["texts"], "total_s": total, "run_s": out["seconds"]}


def child(args: argparse.Namespace) -> None:
    import torch

    t0 = time.perf_counter()
    if args.mode == "plain":
        res = plain(args.folder, args.model, args.batch)
    else:
        res = curate_run(args.folder, args.model, args.batch, args.mode == "curate-images", args.decode_workers)
    res["wall_s"] = time.perf_counter() - t0
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["children_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    res["torch_threads"] = torch.get_num_threads()
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--decode-workers", type=int, default=-1)
    ap.add_argument("--folder", type=Path, default=Path("/tmp/curate-bench-clip"))
    ap.add_argument("--mode", choices=["plain", "curate-images", "curate-score"])
    args = ap.parse_args()
    if args.mode:
        return child(args)
    marker = args.folder / f"made-{args.images}-{args.model}"
    if not marker.exists():
        make_data(args.folder, args.images, args.model)
        marker.write_text("")
    load0 = f"{os.getloadavg()[0]:.2f}"
    results: dict[str, dict] = {}
    # plain runs first and last (the better one counts): the machine may be shared
    for mode in ("plain", "curate-images", "curate-score", "plain"):
        cmd = [sys.executable, __file__, "--mode", mode, "--images", str(args.images), "--model", args.model,
               "--batch", str(args.batch), "--decode-workers", str(args.decode_workers), "--folder", str(args.folder)]
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if p.returncode:
            sys.exit(f"{mode} failed: {p.stderr[-2000:]}")
        res = json.loads(p.stdout.strip().splitlines()[-1])
        if mode not in results or res["total_s"] < results[mode]["total_s"]:
            results[mode] = res
    pl, ci, cs = results["plain"], results["curate-images"], results["curate-score"]
    print(f"model {args.model} (random weights), {args.images} images 256x256 JPEG, {pl['texts']} captions, "
          f"batch {args.batch}, {os.cpu_count()} cores, torch threads {pl['torch_threads']}")
    print(f"load average before/after: {load0} / {os.getloadavg()[0]:.2f}")
    print(f"{'mode':<16}{'images/s':>10}{'texts/s':>10}{'seconds':>10}{'peak RSS MB':>13}{'+children':>11}")
    print(f"{'plain images':<16}{pl['images'] / pl['image_s']:>10.1f}{'':>10}{pl['image_s']:>10.1f}"
          f"{pl['peak_rss_mb']:>13.0f}{pl['children_peak_rss_mb']:>11.0f}")
    print(f"{'plain texts':<16}{'':>10}{pl['texts'] / pl['text_s']:>10.1f}{pl['text_s']:>10.1f}")
    print(f"{'plain both':<16}{pl['images'] / pl['total_s']:>10.1f}{pl['texts'] / pl['total_s']:>10.1f}"
          f"{pl['total_s']:>10.1f}")
    print(f"{'curate images':<16}{ci['images'] / ci['total_s']:>10.1f}{'':>10}{ci['total_s']:>10.1f}"
          f"{ci['peak_rss_mb']:>13.0f}{ci['children_peak_rss_mb']:>11.0f}")
    print(f"{'curate score':<16}{cs['images'] / cs['total_s']:>10.1f}{cs['texts'] / cs['total_s']:>10.1f}"
          f"{cs['total_s']:>10.1f}{cs['peak_rss_mb']:>13.0f}{cs['children_peak_rss_mb']:>11.0f}")
    print(f"ratio curate/plain: images {pl['image_s'] / ci['total_s']:.2f}x, "
          f"images+texts {pl['total_s'] / cs['total_s']:.2f}x (1.0 = as fast as the plain loop)")


if __name__ == "__main__":
    main()
