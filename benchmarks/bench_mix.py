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
* ``raw_top30`` / ``mix_top30``: DataComp's CLIP-score top 30%: the raw COPY with
  ``WHERE score >= (SELECT quantile_disc(score, 0.7) ...)``, against a policy selecting
  ``keep_fraction(col("clip_score", "raw"), 0.3)``; compared with each other

    python benchmarks/bench_mix.py --samples 10000000 --threads 2 --memory-limit 4GB
    python benchmarks/bench_mix.py --samples 10000000 --kinds raw_top30,mix_top30 --repeat 3
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


# what a user writes for "top 30% by CLIP score" in one statement
TOP30_WHERE = ("JOIN clip_scores k ON k.caption_id = c.caption_id WHERE c.variant = 'raw' AND k.score >= "
               "(SELECT quantile_disc(score, 0.7) FROM clip_scores)")
KINDS = ("raw", "raw_sorted", "mix", "mix_budget", "raw_top30", "mix_top30")
#: each curate kind against its baseline
VERSUS = {"raw_sorted": "raw", "mix": "raw", "mix_budget": "raw", "mix_top30": "raw_top30"}


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
    from curate.mix import Budget, OneVariant, Output, Policy, col, keep_fraction, write_manifest

    t = time.perf_counter()
    with Store.open(path, threads=threads, memory_limit=memory_limit) as s:
        if kind in ("raw", "raw_sorted", "raw_top30"):
            sql = {"raw": RAW_SQL,
                   "raw_sorted": RAW_SQL.replace("WHERE c.variant = 'raw')", "WHERE c.variant = 'raw' ORDER BY s.uid)"),
                   "raw_top30": RAW_SQL.replace("WHERE c.variant = 'raw')", TOP30_WHERE + ")")}[kind]
            s.execute(sql.format(out=out))
            rows = s.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0]
        else:
            budget = Budget()
            if kind == "mix_budget":
                budget = Budget(samples=n // 2, by="source", proportions={"laion": 0.5, "cc12m": 0.3, "coyo": 0.2})
            select = keep_fraction(col("clip_score", "raw"), 0.3) if kind == "mix_top30" else ()
            pol = Policy("bench", choose=OneVariant("raw"), select=select, budget=budget,
                         output=Output(format="parquet"))
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
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ", ".join(KINDS))
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
        for kind in a.kinds.split(","):
            cmd = [sys.executable, __file__, "--samples", str(a.samples), "--dir", str(a.dir), "--threads",
                   str(a.threads), "--memory-limit", a.memory_limit, "--child", kind]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(out))
            print(out)
    for kind, base in VERSUS.items():
        mine = [r for r in results if r["kind"] == kind]
        raw = [r for r in results if r["kind"] == base]
        if not (mine and raw):
            continue
        rows = f"{mine[0]['rows']:,} rows vs {raw[0]['rows']:,}"
        print(f"{kind}: {min(r['seconds'] for r in mine) / min(r['seconds'] for r in raw):.2f}x the time of {base}, "
              f"{max(r['peak_rss_mb'] for r in mine) / max(r['peak_rss_mb'] for r in raw):.2f}x its peak RSS ({rows})")


if __name__ == "__main__":
    main()
