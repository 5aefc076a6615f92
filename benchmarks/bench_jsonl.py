"""Benchmark: JSONL table ingest, time and memory growth under a DuckDB memory limit.

Writes a synthetic JSONL file (url, caption, two extra fields; the generator of
``tests/test_ingest_tables.py::test_a_large_jsonl_streams_in_bounded_memory``), then runs
``curate ingest table`` in a fresh interpreter with ``CURATE_MEMORY_LIMIT`` and
``CURATE_THREADS`` set, and prints the wall time and how far the peak RSS grew over the
interpreter's after its imports. Memory that follows the input size is the failure mode
this measures; run two sizes under one limit and compare.

    .venv/bin/python benchmarks/bench_jsonl.py --lines 750000 --lines 3000000 --memory-limit 300MB
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import duckdb


def make_jsonl(path: Path, n: int) -> None:
    duckdb.connect().execute(f"""
        COPY (SELECT 'https://img.example.com/' || i || '/photo-' || (i * 7919 % 1000003) || '.jpg' AS url,
                     'a photo of item ' || (i % 500000) || ' on a wooden table, stock image number ' || i AS caption,
                     (i % 997) / 997.0 AS similarity, i % 3 = 0 AS nsfw
              FROM range({n}) t(i)) TO '{path}' (FORMAT json)""")


def run(path: Path, store: Path, memory_limit: str, threads: int) -> dict:
    code = textwrap.dedent(f"""
        import json, resource, time
        from curate.cli import main
        import duckdb, polars, pyarrow  # imported before the baseline is taken
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        try:
            main(["ingest", "table", {str(path)!r}, "--store", {str(store)!r}])
        except SystemExit as e:
            assert not e.code, e.code
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"seconds": round(time.perf_counter() - t, 2), "base_MB": round(base / 1024),
                          "growth_MB": round((peak - base) / 1024)}}))
    """)
    env = {**os.environ, "CURATE_MEMORY_LIMIT": memory_limit, "CURATE_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, action="append", help="lines of a generated file (repeatable; default 750k and 3M)")
    ap.add_argument("--memory-limit", default="300MB")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="curate_bench_jsonl_"))
    try:
        print("| lines | file MB | memory_limit | seconds | RSS growth MB |\n|---:|---:|---|---:|---:|")
        for n in a.lines or [750_000, 3_000_000]:
            f = work / f"lines_{n}.jsonl"
            make_jsonl(f, n)
            r = run(f, work / f"store_{n}", a.memory_limit, a.threads)
            print(f"| {n:,} | {f.stat().st_size / 2**20:,.0f} | {a.memory_limit} | {r['seconds']} | {r['growth_MB']:,} |",
                  flush=True)
            f.unlink()
            shutil.rmtree(work / f"store_{n}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
