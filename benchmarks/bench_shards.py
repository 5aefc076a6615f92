"""``curate shards`` against the loop a user would write with webdataset's ShardWriter.

Builds N generated JPEG files (a fixed pool of distinct images, ``--image-px`` square,
one file per sample) and a store whose samples point at them, with a raw and a fused
caption each; mixes a VeCLIP 0.5/0.5 policy into a parquet manifest with candidates.
Then, each in a fresh process (peak RSS is the process's own and, for curate, the
largest of its writer processes):

* ``baseline``: ``webdataset.ShardWriter(pattern, maxcount=shard_size)`` over the
  manifest rows (pyarrow batches), reading each row's image file, writing ``jpg``, the
  manifest's ``txt`` caption and a ``json`` with uid, source, weight and the candidate
  captions: what a user writes by hand (no shuffle, no repeats, no resume, no stats);
* ``curate``: :func:`curate.shards.write_shards` with ``--workers`` writer processes
  (the same rows, the same members, plus the caption slots, the shuffle and the stats).

Both write the same samples (the manifest has no weights, so no repeats). The ratio is
curate's samples/s over the baseline's::

    python benchmarks/bench_shards.py --samples 20000 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def build(root: Path, n: int, px: int, pool: int) -> Path:
    """The image files, the store and the manifest (reused when present)."""
    import numpy as np
    from PIL import Image

    manifest = root / f"manifest-{n}.parquet"
    if manifest.exists():
        return manifest
    t = time.perf_counter()
    images = root / f"images-{n}"
    images.mkdir(parents=True, exist_ok=True)
    blobs = []
    for i in range(pool):
        rng = np.random.default_rng(i)
        base = rng.integers(0, 255, (px // 8, px // 8, 3), dtype=np.uint8)
        arr = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8)) + rng.integers(0, 24, (px, px, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    for i in range(n):
        (images / f"{i}.jpg").write_bytes(blobs[i % pool])
    from curate import Store
    from curate.mix import policy_from_dict, write_manifest

    with Store.init(root / f"store-{n}") as s:
        s.execute(f"""INSERT INTO samples (uid, source, url, image_path, run_id)
            SELECT md5_number('s' || i)::UUID, ['laion', 'coyo'][1 + i % 2], 'https://example.org/' || i || '.jpg',
                   '{images}/' || i || '.jpg', 1 FROM range({n}) r(i)""")
        for variant in ("raw", "fused"):
            s.execute(f"""INSERT INTO captions (caption_id, uid, variant, text, source, run_id)
                SELECT md5_number(uid::VARCHAR || '{variant}')::UUID, uid, '{variant}',
                       '{variant} caption: a photo of item ' || (hash(uid) % 100000) || ' on a table, stock image',
                       source, 1 FROM samples""")
        pol = policy_from_dict({"policy": {"name": "bench"},
                                "choose": {"strategy": "veclip", "alt": "raw", "enriched": "fused"},
                                "output": {"format": "parquet", "candidates": True}})
        write_manifest(s, pol, path=manifest)
    print(f"built {n:,} images ({sum(map(len, blobs)) // pool:,} bytes each on average) and the manifest in "
          f"{time.perf_counter() - t:.1f}s", file=sys.stderr)
    return manifest


def baseline(manifest: Path, out: Path, shard_size: int) -> int:
    import pyarrow.parquet as pq
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=shard_size, verbose=0) as sink:
        for batch in pq.ParquetFile(manifest).iter_batches(batch_size=4096):
            for r in batch.to_pylist():
                with open(r["image_path"], "rb") as f:
                    image = f.read()
                sink.write({"__key__": r["uid"], "jpg": image, "txt": r["caption"],
                            "json": {"uid": r["uid"], "source": r["source"], "weight": r["weight"],
                                     "caption": r["caption"], "variant": r["variant"], "captions": r["captions"]}})
                n += 1
    return n


def child(kind: str, manifest: Path, out: Path, shard_size: int, workers: int) -> None:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    if kind == "baseline":
        n = baseline(manifest, out, shard_size)
    else:
        from curate.shards import ShardOptions, write_shards

        res = write_shards(manifest, out, ShardOptions(shard_size=shard_size, workers=workers), progress=False)
        n = res.counts["samples"]
    secs = time.perf_counter() - t
    size = sum(p.stat().st_size for p in out.glob("*.tar"))
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "workers": workers if kind == "curate" else 1, "samples": n,
                      "seconds": round(secs, 2), "samples_per_s": round(n / secs), "mb_per_s": round(size / 1e6 / secs, 1),
                      "tar_mb": round(size / 1e6, 1), "peak_rss_mb": round(me), "peak_rss_writer_mb": round(kids)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--image-px", type=int, default=256)
    ap.add_argument("--pool", type=int, default=200, help="distinct images (files are copies of these)")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/curate-bench-shards"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    manifest = a.dir / f"manifest-{a.samples}.parquet"
    if a.child:
        child(a.child, manifest, a.dir / f"out-{a.child}", a.shard_size, a.workers)
        return
    a.dir.mkdir(parents=True, exist_ok=True)
    build(a.dir, a.samples, a.image_px, a.pool)
    results = []
    for _ in range(a.repeat):
        for kind in ("baseline", "curate"):
            cmd = [sys.executable, __file__, "--samples", str(a.samples), "--dir", str(a.dir), "--shard-size",
                   str(a.shard_size), "--workers", str(a.workers), "--child", kind]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(line))
            print(line)
    best = {k: max((r for r in results if r["kind"] == k), key=lambda r: r["samples_per_s"]) for k in ("baseline", "curate")}
    b, c = best["baseline"], best["curate"]
    print(f"curate ({c['workers']} workers): {c['samples_per_s'] / b['samples_per_s']:.2f}x the baseline's samples/s "
          f"({c['samples_per_s']:,} vs {b['samples_per_s']:,}; {c['mb_per_s']} vs {b['mb_per_s']} MB/s), "
          f"peak RSS {c['peak_rss_mb']} MB (+ {c['peak_rss_writer_mb']} MB per writer) vs {b['peak_rss_mb']} MB; "
          f"{c['samples']:,} vs {b['samples']:,} samples")


if __name__ == "__main__":
    main()
