"""In-process captioning throughput: curate's LocalCaptioner vs the plain transformers
loop a user would write, on the same images with the same generation settings.

    .venv/bin/python benchmarks/bench_caption_local.py [--images 256] [--batch 16] [--reps 3]
        [--max-new-tokens 20] [--min-new-tokens 0] [--model PATH] [--device cpu]

Default model: the tiny random BLIP of ``tests/tinycaptioner.py`` (hidden size 32, 32 px),
written to the data folder. Its forward passes cost almost nothing, so with it the
benchmark measures the captioner's overhead (decode, processor, generate's Python loop,
bookkeeping), not a model's speed. ``--model PATH`` takes a real checkpoint folder
(``hf download Salesforce/blip-image-captioning-base --local-dir PATH``).

Images: generated JPEGs (320x240, gradients plus noise, about 20 KB), read into memory
before timing; both sides decode the same bytes with PIL. Each rep runs each side in a
fresh process (its peak RSS is its own), alternating plain / local; the model is loaded
and one batch warms up before the clock starts. The sides:

* ``plain``: ``AutoProcessor`` + ``AutoModelForImageTextToText`` (BLIP resolves to
  ``BlipForConditionalGeneration``), per batch: PIL decode -> processor -> ``generate``
  under ``torch.inference_mode`` -> ``batch_decode``;
* ``local``: ``LocalCaptioner(...).caption(images)`` (same batch size, max/min new tokens,
  greedy), with its per-image error handling, token counts and finish reasons.

Both sides' captions are hashed: the line ``same captions: True`` is the oracle.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_images(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320]
    for i in range(n):
        base = (np.stack([x * rng.uniform(0.2, 0.8), y * rng.uniform(0.3, 1), (x + y) * rng.uniform(0.1, 0.5)], -1)
                + rng.normal(0, 14, (240, 320, 3)))
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(folder / f"img{i:05d}.jpg", quality=90)


def load_images(folder: Path, n: int) -> list[bytes]:
    return [(folder / f"img{i:05d}.jpg").read_bytes() for i in range(n)]


def run_plain(model: str, images: list[bytes], args: argparse.Namespace) -> tuple[list[str], float]:
    import io

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = args.device
    processor = AutoProcessor.from_pretrained(model)
    m = AutoModelForImageTextToText.from_pretrained(model).to(device).eval()

    def batch(chunk: list[bytes]) -> list[str]:
        pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in chunk]
        kw = {"text": [args.prompt] * len(pil)} if args.prompt else {}
        inputs = processor(images=pil, return_tensors="pt", **kw).to(device)
        with torch.inference_mode():
            out = m.generate(**inputs, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens)
        return processor.batch_decode(out, skip_special_tokens=True)

    batch(images[:args.batch])  # warm-up
    t0 = time.perf_counter()
    texts = []
    for s in range(0, len(images), args.batch):
        texts += batch(images[s:s + args.batch])
    seconds = time.perf_counter() - t0
    if args.prompt:  # the plain loop's texts start with the prompt; LocalCaptioner returns the rest
        texts = [t.strip().removeprefix(args.prompt.lower()) for t in texts]
    return [t.strip() for t in texts], seconds


def run_local(model: str, images: list[bytes], args: argparse.Namespace) -> tuple[list[str], float]:
    from curate.generate.local import LocalCaptioner

    cap = LocalCaptioner(model, device=args.device, batch_size=args.batch, max_new_tokens=args.max_new_tokens,
                         min_new_tokens=args.min_new_tokens, prompt=args.prompt)
    cap.caption(images[:args.batch])  # warm-up
    t0 = time.perf_counter()
    res = cap.caption(images)
    seconds = time.perf_counter() - t0
    bad = [r.error for r in res if r.error]
    if bad:
        sys.exit(f"local: {len(bad)} images failed, first: {bad[0]}")
    return [r.text or "" for r in res], seconds


def child(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    images = load_images(args.data / "images", args.images)
    run = run_plain if args.mode == "plain" else run_local
    texts, seconds = run(str(args.model_path), images, args)
    print(json.dumps({
        "kind": args.mode, "images": len(images), "seconds": round(seconds, 3),
        "images_per_s": round(len(images) / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch_threads": torch.get_num_threads(),
        "captions_md5": hashlib.md5("\n".join(texts).encode()).hexdigest()[:12],
        "distinct_captions": len(set(texts)),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--min-new-tokens", type=int, default=0)
    ap.add_argument("--prompt", default=None)
    ap.add_argument("--model", type=Path, default=None, help="a checkpoint folder (default: the tiny random BLIP)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads on both sides (0: torch's default)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/curate-bench-caption-local"))
    ap.add_argument("--mode", choices=["plain", "local"], help=argparse.SUPPRESS)
    ap.add_argument("--model-path", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return child(args)

    made = args.data / "images" / f"made-{args.images}"
    if not made.exists():
        make_images(args.data / "images", args.images)
        made.write_text("")
    if args.model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from tinycaptioner import write_tiny_blip

        model_path = args.data / "tiny-blip"
        if not (model_path / "model.safetensors").exists():
            write_tiny_blip(model_path, seed=0)
        what = "tiny random BLIP (tests/tinycaptioner.py): measures the captioner's overhead, not model speed"
    else:
        model_path = args.model
        what = f"{model_path}"
    print(f"model: {what}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; device {args.device}; {args.images} images 320x240 JPEG, "
          f"batch {args.batch}, torch threads {args.threads or 'default'}, max_new_tokens {args.max_new_tokens}, min_new_tokens {args.min_new_tokens}")
    load0 = os.getloadavg()[0]
    best: dict[str, dict] = {}
    md5s: dict[str, set] = {"plain": set(), "local": set()}
    for _ in range(args.reps):
        for mode in ("plain", "local"):
            cmd = [sys.executable, __file__, "--mode", mode, "--model-path", str(model_path),
                   "--images", str(args.images), "--batch", str(args.batch), "--device", args.device,
                   "--max-new-tokens", str(args.max_new_tokens), "--min-new-tokens", str(args.min_new_tokens),
                   "--data", str(args.data), "--threads", str(args.threads)] + (["--prompt", args.prompt] if args.prompt else [])
            p = subprocess.run(cmd, check=False, capture_output=True, text=True,
                               env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)})
            if p.returncode:
                sys.exit(f"{mode} failed: {p.stderr.strip()[-2000:]}")
            res = json.loads(p.stdout.strip().splitlines()[-1])
            print(json.dumps(res))
            md5s[mode].add(res["captions_md5"])
            if mode not in best or res["seconds"] < best[mode]["seconds"]:
                best[mode] = res
    pl, lo = best["plain"], best["local"]
    print(f"load average before/after: {load0:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"same captions: {md5s['plain'] == md5s['local'] and len(md5s['plain']) == 1} "
          f"({lo['distinct_captions']} distinct of {lo['images']})")
    print(f"local: {lo['images_per_s'] / pl['images_per_s']:.2f}x the plain loop's images/s (best of {args.reps}: "
          f"{lo['images_per_s']:,} vs {pl['images_per_s']:,}), peak RSS {lo['peak_rss_mb']} vs {pl['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
