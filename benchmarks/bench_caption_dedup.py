"""Benchmark and quality check of caption dedup (``curate.dedup``).

**Speed.** The whole near-duplicate pass over the same captions, each method in its own
spawned subprocess (so its peak RSS is its own), all in one invocation so the ratios
compare runs on the same machine state:

* ``curate``          -- ``find_duplicates(texts, edit_min_words=0)``: normalise, exact
                         grouping, shingles, vectorised MinHash, LSH candidates,
                         exact-Jaccard verification, groups (``center``, keep ``min_id``);
* ``datasketch loop`` -- the straightforward loop: per caption ``normalize_text``,
                         shingles, one ``datasketch.MinHash(num_perm, seed)`` with
                         ``update()`` per shingle, ``MinHashLSH(params=(bands, rows))``
                         ``insert``; then ``query`` per caption, the same exact-Jaccard
                         verification on Python sets, and the same grouping (union-find,
                         then centres);
* ``datasketch bulk`` -- the same with ``MinHash.bulk`` (datasketch's batched numpy
                         signatures) and an LSH ``insertion_session``;
* ``curate default``  -- ``find_duplicates(texts)``: the above plus the one-word edit
                         rule (``edit_min_words=4``);
* ``datasketch loop + edits`` -- the loop plus the edit rule done the plain Python way
                         (every one-word deletion of every caption looked up in a dict of
                         word tuples), grouped with both kinds of match.

All use datasketch's default ``sha1_hash32`` on the UTF-8 shingle and the same
``(bands, rows)``. Before timing, the script asserts that curate's signatures equal
datasketch's ``MinHash.hashvalues`` on a sample, and after timing that the methods
return the same partition of the captions into groups (the three MinHash-only ones
among themselves, the two with the edit rule between them).

The corpus is the real LAION sample (10,000 alt-texts) plus edited copies of its
captions (one edit each: word replaced or dropped, words swapped, punctuation, case,
tokens appended) up to ``--rows`` captions (default 100,000).

**Quality.**

* *Planted edits* (``curate.dedup.quality.plant``): LAION + 3,000 edited copies +
  short-caption traps, scored against exact Jaccard computed by brute force for every
  pair (``oracle_pairs``): precision and recall of pairs with Jaccard >= threshold, for
  both groupings, with the edit rule off (the old definition) and on (scored against
  the oracle of the new definition: Jaccard >= threshold or one word apart).
* *One-word edits* (``plant_word_edits``): LAION + 2,000 copies with one word deleted or
  inserted (a quarter upper-cased) + 2,000 unrelated two- and three-word captions:
  recall of the planted pairs, precision of all grouped pairs (true: planted, or a
  duplicate by the old definition), and pairs that join two different short captions,
  for ``edit_min_words`` 0, 2, 3, 4 (the default) and 5.
* *Real corpora*: the pairs the edit rule adds beyond Jaccard on LAION, CC3M val and
  COCO val2017, with examples; COCO's five human captions per image (paraphrases; the
  share of same-image pairs merged).

``--store`` also times ``dedup_captions`` on a store holding the corpus (DuckDB reads
and the write included).

Usage::

    .venv/bin/python benchmarks/bench_caption_dedup.py                # 100k rows
    .venv/bin/python benchmarks/bench_caption_dedup.py --rows 20000   # quick
    .venv/bin/python benchmarks/bench_caption_dedup.py --no-speed     # quality only
    .venv/bin/python benchmarks/bench_caption_dedup.py --before /tmp/old   # also an earlier tree (git archive)
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
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))
LAION = SHARED / "laion400m-img2dataset-10k" / "test_10000.parquet"
COCO = SHARED / "coco-captions-val2017" / "captions_val2017.json"
CC3M = SHARED / "cc3m-val" / "Validation_GCC-1.1.0-Validation.tsv"


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


def run_curate(texts: list[str], threshold: float, num_perm: int, shingle: int, edit_min_words: int,
               reps: int = 1) -> dict:
    from curate.dedup import normalize
    from curate.dedup.minhash import permutations
    from curate.dedup.text import find_duplicates

    # one-off costs outside the timer, as for the baseline: imports (datasketch, scipy,
    # polars), the Unicode tables
    permutations(num_perm, 1)
    import polars  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401

    normalize.normalize_text("é")
    if hasattr(normalize, "normalize_array"):  # not in the code before it (--before)
        normalize.normalize_array(["é"])
    rss0 = _rss_mb()
    # edit_min_words only when set: the code before the rule (--before) has no such keyword
    kw = {"edit_min_words": edit_min_words} if edit_min_words or "edit_min_words" in \
        find_duplicates.__globals__["DedupConfig"].__dataclass_fields__ else {}
    times = []
    for _ in range(reps):  # a one-second run is at the mercy of the machine's load: take the median
        t0 = time.perf_counter()
        res = find_duplicates(texts, threshold=threshold, num_perm=num_perm, shingle=shingle, **kw)
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    g = res.groups.to_pydict()
    by: dict[int, list[int]] = {}
    for m, gid in zip(g["member_id"], g["group_id"]):
        by.setdefault(gid, []).append(int(m))
    return {"seconds": seconds, "all_seconds": [round(t, 3) for t in times], "peak_rss_mb": _rss_mb(),
            "rss_before_mb": rss0, "groups": len(by), "members": sum(map(len, by.values())),
            "partition": partition_digest(list(by.values())), "candidates": res.candidates,
            "edit_pairs": getattr(res, "edit_pairs", 0), "timings": {k: round(v, 3) for k, v in res.timings.items()}}


def _one_word_apart(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether the longer of two word tuples is the shorter with one word inserted."""
    if len(a) > len(b):
        a, b = b, a
    if len(b) != len(a) + 1:
        return False
    p = 0
    while p < len(a) and a[p] == b[p]:
        p += 1
    return a[p:] == b[p + 1:]


