"""Benchmark and quality check of caption dedup (``curate.dedup``).

**Speed.** The whole near-duplicate pass over the same captions, each method in its own
spawned subprocess (so its peak RSS is its own), in one invocation:

* ``curate``     -- ``find_duplicates(texts)``: normalise, exact grouping, shingles,
                    vectorised MinHash, LSH candidates, exact-Jaccard verification,
                    groups (``center`` grouping, keep ``first``);
* ``datasketch`` -- the straightforward loop: per caption ``normalize_text``, shingles,
                    one ``datasketch.MinHash(num_perm, seed)`` with ``update()`` per
                    shingle, ``MinHashLSH(params=(bands, rows)).insert``; then ``query``
                    per caption, the same exact-Jaccard verification on Python sets, and
                    the same grouping (union-find, then centers).

Both use datasketch's default ``sha1_hash32`` on the UTF-8 shingle and the same
``(bands, rows)``. Before timing, the script asserts that curate's signatures equal
datasketch's ``MinHash.hashvalues`` on a sample, and after timing that both methods
return the same partition of the captions into groups.

The corpus is the real LAION sample (10,000 alt-texts) plus edited copies of its
captions (one edit each: word replaced or dropped, words swapped, punctuation, case,
tokens appended) up to ``--rows`` captions (default 100,000).

**Quality.** LAION + 3,000 edited copies + short-caption traps, scored against exact
Jaccard computed by brute force for every pair (``curate.dedup.quality.oracle_pairs``):
precision and recall of pairs with Jaccard >= threshold, for both groupings; the short
traps (no group may join two short captions with different words; naive shingling is
shown for contrast); COCO val2017's five human captions per image (paraphrases; the
share of same-image pairs merged). ``--store`` also times ``dedup_captions`` on a store
holding the corpus (DuckDB reads and the write included).

Usage::

    .venv/bin/python benchmarks/bench_caption_dedup.py                # 100k rows
    .venv/bin/python benchmarks/bench_caption_dedup.py --rows 20000   # quick
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))
LAION = SHARED / "laion400m-img2dataset-10k" / "test_10000.parquet"
COCO = SHARED / "coco-captions-val2017" / "captions_val2017.json"


def laion_texts() -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(LAION, columns=["TEXT"]).column("TEXT").to_pylist()


def corpus(rows: int, seed: int) -> list[str]:
    from curate.dedup.quality import plant

    base = laion_texts()
    return plant(base, max(0, rows - len(base)), seed=seed).texts


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def partition_digest(groups: list[list[int]]) -> str:
    canon = sorted(sorted(g) for g in groups if len(g) > 1)
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()[:16]


def run_curate(texts: list[str], threshold: float, num_perm: int, shingle: int) -> dict:
    from curate.dedup.minhash import permutations
    from curate.dedup.normalize import normalize_text
    from curate.dedup.text import find_duplicates

    # one-off costs outside the timer, as for the baseline: imports (datasketch, scipy), the Unicode table
    permutations(num_perm, 1)
    import scipy.sparse.csgraph  # noqa: F401

    normalize_text("é")
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    res = find_duplicates(texts, threshold=threshold, num_perm=num_perm, shingle=shingle)
    seconds = time.perf_counter() - t0
    g = res.groups.to_pydict()
    by: dict[int, list[int]] = {}
    for m, gid in zip(g["member_id"], g["group_id"]):
        by.setdefault(gid, []).append(int(m))
    return {"method": "curate", "seconds": seconds, "peak_rss_mb": _rss_mb(), "rss_before_mb": rss0,
            "groups": len(by), "members": sum(map(len, by.values())), "partition": partition_digest(list(by.values())),
            "candidates": res.candidates, "timings": {k: round(v, 3) for k, v in res.timings.items()}}


def run_datasketch(texts: list[str], threshold: float, num_perm: int, shingle: int) -> dict:
    from datasketch import MinHash, MinHashLSH

    from curate.dedup.minhash import lsh_params, shingles_of
    from curate.dedup.normalize import normalize_text

    bands, rows = lsh_params(threshold, num_perm)
    normalize_text("é")
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(bands, rows))
    sets: dict[int, set[str]] = {}
    hashes: dict[int, MinHash] = {}
    for i, t in enumerate(texts):
        norm = normalize_text(t) if t is not None else ""
        if not norm:
            continue
        sh = shingles_of(norm, shingle)
        m = MinHash(num_perm=num_perm, seed=1)
        for s in sh:
            m.update(s.encode("utf-8"))
        lsh.insert(i, m)
        sets[i] = set(sh)
        hashes[i] = m
    t_index = time.perf_counter() - t0
    parent = {i: i for i in sets}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    jac: dict[tuple[int, int], float] = {}
    for i, m in hashes.items():
        for j in lsh.query(m):
            if j <= i:
                continue
            a, b = sets[i], sets[j]
            inter = len(a & b)
            J = inter / (len(a) + len(b) - inter)
            if J >= threshold:
                jac[(i, j)] = J
                parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in sets:
        comps.setdefault(find(i), []).append(i)
    groups = []
    for members in comps.values():
        if len(members) < 2:
            continue
        remaining = sorted(members, key=str)  # keep 'first': smallest key as a string
        while remaining:
            c = remaining[0]
            grp, rest = [c], []
            for x in remaining[1:]:
                a, b = sets[x], sets[c]
                inter = len(a & b)
                (grp if inter / (len(a) + len(b) - inter) >= threshold else rest).append(x)
            groups.append(grp)
            remaining = rest
    seconds = time.perf_counter() - t0
    groups = [g for g in groups if len(g) > 1]
    return {"method": "datasketch", "seconds": seconds, "index_seconds": t_index, "peak_rss_mb": _rss_mb(),
            "rss_before_mb": rss0, "groups": len(groups), "members": sum(map(len, groups)),
            "partition": partition_digest(groups)}


def _child(method: str, rows: int, seed: int, threshold: float, num_perm: int, shingle: int) -> dict:
    texts = corpus(rows, seed)
    fn = run_curate if method == "curate" else run_datasketch
    return fn(texts, threshold, num_perm, shingle)


def check_signatures(texts: list[str], num_perm: int, shingle: int, sample: int = 2000) -> int:
    import numpy as np
    from datasketch import MinHash

    from curate.dedup.minhash import shingle_hashes, shingles_of, signatures
    from curate.dedup.normalize import normalize_text

    norms = [n for n in (normalize_text(t) for t in texts[:: max(1, len(texts) // sample)]) if n]
    sig = signatures(shingle_hashes(norms, shingle), num_perm, 1)
    for k, n in enumerate(norms):
        m = MinHash(num_perm=num_perm, seed=1)
        for s in shingles_of(n, shingle):
            m.update(s.encode("utf-8"))
        assert np.array_equal(m.hashvalues, sig[k]), f"signature mismatch on {n!r}"
    return len(norms)


def quality(threshold: float, shingle: int, seed: int) -> dict:
    import numpy as np
    from datasketch import MinHash

    from curate.dedup.normalize import normalize_text
    from curate.dedup.quality import SHORT_SAME, SHORT_TRAPS, group_pairs, oracle_pairs, plant, score
    from curate.dedup.text import find_duplicates

    pl = plant(laion_texts(), 3000, seed=seed)
    texts = pl.texts + SHORT_TRAPS + [t for pair in SHORT_SAME for t in pair]
    norm = [normalize_text(t) if t else "" for t in texts]
    t0 = time.perf_counter()
    oracle = oracle_pairs(texts, shingle, threshold)
    t_oracle = time.perf_counter() - t0
    true = set(oracle)
    near_true = {p for p in true if norm[p[0]] != norm[p[1]]}
    out: dict = {"texts": len(texts), "oracle_pairs": len(true), "oracle_near_pairs": len(near_true),
                 "oracle_seconds": round(t_oracle, 2)}
    short_ids = set(range(len(pl.texts), len(texts)))
    for grouping in ("center", "components"):
        res = find_duplicates(texts, threshold=threshold, shingle=shingle, grouping=grouping)
        g = res.groups.to_pydict()
        members = [int(m) for m in g["member_id"]]
        pred = group_pairs(members, g["group_id"])
        near_pred = {p for p in pred if norm[p[0]] != norm[p[1]]}
        s_all, s_near = score(pred, true), score(near_pred, near_true)
        bad_short = [(texts[a], texts[b]) for a, b in pred
                     if a in short_ids and b in short_ids and set(norm[a].split()) != set(norm[b].split())]
        out[grouping] = {"pairs_predicted": s_all.predicted, "precision": round(s_all.precision, 4),
                         "recall": round(s_all.recall, 4), "near_pairs_predicted": s_near.predicted,
                         "near_precision": round(s_near.precision, 4), "near_recall": round(s_near.recall, 4),
                         "min_similarity_to_kept": round(min(g["similarity"]), 4) if members else None,
                         "short_groups_joining_different_words": len(bad_short)}
    # naive shingling for contrast: short captions have no 3-word shingle, so an empty MinHash
    empty = [MinHash(num_perm=128, seed=1) for t in SHORT_TRAPS if len(normalize_text(t).split()) < shingle]
    out["naive_empty_minhash_short_captions"] = len(empty)
    out["naive_all_equal"] = bool(all(np.array_equal(empty[0].hashvalues, m.hashvalues) for m in empty))
    # COCO: five paraphrases per image
    data = json.loads(COCO.read_text())
    caps = [(a["image_id"], a["caption"]) for a in data["annotations"]]
    res = find_duplicates([c for _, c in caps], threshold=threshold, shingle=shingle)
    g = res.groups.to_pydict()
    pairs = group_pairs([int(m) for m in g["member_id"]], g["group_id"])
    from collections import Counter

    per_image = Counter(i for i, _ in caps)
    same_image_pairs = sum(n * (n - 1) // 2 for n in per_image.values())
    merged_same = sum(1 for a, b in pairs if caps[a][0] == caps[b][0])
    images_merged = len({caps[a][0] for a, b in pairs if caps[a][0] == caps[b][0]})
    out["coco"] = {"captions": len(caps), "images": len(per_image), "same_image_pairs": same_image_pairs,
                   "same_image_pairs_merged": merged_same,
                   "share_same_image_pairs_merged": round(merged_same / same_image_pairs, 4),
                   "images_with_a_merge": images_merged, "groups": len(set(g["group_id"])),
                   "cross_image_pairs_merged": len(pairs) - merged_same}
    return out


def bench_store(rows: int, seed: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate import Store
    from curate.dedup.text import dedup_captions
    from curate.ingest import ingest

    texts = corpus(rows, seed)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "corpus.parquet"
        pq.write_table(pa.table({"URL": [f"https://example.org/{i}.jpg" for i in range(len(texts))], "TEXT": texts}), f)
        with Store.init(Path(d) / "store") as s:
            ingest(s, "table", f, "bench", preset="laion")
            n = s.count("captions")
            t0 = time.perf_counter()
            res = dedup_captions(s)
            seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            dedup_captions(s)  # same config again: replaces
            again = time.perf_counter() - t0
            rows_written = s.count("dedup_groups")
    return {"captions": n, "seconds": round(seconds, 2), "captions_per_s": round(n / seconds),
            "rerun_seconds": round(again, 2), "group_rows": rows_written, "summary": res.summary().splitlines()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--shingle", type=int, default=3)
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--store", action="store_true", help="Also time dedup_captions on a store.")
    args = ap.parse_args()

    from curate.dedup.minhash import lsh_params

    texts = corpus(args.rows, args.seed)
    n_sig = check_signatures(texts, args.num_perm, args.shingle)
    bands, rows = lsh_params(args.threshold, args.num_perm)
    print(f"corpus: {len(texts):,} captions (LAION 10k + edited copies); threshold {args.threshold}, "
          f"num_perm {args.num_perm}, {args.shingle}-word shingles, LSH {bands}x{rows}; "
          f"signatures equal to datasketch on {n_sig:,} sampled captions")
    results = {}
    ctx = mp.get_context("spawn")
    for method in ("curate", "datasketch"):
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            results[method] = pool.submit(_child, method, args.rows, args.seed, args.threshold, args.num_perm,
                                          args.shingle).result()
    a, b = results["curate"], results["datasketch"]
    assert a["partition"] == b["partition"], f"different groups: {a['partition']} vs {b['partition']}"
    print(f"{'method':<12}{'seconds':>10}{'captions/s':>14}{'peak RSS MB':>14}{'groups':>9}{'members':>9}")
    for r in (a, b):
        print(f"{r['method']:<12}{r['seconds']:>10.2f}{len(texts) / r['seconds']:>14,.0f}{r['peak_rss_mb']:>14.0f}"
              f"{r['groups']:>9,}{r['members']:>9,}")
    print(f"speed ratio curate / datasketch loop: {b['seconds'] / a['seconds']:.1f}x; same groups: "
          f"{a['partition'] == b['partition']} (partition {a['partition']})")
    print("curate phases (s):", json.dumps(a["timings"]), f"candidates {a['candidates']:,}")
    print(json.dumps({"speed": results, "rows": len(texts)}))
    if args.store:
        print(json.dumps({"store": bench_store(args.rows, args.seed)}))
    if not args.no_quality:
        print(json.dumps({"quality": quality(args.threshold, args.shingle, args.seed)}))


if __name__ == "__main__":
    main()
