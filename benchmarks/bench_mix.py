"""Manifest writing against DuckDB's raw COPY of the same rows.

Builds a store of N samples with one raw caption each and stand-in CLIP scores directly
in SQL (not through ingest), then, each in a fresh process (peak RSS is per process):

* ``raw``: ``COPY (SELECT <manifest columns> FROM samples JOIN captions ...) TO x.parquet``
  (the goal's baseline: what a user would write, rows in whatever order the join gives)
* ``raw_sorted``: the same ``ORDER BY uid``, for context: what a deterministic row order
  costs DuckDB by itself
* ``mix``: ``curate.mix`` with a policy choosing the raw caption of every sample (no
  filter, no budget), written as a parquet manifest with its sidecar
* ``mix_budget``: the same with a seeded budget of N/2 samples by source proportions

    python benchmarks/bench_mix.py --samples 10000000 --threads 2 --memory-limit 4GB
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RAW_SQL = """COPY (SELECT replace(s.uid::VARCHAR, '-', '') AS uid, s.source, s.url, s.image_shard, s.image_key,
    s.image_path, c.caption_id::VARCHAR AS caption_id, c.text AS caption, c.variant, 1.0::DOUBLE AS weight
    FROM samples s JOIN captions c USING (uid) WHERE c.variant = 'raw') TO '{out}' (FORMAT parquet, COMPRESSION zstd)"""


def build(path: Path, n: int) -> None:
    from curate import Store

    if (path / "catalog.duckdb").exists():
        return
    t = time.perf_counter()
    with Store.init(path) as s:
        s.execute(f"""INSERT INTO samples (uid, source, url, run_id)
            SELECT md5_number('s' || i)::UUID, ['laion', 'cc12m', 'coyo'][1 + i % 3],
                   'https://example.org/img/' || i || '.jpg', 1 FROM range({n}) r(i)""")
        s.execute("""INSERT INTO captions (caption_id, uid, variant, text, source, run_id)
            SELECT md5_number(uid::VARCHAR || 'raw')::UUID, uid, 'raw',
                   'a photo of item ' || (hash(uid) % 100000) || ' on a ' || ['red', 'blue', 'green'][1 + (hash(uid) % 3)::BIGINT]
                   || ' table, stock image', source, 1 FROM samples""")
        s.execute("""CREATE TABLE clip_scores AS SELECT caption_id, uid, 'stand-in' AS model,
            (hash(caption_id) % 1000000)::DOUBLE / 1e6 AS score FROM captions""")
        s.execute("CHECKPOINT")
    print(f"built {n:,}-sample store in {time.perf_counter() - t:.1f}s", file=sys.stderr)


def child(kind: str, path: Path, out: Path, threads: int, memory_limit: str, n: int) -> None:
    from curate import Store
    from curate.mix import Budget, OneVariant, Output, Policy, write_manifest

    t = time.perf_counter()
    with Store.open(path, threads=threads, memory_limit=memory_limit) as s:
        if kind in ("raw", "raw_sorted"):
            sql = RAW_SQL if kind == "raw" else RAW_SQL.replace("WHERE c.variant = 'raw')", "WHERE c.variant = 'raw' ORDER BY s.uid)")
            s.execute(sql.format(out=out))
            rows = s.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0]
        else:
            budget = Budget()
            if kind == "mix_budget":
                budget = Budget(samples=n // 2, by="source", proportions={"laion": 0.5, "cc12m": 0.3, "coyo": 0.2})
            pol = Policy("bench", choose=OneVariant("raw"), budget=budget, output=Output(format="parquet"))
            side = write_manifest(s, pol, path=out)
            rows = side["rows"]
    secs = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "rows": rows, "seconds": round(secs, 2), "peak_rss_mb": round(rss),
                      "bytes": out.stat().st_size}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/curate-bench-mix"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    store = a.dir / f"store-{a.samples}"
    if a.child:
        child(a.child, store, a.dir / f"{a.child}.parquet", a.threads, a.memory_limit, a.samples)
        return
    a.dir.mkdir(parents=True, exist_ok=True)
    build(store, a.samples)
    results = []
    for _ in range(a.repeat):
        for kind in ("raw", "raw_sorted", "mix", "mix_budget"):
            cmd = [sys.executable, __file__, "--samples", str(a.samples), "--dir", str(a.dir), "--threads",
                   str(a.threads), "--memory-limit", a.memory_limit, "--child", kind]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(out))
            print(out)
    raw = [r for r in results if r["kind"] == "raw"]
    for kind in ("raw_sorted", "mix", "mix_budget"):
        mine = [r for r in results if r["kind"] == kind]
        print(f"{kind}: {min(r['seconds'] for r in mine) / min(r['seconds'] for r in raw):.2f}x the raw COPY's time, "
              f"{max(r['peak_rss_mb'] for r in mine) / max(r['peak_rss_mb'] for r in raw):.2f}x its peak RSS")


if __name__ == "__main__":
    main()