def run_datasketch(texts: list[str], threshold: float, num_perm: int, shingle: int, edit_min_words: int,
                   bulk: bool = False) -> dict:
    from datasketch import MinHash, MinHashLSH

    from curate.dedup.minhash import lsh_params, shingles_of
    from curate.dedup.normalize import normalize_text

    bands, rows = lsh_params(threshold, num_perm)
    normalize_text("é")
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(bands, rows))
    sets: dict[int, set[str]] = {}
    words: dict[int, tuple[str, ...]] = {}
    hashes: dict[int, MinHash] = {}
    if bulk:
        ids, shingled = [], []
        for i, t in enumerate(texts):
            norm = normalize_text(t) if t is not None else ""
            if not norm:
                continue
            sh = shingles_of(norm, shingle)
            ids.append(i)
            shingled.append([s.encode("utf-8") for s in sh])
            sets[i] = set(sh)
            words[i] = tuple(norm.split(" "))
        with lsh.insertion_session() as session:
            for i, m in zip(ids, MinHash.bulk(shingled, num_perm=num_perm, seed=1)):
                session.insert(i, m)
                hashes[i] = m
    else:
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
            words[i] = tuple(norm.split(" "))
            hashes[i] = m
    t_index = time.perf_counter() - t0
    parent = {i: i for i in sets}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, m in hashes.items():
        for j in lsh.query(m):
            if j <= i:
                continue
            a, b = sets[i], sets[j]
            inter = len(a & b)
            if inter / (len(a) + len(b) - inter) >= threshold:
                parent[find(i)] = find(j)
    if edit_min_words:  # every one-word deletion of every caption, looked up among the captions
        by_words: dict[tuple[str, ...], list[int]] = {}
        for i, w in words.items():
            if len(w) >= edit_min_words:
                by_words.setdefault(w, []).append(i)
        for j, w in words.items():
            if len(w) > edit_min_words:
                for k in range(len(w)):
                    for i in by_words.get(w[:k] + w[k + 1:], ()):
                        parent[find(i)] = find(j)

    def near(x: int, c: int) -> bool:
        a, b = sets[x], sets[c]
        inter = len(a & b)
        if inter / (len(a) + len(b) - inter) >= threshold:
            return True
        return bool(edit_min_words) and min(len(words[x]), len(words[c])) >= edit_min_words and \
            _one_word_apart(words[x], words[c])

    comps: dict[int, list[int]] = {}
    for i in sets:
        comps.setdefault(find(i), []).append(i)
    groups = []
    for members in comps.values():
        if len(members) < 2:
            continue
        remaining = sorted(members, key=str)  # keep min_id: the smallest key, as a string
        while remaining:
            c = remaining[0]
            grp, rest = [c], []
            for x in remaining[1:]:
                (grp if near(x, c) else rest).append(x)
            groups.append(grp)
            remaining = rest
    seconds = time.perf_counter() - t0
    groups = [g for g in groups if len(g) > 1]
    return {"seconds": seconds, "index_seconds": t_index, "peak_rss_mb": _rss_mb(),
            "rss_before_mb": rss0, "groups": len(groups), "members": sum(map(len, groups)),
            "partition": partition_digest(groups)}


