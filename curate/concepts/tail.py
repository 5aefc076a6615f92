"""Tail benchmarks (Let It Wag!-style): evaluation samples for a vocabulary's rarest concepts.

Udandarao et al. (2024) built "Let It Wag!" from the concepts that occur least in
pretraining data. :func:`build_tail_benchmark` does the same over a store:

1. the store's text counts of the vocabulary (the latest ``concepts.text_match.v1`` run of
   that mode; of one variant when ``variant`` is given), concepts with fewer than
   ``min_count`` samples left out (a concept needs examples to be evaluated on);
2. the ``n`` least frequent of the rest, ties broken by concept name;
3. for each, at most ``cap`` of its samples, chosen by a seeded hash of the uid (the same
   store, arguments and seed give the same rows);
4. written as an evaluation manifest (parquet: concept, concept count, uid, url, image
   reference, the caption that names it and its variant) with a JSON sidecar of the
   arguments and counts, under the store's ``manifests/``.

:func:`overlap` then says how many of those samples a training manifest (parquet, CSV,
TSV or JSONL with a ``uid`` column) contains: samples in both leak evaluation data into
training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import ConfigError, InputError
from ..store import Store
from .audit import store_counts


@dataclass
class TailBenchmark:
    path: Path
    sidecar: Path
    concepts: pl.DataFrame  # concept, count, samples taken
    rows: int

    def summary(self) -> str:
        if not self.concepts.height:
            return f"tail benchmark: no concept qualifies -> {self.path}"
        lo, hi = self.concepts.select(pl.col("count").min().alias("lo"), pl.col("count").max().alias("hi")).row(0)
        return (f"tail benchmark: {self.concepts.height} concepts, {self.rows:,} samples -> {self.path} "
                f"(counts {lo}..{hi})")


def build_tail_benchmark(store: Store, vocabulary: str, *, n: int = 50, min_count: int = 1, cap: int = 50,
                         variant: str | None = None, mode: str = "phrase", seed: int = 0,
                         out: str | Path | None = None) -> TailBenchmark:
    if n < 1 or cap < 1 or min_count < 1:
        raise ConfigError(f"n, cap and min_count must be at least 1 (got n={n}, cap={cap}, min_count={min_count})")
    counts = store_counts(store, vocabulary, mode=mode, variant=variant)
    tail = (counts.filter(pl.col("count") >= min_count).sort(["count", "concept"]).head(n))
    out = Path(out) if out else store.path / "manifests" / f"tail_{vocabulary}_{mode}_{variant or 'all'}_n{n}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    store.con.register("_tail", tail.to_arrow())
    try:
        rel = store.relation(
            "WITH hits AS ("
            "  SELECT h.concept, h.uid, min(h.caption_id) AS caption_id"
            "  FROM concept_hits h SEMI JOIN _tail t ON h.concept = t.concept"
            "  WHERE h.vocabulary = $vocabulary AND h.mode = $mode"
            + ("  AND h.variant = $variant" if variant else "") +
            "  GROUP BY h.concept, h.uid), "
            "picked AS (SELECT *, row_number() OVER (PARTITION BY concept ORDER BY hash(uid::VARCHAR || $seed), uid) AS rn"
            "  FROM hits) "
            "SELECT p.concept, t.count AS concept_count, p.uid::VARCHAR AS uid, s.url, s.image_shard, s.image_key, "
            "  s.image_path, c.variant, c.text AS caption "
            "FROM picked p JOIN _tail t USING (concept) JOIN samples s USING (uid) JOIN captions c USING (caption_id) "
            "WHERE p.rn <= $cap ORDER BY t.count, p.concept, p.rn",
            {"vocabulary": vocabulary, "mode": mode, "seed": str(seed), "cap": cap,
             **({"variant": variant} if variant else {})})
        rows = rel.pl()
    finally:
        store.con.unregister("_tail")
    rows.write_parquet(out)
    taken = rows.group_by("concept").len("samples")
    concepts = tail.join(taken, on="concept", how="left").with_columns(pl.col("samples").fill_null(0))
    sidecar = out.with_suffix(".json")
    meta: dict[str, Any] = {
        "kind": "tail_benchmark", "vocabulary": vocabulary, "mode": mode, "variant": variant, "n": n,
        "min_count": min_count, "cap": cap, "seed": seed, "rows": rows.height,
        "concepts": [{"concept": c, "count": k, "samples": m} for c, k, m in concepts.iter_rows()],
    }
    sidecar.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return TailBenchmark(out, sidecar, concepts, rows.height)


def read_uids(path: str | Path) -> pl.Series:
    """The ``uid`` column of a manifest (parquet, CSV, TSV or JSONL)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"training manifest {p} does not exist")
    try:
        if p.suffix == ".parquet":
            df = pl.read_parquet(p, columns=["uid"])
        elif p.suffix in (".csv", ".tsv"):
            df = pl.read_csv(p, separator="\t" if p.suffix == ".tsv" else ",", columns=["uid"])
        elif p.suffix in (".jsonl", ".json"):
            df = pl.read_ndjson(p).select("uid")
        else:
            raise InputError(f"training manifest {p}: expected .parquet, .csv, .tsv or .jsonl")
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(f"training manifest {p}: no readable uid column ({str(e).splitlines()[0]})") from None
    return df["uid"].cast(pl.String).str.to_lowercase()


def overlap(tail_path: str | Path, train_manifest: str | Path) -> pl.DataFrame:
    """Per tail concept: samples, and how many of them the training manifest holds."""
    tail = pl.read_parquet(tail_path)
    train = set(read_uids(train_manifest).to_list())
    return (tail.with_columns(pl.col("uid").str.to_lowercase().is_in(list(train)).alias("in_train"))
            .group_by("concept", "concept_count").agg(pl.len().alias("samples"), pl.col("in_train").sum())
            .sort("concept_count", "concept"))
