"""``curate report``: one self-contained HTML page of a store's audits.

The page needs no server and no network: styles are inline, plots are inline SVG
(matplotlib), tables are plain HTML, and there is no script. Sections, each present
whether or not its inputs exist (a section without them says which command makes them):

* ``overview``: tables and row counts, sources, samples and captions per source and
  variant, caption lengths (``text.caption_stats.v1``), rejects, downloads;
* ``knowledge``: knowledge per variant, strict and lenient retention, entity support
  (``knowledge.spacy_ner.v1``);
* ``concepts``: per counted vocabulary, the long tail (summary, rank-frequency plot with
  its log-log least-squares line);
* ``dedup``: exact caption duplicates, caption dedup runs, image duplicate groups;
* ``manifest`` (with ``manifest=``): the sidecar's facts and the pool-vs-manifest audit.

Every table comes from a named query or a function the CLI also prints, so the page and
the terminal cannot disagree.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from . import __version__
from .errors import CurateError
from .store import Store

MAX_ROWS = 40

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#fff}
header{background:#1d2430;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c8d0dc}nav{padding:8px 28px;background:#eef1f5;border-bottom:1px solid #d5dbe3}
nav a{margin-right:16px;color:#1f5fbf;text-decoration:none}main{padding:8px 28px 40px;max-width:1200px}
section{margin-top:22px}h2{border-bottom:2px solid #1f5fbf;padding-bottom:4px;font-size:18px}
h3{font-size:15px;margin:18px 0 6px}table{border-collapse:collapse;margin:6px 0 10px;font-size:12.5px}
th,td{border:1px solid #d5dbe3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
.missing{color:#8a5a00;background:#fff6e0;border:1px solid #f0d9a0;padding:6px 10px;width:fit-content}
.note{color:#5a6472;font-size:12.5px}svg{max-width:100%;height:auto}
"""


@dataclass
class Section:
    id: str
    title: str
    parts: list[str] = field(default_factory=list)

    def table(self, title: str, df: pl.DataFrame, note: str = "") -> None:
        self.parts.append(f"<h3>{html.escape(title)}</h3>{table_html(df)}")
        if note:
            self.parts.append(f'<p class="note">{html.escape(note)}</p>')

    def missing(self, what: str, how: str) -> None:
        self.parts.append(f'<p class="missing">{html.escape(what)}: not computed yet. Run <code>{html.escape(how)}</code>.</p>')

    def raw(self, fragment: str) -> None:
        self.parts.append(fragment)

    def render(self) -> str:
        return f'<section id="{self.id}"><h2>{html.escape(self.title)}</h2>{"".join(self.parts)}</section>'