#: (label, runner, edit_min_words, bulk) of the speed comparison, in the order they run
METHODS = [
    ("curate", "curate", 0, False),
    ("datasketch loop", "datasketch", 0, False),
    ("datasketch bulk", "datasketch", 0, True),
    ("curate default", "curate", 4, False),
    ("datasketch loop + edits", "datasketch", 4, False),
]


def _child(runner: str, rows: int, seed: int, threshold: float, num_perm: int, shingle: int, edit_min_words: int,
           bulk: bool, reps: int = 1, source: str | None = None) -> dict:
    if source is not None:  # another tree's curate (--before); nothing has imported curate yet in this process
        sys.path.insert(0, source)
    texts = corpus(rows, seed)
    if runner == "curate":
        return run_curate(texts, threshold, num_perm, shingle, edit_min_words, reps)
    return run_datasketch(texts, threshold, num_perm, shingle, edit_min_words, bulk)


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


def speed(args: argparse.Namespace, texts: list[str]) -> dict:
    results: dict[str, dict] = {}
    ctx = mp.get_context("spawn")
    methods = [(label, runner, edit, bulk, None) for label, runner, edit, bulk in METHODS]
    if args.before:
        methods.insert(1, (f"curate before ({Path(args.before).name})", "curate", 0, False, str(args.before)))
    for label, runner, edit, bulk, source in methods:
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            results[label] = pool.submit(_child, runner, args.rows, args.seed, args.threshold, args.num_perm,
                                         args.shingle, edit, bulk, args.reps if runner == "curate" else 1,
                                         source).result()
    pairs = [("curate", "datasketch loop"), ("curate", "datasketch bulk"), ("curate default", "datasketch loop + edits")]
    pairs += [("curate", m[0]) for m in methods if m[4]]
    for a, b in pairs:
        assert results[a]["partition"] == results[b]["partition"], \
            f"different groups: {a} {results[a]['partition']} vs {b} {results[b]['partition']}"
    print(f"{'method':<32}{'seconds':>9}{'captions/s':>12}{'peak RSS MB':>13}{'groups':>8}{'members':>9}  partition")
    for label, r in results.items():
        print(f"{label:<32}{r['seconds']:>9.2f}{len(texts) / r['seconds']:>12,.0f}{r['peak_rss_mb']:>13.0f}"
              f"{r['groups']:>8,}{r['members']:>9,}  {r['partition']}")
    c, d = results["curate"], results["curate default"]
    for m in methods:
        if m[4]:
            print(f"curate is {results[m[0]]['seconds'] / c['seconds']:.1f}x {m[0]} (same groups)")
    print(f"curate runs are the median of {args.reps}: {c['all_seconds']} and {d['all_seconds']}")
    print(f"MinHash only: curate is {results['datasketch loop']['seconds'] / c['seconds']:.1f}x the datasketch loop "
          f"and {results['datasketch bulk']['seconds'] / c['seconds']:.1f}x datasketch bulk (same groups)")
    print(f"with the edit rule: curate is {results['datasketch loop + edits']['seconds'] / d['seconds']:.1f}x the "
          f"loop + Python edit rule (same groups); its own phase took {d['timings']['edits']:.2f} s (the rest of the "
          f"difference, {d['seconds'] - c['seconds']:+.2f} s in all, is more members to group, and the load)")
    print("curate phases (s):", json.dumps(c["timings"]), f"candidates {c['candidates']:,}")
    print("curate default phases (s):", json.dumps(d["timings"]), f"edit pairs {d['edit_pairs']:,}")
    return results


