"""The demo: run pipelines/demo.toml over the bundled real data (examples/data) into a
store, then print what is in it and where the outputs are.

    python examples/demo.py --store demo-store      (what `make demo` runs)

Running it again adds nothing: every ingest and stage is idempotent and resumable.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import polars as pl

from curate import Store
from curate.mix.audit import audit_manifest
from curate.pipeline import load_pipeline, run_pipeline
from curate.report import write_report

REPO = Path(__file__).resolve().parent.parent


def show(title: str, df: pl.DataFrame) -> None:
    print(f"\n{title}")
    with pl.Config(tbl_rows=50, tbl_cols=-1, fmt_str_lengths=50, tbl_width_chars=160,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(df)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="demo-store", type=Path)
    ap.add_argument("--pipeline", default=REPO / "pipelines" / "demo.toml", type=Path)
    args = ap.parse_args()

    t0 = time.perf_counter()
    pipe = load_pipeline(args.pipeline)
    print(f"pipeline {pipe.name}: {pipe.description}")
    with Store.open(args.store, create=True) as store:
        run_pipeline(store, pipe, echo=lambda line: print("  " + line))
        counts = store.query("captions.counts").pl()
        lengths = store.query("captions.lengths").pl()
        rejects = store.query("store.rejects").pl()
        knowledge = store.query("knowledge.by_source").pl()
        retention = store.query("knowledge.retention").pl()
        support = store.query("knowledge.support").pl()
        show("Samples and captions per source and variant (curate sql -q captions.counts)", counts)
        show("Caption length per variant (curate sql -q captions.lengths)", lengths)
        show("Rejected records (curate sql -q store.rejects)", rejects)
        show("Knowledge entities per source and variant (curate knowledge report)", knowledge)
        show("Raw knowledge entities kept by other variants, strict and lenient (knowledge.retention)", retention)
        show("Where the fused captions' entities come from: raw, synthetic only, neither (knowledge.support)", support)
        reports = args.store / "reports"
        counts.write_csv(reports / "caption_counts.csv")
        lengths.write_csv(reports / "caption_lengths.csv")
        knowledge.write_csv(reports / "knowledge_by_source.csv")
        retention.write_csv(reports / "knowledge_retention.csv")
        store.query("captions.duplicate_summary").write_parquet(str(reports / "duplicate_summary.parquet"))

        # the end product: the pipeline's training manifest, and its audit
        manifest = args.store / "manifests" / "capsfusion-guard.parquet"
        print(f"\nManifest {manifest} (curate manifest-audit {manifest})")
        for title, df in audit_manifest(store, manifest):
            if "Variant" in title or "Knowledge" in title:
                show(title, df)
        page = write_report(store, manifest_path=manifest)
        totals = store.summary()
    print(f"\nstore: {args.store}/catalog.duckdb  ({totals['samples']:,} samples, {totals['captions']:,} captions, "
          f"{totals['rejects']:,} rejects, {totals['runs']:,} runs)")
    print(f"reports: {reports}/caption_counts.csv, caption_lengths.csv, knowledge_by_source.csv, "
          "knowledge_retention.csv, duplicate_summary.parquet")
    print(f"report: {page} (one self-contained HTML page: open it in a browser; `curate report` writes it)")
    print(f"query it: .venv/bin/curate sql --store {args.store} \"SELECT variant, count(*) FROM captions GROUP BY 1\"")
    print(f"done in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