def _cell(v: Any) -> tuple[str, bool]:
    if v is None:
        return "", False
    if isinstance(v, bool):
        return str(v).lower(), False
    if isinstance(v, int):
        return f"{v:,}", True
    if isinstance(v, Decimal):
        return (f"{int(v):,}" if v == v.to_integral_value() else f"{float(v):,.4g}"), True
    if isinstance(v, float):
        return ("" if math.isnan(v) else f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"), True
    if isinstance(v, (list, dict)):
        return html.escape(json.dumps(v, default=str)[:300]), False
    return html.escape(str(v)[:300]), False


def table_html(df: pl.DataFrame, max_rows: int = MAX_ROWS) -> str:
    """An HTML table of the first ``max_rows`` rows (escaped; numbers right-aligned)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for row in df.head(max_rows).iter_rows():
        cells = []
        for v in row:
            text, num = _cell(v)
            cells.append(f'<td class="n">{text}</td>' if num else f"<td>{text}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    more = f'<p class="note">{len(df) - max_rows:,} more rows not shown</p>' if len(df) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def loglog_fit(counts: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares line of log10(count) on log10(rank) over the non-zero counts, sorted
    descending: (slope, intercept, R²), or None with fewer than 3 non-zero counts."""
    pos = np.sort(counts[counts > 0])[::-1].astype(np.float64)
    if len(pos) < 3:
        return None
    x = np.log10(np.arange(1, len(pos) + 1))
    y = np.log10(pos)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss if ss > 0 else 1.0
    return float(slope), float(intercept), r2


def _svg(make: Callable[[Path], list[Path]]) -> str:
    """Run a plot function that writes ``<stem>.svg`` and return the SVG markup."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = make(Path(tmp) / "plot")
        svg = next(p for p in paths if p.suffix == ".svg").read_text(encoding="utf-8")
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def _query(store: Store, name: str, **params: Any) -> pl.DataFrame:
    df: pl.DataFrame = store.query(name, **params).pl()
    return df


# -- sections ----------------------------------------------------------------------------
def overview(store: Store) -> Section:
    sec = Section("overview", "Store overview")
    tables = store.tables()
    sec.table("Tables and rows", pl.DataFrame({"table": tables, "rows": [store.count(t) for t in tables]},
                                              schema={"table": pl.String, "rows": pl.Int64}))
    sec.table("Sources (store.sources)", _query(store, "store.sources"))
    sec.table("Samples and captions per source and variant (captions.counts)", _query(store, "captions.counts"))
    if "caption_stats" in tables:
        sec.table("Caption length per source and variant (captions.lengths)", _query(store, "captions.lengths"))
    else:
        sec.missing("Caption lengths", "curate run pipelines/caption_stats.toml")
    rejects = _query(store, "store.rejects")
    if len(rejects):
        sec.table("Rejected records (store.rejects)", rejects)
    else:
        sec.raw('<p class="note">No rejected records.</p>')
    if store.count("downloads"):
        sec.table("Downloads by status", store.df(
            "SELECT status, count(*) AS samples, count(DISTINCT shard) AS shards FROM downloads GROUP BY status ORDER BY samples DESC"))
    else:
        sec.raw('<p class="note">No downloads recorded (<code>curate download</code>).</p>')
    return sec


def knowledge(store: Store) -> Section:
    sec = Section("knowledge", "Knowledge")
    if "caption_knowledge" not in store.tables():
        sec.missing("Knowledge scores", "curate knowledge score")
        return sec
    sec.table("Knowledge per variant (knowledge.by_variant)", _query(store, "knowledge.by_variant"))
    sec.table("Raw knowledge entities kept by other variants, strict (whole name) and lenient (a partial name "
              "counts) (knowledge.retention)", _query(store, "knowledge.retention"))
    sec.table("Where each variant's knowledge entities come from (knowledge.support)", _query(store, "knowledge.support"),
              note="unsupported = backed by neither the raw nor the synthetic caption; most are not inventions "
                   "(docs/knowledge.md gives the measured precision)")
    return sec


def concepts(store: Store) -> Section:
    from .concepts.audit import rank_frequency_plot, store_counts, summarize

    sec = Section("concepts", "Concept long tail")
    if "caption_concepts" not in store.tables():
        sec.missing("Concept counts", "curate concepts count --vocabulary imagenet1k")
        return sec
    counted = store.con.execute("SELECT DISTINCT vocabulary, mode FROM caption_concepts ORDER BY 1, 2").fetchall()
    if not counted:
        sec.missing("Concept counts", "curate concepts count --vocabulary imagenet1k")
        return sec
    for vocabulary, mode in counted:
        try:
            counts = store_counts(store, vocabulary, mode=mode)
        except CurateError as e:  # e.g. counts of an older rule that must be redone: say so, keep the page
            sec.raw(f'<p class="missing">{html.escape(vocabulary)} ({html.escape(mode)} mode): {html.escape(str(e))}</p>')
            continue
        sec.table(f"{vocabulary} ({mode} mode): samples per concept", summarize(counts))
        fit = loglog_fit(counts["count"].to_numpy())
        label, title = f"{vocabulary} ({mode})", f"{vocabulary}: samples per concept, by rank"

        def plot(stem: Path, c: pl.DataFrame = counts, label: str = label, title: str = title) -> list[Path]:
            return rank_frequency_plot({label: c}, stem, title=title)

        sec.raw(_svg(plot))
        if fit is not None:
            slope, _, r2 = fit
            sec.raw(f'<p class="note">log-log least squares over the concepts with a count: '
                    f"log10(count) = {slope:.3f} × log10(rank) + c, R² = {r2:.3f}</p>")
        sec.table("Most and least frequent concepts", pl.concat([counts.head(10), counts.tail(10)]).unique(
            maintain_order=True))
    return sec


def dedup(store: Store) -> Section:
    sec = Section("dedup", "Duplicates")
    sec.table("Exact duplicate captions per variant (captions.duplicate_summary)", _query(store, "captions.duplicate_summary"))
    tables = store.tables()
    if "dedup_summary" in tables:
        sec.table("Caption dedup runs (dedup_summary)", store.df("SELECT * FROM dedup_summary ORDER BY run_id DESC"))
    else:
        sec.missing("Near-duplicate captions", "curate dedup captions")
    if "dedup_groups" in tables:
        sec.table("Duplicate groups by kind (similarity.groups_summary)", _query(store, "similarity.groups_summary"))
    else:
        sec.missing("Image duplicates", "curate similarity semdedup SET")
    return sec


def manifest(store: Store, path: Path) -> Section:
    from .mix.audit import audit_manifest

    sec = Section("manifest", f"Manifest {path.name}")
    side = path.with_name(path.name + ".sidecar.json")
    meta = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
    facts = {k: meta.get(k) for k in ("format", "rows", "seed", "policy_hash", "sha256", "curate_version")}
    facts["policy"] = (meta.get("policy") or {}).get("policy", {}).get("name") if meta else None
    sec.table("Sidecar", pl.DataFrame({"field": list(facts), "value": [None if v is None else str(v) for v in facts.values()]},
                                      schema={"field": pl.String, "value": pl.String}))
    for title, df in audit_manifest(store, path):
        sec.table(title, df if isinstance(df, pl.DataFrame) else pl.DataFrame(df))
    return sec


def build_report(store: Store, manifest_path: str | Path | None = None) -> str:
    """The HTML page (a string)."""
    sections = [overview(store), knowledge(store), concepts(store), dedup(store)]
    if manifest_path is not None:
        sections.append(manifest(store, Path(manifest_path)))
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>curate report: {html.escape(store.path.name)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>curate report: {html.escape(str(store.path))}</h1>"
            f"<p>curate {html.escape(__version__)}, {stamp}</p></header><nav>{nav}</nav>"
            f"<main>{''.join(s.render() for s in sections)}</main></body></html>")


def write_report(store: Store, out: str | Path | None = None, manifest_path: str | Path | None = None) -> Path:
    """Write the page to ``out`` (default ``<store>/reports/report.html``) and return its path."""
    from .names import under

    if manifest_path is not None and not Path(manifest_path).is_file():
        raise CurateError(f"manifest {manifest_path} does not exist")
    page = build_report(store, manifest_path)
    path = Path(out) if out is not None else under(store.path, "reports", "report.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