def _pairs_of(res) -> tuple[list[int], list[int], set[tuple[int, int]]]:  # type: ignore[no-untyped-def]
    from curate.dedup.quality import group_pairs

    g = res.groups.to_pydict()
    members = [int(m) for m in g["member_id"]]
    return members, g["group_id"], group_pairs(members, g["group_id"])


def quality(threshold: float, shingle: int, seed: int) -> dict:
    import numpy as np
    from datasketch import MinHash

    from curate.dedup.normalize import normalize_text
    from curate.dedup.quality import (
        SHORT_SAME,
        SHORT_TRAPS,
        oracle_pairs,
        plant,
        plant_word_edits,
        score,
        score_word_edits,
    )
    from curate.dedup.text import find_duplicates

    out: dict = {}
    # -- the planted-edit corpus (issue 7), old and new definition
    pl = plant(laion_texts(), 3000, seed=seed)
    texts = pl.texts + SHORT_TRAPS + [t for pair in SHORT_SAME for t in pair]
    norm = [normalize_text(t) if t else "" for t in texts]
    t0 = time.perf_counter()
    oracles = {"jaccard": set(oracle_pairs(texts, shingle, threshold)),
               "jaccard_or_edit": set(oracle_pairs(texts, shingle, threshold, edit_min_words=4))}
    out["planted"] = {"texts": len(texts), "oracle_pairs": {k: len(v) for k, v in oracles.items()},
                      "oracle_seconds": round(time.perf_counter() - t0, 2)}
    short_ids = set(range(len(pl.texts), len(texts)))
    for edit in (0, 4):
        true = oracles["jaccard_or_edit" if edit else "jaccard"]
        near_true = {p for p in true if norm[p[0]] != norm[p[1]]}
        for grouping in ("center", "components"):
            res = find_duplicates(texts, threshold=threshold, shingle=shingle, grouping=grouping, edit_min_words=edit)
            members, _, pred = _pairs_of(res)
            near_pred = {p for p in pred if norm[p[0]] != norm[p[1]]}
            s_all, s_near, s_old = score(pred, true), score(near_pred, near_true), score(pred, oracles["jaccard"])
            bad_short = [(texts[a], texts[b]) for a, b in pred
                         if a in short_ids and b in short_ids and set(norm[a].split()) != set(norm[b].split())]
            out["planted"][f"edit_min_words={edit} {grouping}"] = {
                "pairs_predicted": s_all.predicted, "precision": round(s_all.precision, 4),
                "recall": round(s_all.recall, 4), "near_pairs_predicted": s_near.predicted,
                "near_precision": round(s_near.precision, 4), "near_recall": round(s_near.recall, 4),
                "recall_of_jaccard_pairs": round(s_old.recall, 4),
                "min_similarity_to_kept": round(min(res.groups.column("similarity").to_pylist()), 4)
                if members else None,
                "methods": dict(sorted(Counter(res.groups.column("method").to_pylist()).items())),
                "short_groups_joining_different_words": len(bad_short)}
    # naive shingling for contrast: short captions have no 3-word shingle, so an empty MinHash
    empty = [MinHash(num_perm=128, seed=1) for t in SHORT_TRAPS if len(normalize_text(t).split()) < shingle]
    out["planted"]["naive_empty_minhash_short_captions"] = len(empty)
    out["planted"]["naive_all_equal"] = bool(all(np.array_equal(empty[0].hashvalues, m.hashvalues) for m in empty))

    # -- one-word edits: planted deletions/insertions beside 2,000 unrelated short captions
    ev = plant_word_edits(laion_texts(), seed=seed)
    old = set(oracle_pairs(ev.texts, shingle, threshold))
    out["word_edits"] = {"texts": len(ev.texts), "planted_pairs": len(ev.pairs), "short_captions": len(ev.traps),
                         "upper_cased_copies": sum(ev.upper)}
    for edit in (0, 2, 3, 4, 5):
        res = find_duplicates(ev.texts, threshold=threshold, shingle=shingle, edit_min_words=edit)
        members, gids, _ = _pairs_of(res)
        sc = score_word_edits(ev, members, gids, old)
        out["word_edits"][f"edit_min_words={edit}"] = {
            "recall": round(sc.recall, 4), "precision": round(sc.precision, 4), "pairs_predicted": sc.predicted,
            "by_edit": {k: f"{f}/{n}" for k, (f, n) in sc.by_edit.items()},
            "pairs_joining_different_short_captions": sc.trap_pairs, "false_pair_examples": sc.false_examples[:4]}

    # -- real corpora: what the rule adds beyond Jaccard
    data = json.loads(COCO.read_text())
    caps = [(a["image_id"], a["caption"]) for a in data["annotations"]]
    cc3m = [line.split("\t")[0] for line in CC3M.read_text(encoding="utf-8").splitlines()]
    out["real"] = {}
    for name, real in (("laion", laion_texts()), ("cc3m_val", cc3m), ("coco_val2017", [c for _, c in caps])):
        row: dict = {"captions": len(real)}
        prev: set[tuple[int, int]] = set()
        for edit in (0, 4):
            res = find_duplicates(real, threshold=threshold, shingle=shingle, edit_min_words=edit)
            _, _, pred = _pairs_of(res)
            row[f"edit_min_words={edit}"] = {"groups": len(set(res.groups.column("group_id").to_pylist())),
                                             "pairs": len(pred), "edit_pairs_found": res.edit_pairs}
            if edit:
                added = sorted(pred - prev)
                row["added_pairs"] = len(added)
                row["added_examples"] = [(real[a], real[b]) for a, b in added[:: max(1, len(added) // 6)][:6]]
                if name == "coco_val2017":
                    row["added_same_image"] = sum(caps[a][0] == caps[b][0] for a, b in added)
            prev = pred
        out["real"][name] = row
    # COCO: five paraphrases per image
    per_image = Counter(i for i, _ in caps)
    same_image_pairs = sum(n * (n - 1) // 2 for n in per_image.values())
    out["coco"] = {"captions": len(caps), "images": len(per_image), "same_image_pairs": same_image_pairs}
    for edit in (0, 4):
        res = find_duplicates([c for _, c in caps], threshold=threshold, shingle=shingle, edit_min_words=edit)
        _, _, pairs = _pairs_of(res)
        merged_same = sum(1 for a, b in pairs if caps[a][0] == caps[b][0])
        out["coco"][f"edit_min_words={edit}"] = {
            "same_image_pairs_merged": merged_same, "share_same_image_pairs_merged": round(merged_same / same_image_pairs, 4),
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
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--store", action="store_true", help="Also time dedup_captions on a store.")
    ap.add_argument("--reps", type=int, default=3, help="Runs of each curate method (the median is reported).")
    ap.add_argument("--before", type=Path, help="A source tree of an earlier curate to time beside (MinHash only).")
    args = ap.parse_args()

    from curate.dedup.minhash import lsh_params

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    print(f"CPU: {cpu}, {os.cpu_count()} logical cores; load average {os.getloadavg()[0]:.1f}")
    if not args.no_speed:
        texts = corpus(args.rows, args.seed)
        n_sig = check_signatures(texts, args.num_perm, args.shingle)
        bands, rows = lsh_params(args.threshold, args.num_perm)
        print(f"corpus: {len(texts):,} captions (LAION 10k + edited copies); threshold {args.threshold}, "
              f"num_perm {args.num_perm}, {args.shingle}-word shingles, LSH {bands}x{rows}; "
              f"signatures equal to datasketch on {n_sig:,} sampled captions")
        results = speed(args, texts)
        print(json.dumps({"speed": results, "rows": len(texts)}))
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.store:
        print(json.dumps({"store": bench_store(args.rows, args.seed)}))
    if not args.no_quality:
        print(json.dumps({"quality": quality(args.threshold, args.shingle, args.seed)}, indent=1))


if __name__ == "__main__":
    main()
