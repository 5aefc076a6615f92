"""Oracle tests for the manifest audit's numbers (sql/mix/audit.sql): audit_size,
audit_variants, audit_sources, audit_words, audit_clip, audit_knowledge and
audit_concepts, pool side and manifest side.

Every number is recounted here in plain Python from raw rows (plain SELECTs of
captions, caption_stats, clip_scores, caption_knowledge, caption_concepts, concepts and
runs; no aggregation in SQL), by the definitions in the queries' comments:

* pool: every caption of the policy's sources and of the variants its strategy can emit
  (written out per case below, not taken from the policy object);
* manifest: the chosen caption of each manifest row (``_mix_final``);
* the latest configuration run of caption_stats, caption_knowledge (status ok) and
  caption_concepts (per vocabulary and mode), as the stages' views define it.

Per-caption knowledge retention is read from the temp view mix_retention (its rule is
tested in tests/test_knowledge.py and tests/test_mix.py). The store is the real one of
tests/test_mix.py: 500 CapsFusion records, the LaCLIP pairs, spaCy knowledge, CIFAR-10
concept matches and stand-in CLIP scores. audit_duplicates and audit_dedup_left are
value-tested in tests/test_mix_audit.py.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import uuid
from collections import defaultdict
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from curate import Store
from curate.mix import load_policy, policy_from_dict, run_policy
from curate.mix.audit import audit, audit_manifest
from tests.test_mix import POLICIES, mix_store, run_cli  # noqa: F401

VOCAB = "cifar10"
CLIP_MODEL = "stand-in"

#: A budget drawn by weight from a CLIP-score-selected pool of three variants: the
#: manifest differs from the pool in every audited number.
BUDGET = {"policy": {"name": "audit-budget", "seed": 3, "sources": ["capsfusion"]},
          "select": [{"attribute": "clip_score", "variant": "raw", "op": ">=", "fraction": 0.5}],
          "choose": {"strategy": "ratio", "ratios": {"raw": 0.3, "synthetic": 0.3, "fused": 0.4}},
          "weight": {"method": "metaclip", "vocabulary": VOCAB, "t": 3, "captions": "chosen",
                     "unmatched_weight": 0.5},
          "budget": {"samples": 120, "order": "weighted"},
          "output": {"format": "parquet"}}

BUDGET_TOML = """
[policy]
name = "audit-budget"
seed = 3
sources = ["capsfusion"]

[[select]]
attribute = "clip_score"
variant = "raw"
op = ">="
fraction = 0.5

[choose]
strategy = "ratio"
ratios = { raw = 0.3, synthetic = 0.3, fused = 0.4 }

[weight]
method = "metaclip"
vocabulary = "cifar10"
t = 3
captions = "chosen"
unmatched_weight = 0.5

[budget]
samples = 120
order = "weighted"

[output]
format = "parquet"
"""

#: case -> (policy, pool sources (None: all), pool variants)
CASES: dict[str, tuple[Any, set[str] | None, set[str]]] = {
    "capsfusion_guard": (load_policy(POLICIES / "capsfusion_guard.toml"), {"capsfusion"}, {"fused", "raw"}),
    "budget_clip_select": (policy_from_dict(BUDGET), {"capsfusion"}, {"raw", "synthetic", "fused"}),
    "nguyen_all_sources": (load_policy(POLICIES / "nguyen.toml"), None, {"raw", "synthetic"}),
    "laclip_rewrites": (load_policy(POLICIES / "laclip.toml"), {"laclip"}, {"raw", "rewrite"}),
}


@dataclasses.dataclass(frozen=True)
class Row:
    uid: uuid.UUID
    source: str
    caption_id: uuid.UUID
    variant: str
    weight: float | None = None


@dataclasses.dataclass
class Raw:
    """The store's raw rows, keyed by caption_id; per-caption lists keep any duplicate
    rows a join would multiply."""

    captions: list[Row]
    words: dict[uuid.UUID, list[int | None]]
    clip: dict[uuid.UUID, list[float | None]]
    knowledge: dict[uuid.UUID, list[tuple[int, float | None]]]
    hits: dict[uuid.UUID, set[str]]
    vocab: set[str]


def _latest_hash(runs: list[tuple], stage: str) -> str | None:
    mine = [(run_id, h) for run_id, st, h in runs if st == stage]
    return max(mine)[1] if mine else None


def read_raw(s: Store) -> Raw:
    runs = s.execute("SELECT run_id, stage, config_hash FROM runs").fetchall()
    captions = [Row(*r) for r in s.execute("SELECT uid, source, caption_id, variant FROM captions").fetchall()]
    known = {c.caption_id for c in captions}

    stats_hash = _latest_hash(runs, "text.caption_stats.v1")
    words: dict[uuid.UUID, list] = defaultdict(list)
    for cid, w, h in s.execute("SELECT caption_id, words, config_hash FROM caption_stats").fetchall():
        if h == stats_hash:
            words[cid].append(w)

    clip: dict[uuid.UUID, list] = defaultdict(list)
    for cid, model, score in s.execute("SELECT caption_id, model, score FROM clip_scores").fetchall():
        if model == CLIP_MODEL:
            clip[cid].append(score)

    k_hash = _latest_hash(runs, "knowledge.spacy_ner.v1")
    knowledge: dict[uuid.UUID, list] = defaultdict(list)
    for cid, status, n, density, h in s.execute(
            "SELECT caption_id, status, n_knowledge, density, config_hash FROM caption_knowledge").fetchall():
        if h == k_hash and status == "ok" and cid in known:
            knowledge[cid].append((n, density))

    # concept_hits: the latest run (by run_id) of each (vocabulary, mode)
    concept_rows = s.execute("SELECT caption_id, vocabulary, mode, concepts, config_hash, run_id "
                             "FROM caption_concepts").fetchall()
    latest = max((run_id, h) for _, voc, mode, _, h, run_id in concept_rows if (voc, mode) == (VOCAB, "phrase"))[1]
    hits: dict[uuid.UUID, set[str]] = defaultdict(set)
    for cid, voc, mode, concepts, h, _ in concept_rows:
        if (voc, mode, h) == (VOCAB, "phrase", latest) and cid in known:
            hits[cid].update(concepts or [])
    vocab = {c for v, c in s.execute("SELECT vocabulary, concept FROM concepts").fetchall() if v == VOCAB}
    return Raw(captions, words, clip, knowledge, hits, vocab)


@pytest.fixture(scope="module")
def raw(mix_store) -> Raw:
    with Store.open(mix_store, read_only=True) as s:
        return read_raw(s)


# -- plain-Python statistics ---------------------------------------------------------------
def rounded(x: float | None, digits: int) -> Any:
    """``x`` as SQL's round(x, digits) may print it: within half a unit of the last digit."""
    return None if x is None else pytest.approx(x, abs=0.5 * 10 ** -digits + 1e-9)


def mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def quantile_cont(xs: list, q: float) -> float | None:
    """Linear interpolation between the order statistics at (n - 1) q."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


def quantile_disc(xs: list[int], q: float) -> int | None:
    """The smallest value with at least a share q of the values at or below it."""
    xs = sorted(xs)
    return xs[max(1, math.ceil(len(xs) * q)) - 1] if xs else None


def by_variant(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        out[r.variant].append(r)
    return out


# -- the expected frames -------------------------------------------------------------------
def expect_size(pool: list[Row], man: list[Row]) -> list[dict]:
    def side(name: str, rows: list[Row], weight_sum: Any) -> dict:
        return {"side": name, "samples": len({r.uid for r in rows}), "captions": len(rows),
                "sources": len({r.source for r in rows}), "variants": len({r.variant for r in rows}),
                "weight_sum": weight_sum}
    return [side("pool", pool, None), side("manifest", man, rounded(sum(r.weight for r in man), 3))]


def expect_variants(pool: list[Row], man: list[Row]) -> list[dict]:
    p, m = by_variant(pool), by_variant(man)
    w = {v: sum(r.weight for r in rs) for v, rs in m.items()}
    out = []
    for v in sorted(set(p) | set(m)):
        out.append({"variant": v, "pool_captions": len(p.get(v, [])),
                    "pool_share": rounded(len(p.get(v, [])) / len(pool), 4),
                    "manifest_samples": len(m.get(v, [])),
                    "manifest_share": rounded(len(m.get(v, [])) / len(man), 4) if man else None,
                    "weighted_share": rounded(w.get(v, 0) / sum(w.values()), 4) if man else None})
    return out


def expect_sources(pool: list[Row], man: list[Row]) -> list[dict]:
    out = []
    for src in sorted({r.source for r in pool}):
        n_pool = len({r.uid for r in pool if r.source == src})
        n_man = sum(1 for r in man if r.source == src)
        out.append({"source": src, "pool_samples": n_pool, "manifest_samples": n_man,
                    "kept": rounded(n_man / n_pool, 4)})
    return out


def _per_variant(rows: list[Row], values: dict[uuid.UUID, list]) -> dict[str, list]:
    """variant -> the values of its captions (an inner join: captions without one drop out)."""
    out: dict[str, list] = {}
    for r in rows:
        if values.get(r.caption_id):
            out.setdefault(r.variant, []).extend(values[r.caption_id])
    return out


def expect_words(pool: list[Row], man: list[Row], raw: Raw) -> list[dict]:
    out = []
    for name, rows in (("pool", pool), ("manifest", man)):
        for v, ws in sorted(_per_variant(rows, raw.words).items()):
            out.append({"side": name, "variant": v, "captions": sum(w is not None for w in ws),
                        "mean_words": rounded(mean(ws), 2), "p10": pytest.approx(quantile_cont(ws, 0.1)),
                        "median": pytest.approx(quantile_cont(ws, 0.5)), "p90": pytest.approx(quantile_cont(ws, 0.9))})
    return out


def expect_clip(pool: list[Row], man: list[Row], raw: Raw) -> list[dict]:
    out = []
    for name, rows in (("pool", pool), ("manifest", man)):
        for v, xs in sorted(_per_variant(rows, raw.clip).items()):
            xs_ = [x for x in xs if x is not None]
            out.append({"side": name, "variant": v, "captions": len(xs_), "mean": rounded(mean(xs_), 4),
                        "p10": rounded(quantile_cont(xs_, 0.1), 4), "median": rounded(quantile_cont(xs_, 0.5), 4),
                        "p90": rounded(quantile_cont(xs_, 0.9), 4), "min": rounded(min(xs_), 4)})
    return out


def expect_knowledge(pool: list[Row], man: list[Row], raw: Raw, retention: dict) -> list[dict]:
    out = []
    for name, rows in (("pool", pool), ("manifest", man)):
        ks = [(n, d, retention.get(r.caption_id)) for r in rows for n, d in raw.knowledge.get(r.caption_id, [])]
        out.append({"side": name, "captions": len(ks),
                    "with_knowledge": rounded(mean([int(n > 0) for n, _, _ in ks]), 4),
                    "mean_knowledge": rounded(mean([n for n, _, _ in ks]), 3),
                    "mean_density": rounded(mean([d for _, d, _ in ks]), 4),
                    "mean_retention": rounded(mean([t for _, _, t in ks]), 4)})
    return out


def concept_counts(rows: list[Row], raw: Raw) -> dict[str, int]:
    """concept -> samples with a caption in ``rows`` that names it (every vocabulary concept)."""
    uids: dict[str, set] = {c: set() for c in raw.vocab}
    for r in rows:
        for c in raw.hits.get(r.caption_id, ()):
            if c in uids:
                uids[c].add(r.uid)
    return {c: len(u) for c, u in uids.items()}


def expect_concepts(pool: list[Row], man: list[Row], raw: Raw) -> list[dict]:
    pc, mc = concept_counts(pool, raw), concept_counts(man, raw)
    nonzero = [n for n in pc.values() if n > 0]
    q = quantile_disc(nonzero, 0.25)
    # the Python order statistic is DuckDB's quantile_disc on the same list
    assert q == duckdb.execute("SELECT quantile_disc(x, 0.25) FROM unnest(?::BIGINT[]) t(x)", [nonzero]).fetchall()[0][0]
    tail = [c for c in raw.vocab if 0 < pc[c] <= q] if q is not None else []
    return [{"concepts": len(raw.vocab),
             "pool_zero_share": rounded(mean([int(pc[c] == 0) for c in raw.vocab]), 4),
             "manifest_zero_share": rounded(mean([int(mc[c] == 0) for c in raw.vocab]), 4),
             "tail_concepts": len(tail), "tail_kept": sum(mc[c] > 0 for c in tail),
             "tail_lost": sum(mc[c] == 0 for c in tail),
             "concepts_lost": sum(pc[c] > 0 and mc[c] == 0 for c in raw.vocab)}]


def expected(pool: list[Row], man: list[Row], raw: Raw, retention: dict) -> dict[str, list[dict]]:
    return {"audit_size": expect_size(pool, man), "audit_variants": expect_variants(pool, man),
            "audit_sources": expect_sources(pool, man), "audit_words": expect_words(pool, man, raw),
            "audit_clip": expect_clip(pool, man, raw),
            "audit_knowledge": expect_knowledge(pool, man, raw, retention),
            "audit_concepts": expect_concepts(pool, man, raw)}


# -- helpers ---------------------------------------------------------------------------------
def frames_of(out: list[tuple[str, Any]]) -> dict[str, list[dict]]:
    return {title.split(" (mix.")[1].rstrip(")"): df.to_dicts() for title, df in out}


def pool_of(raw: Raw, sources: set[str] | None, variants: set[str]) -> list[Row]:
    return [c for c in raw.captions if (sources is None or c.source in sources) and c.variant in variants]


def manifest_of(s: Store, raw: Raw) -> list[Row]:
    man = [Row(*r) for r in s.execute("SELECT uid, source, caption_id, variant, weight FROM _mix_final").fetchall()]
    # a manifest row is one sample and one of its captions, as the captions table has it
    caption = {c.caption_id: c for c in raw.captions}
    assert len({r.uid for r in man}) == len(man)
    assert all((caption[r.caption_id].uid, caption[r.caption_id].source, caption[r.caption_id].variant)
               == (r.uid, r.source, r.variant) for r in man)
    return man


def assert_frames(got: dict[str, list[dict]], want: dict[str, list[dict]]) -> None:
    for q, rows in want.items():
        assert q in got, f"{q} did not run"
        assert got[q] == rows, q


def sides(rows: list[dict], key: str = "side") -> tuple[list, list]:
    strip = [{k: v for k, v in r.items() if k != key} for r in rows]
    pool = [s for r, s in zip(rows, strip) if r[key] == "pool"]
    man = [s for r, s in zip(rows, strip) if r[key] == "manifest"]
    return pool, man


# -- tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_audit_numbers_equal_a_python_recount_of_pool_and_manifest(mix_store, raw, case):
    pol, sources, variants = CASES[case]
    with Store.open(mix_store, read_only=True) as s:
        res = run_policy(s, pol)
        out = audit(s, res, vocabulary=VOCAB)
        man = manifest_of(s, raw)
        retention = dict(s.execute("SELECT caption_id, retention FROM mix_retention").fetchall())
    pool = pool_of(raw, sources, variants)
    assert {r.caption_id for r in man} <= {r.caption_id for r in pool}
    assert any(t.startswith(f"CLIP score ({CLIP_MODEL})") for t, _ in out)
    got = frames_of(out)
    want = expected(pool, man, raw, retention)
    assert_frames(got, want)
    # the sides are not the same numbers, so a query that swapped them would fail above
    assert len(pool) > len(man) > 0
    for q in ("audit_size", "audit_words", "audit_clip", "audit_knowledge"):
        p, m = sides(got[q])
        assert p != m, (case, q)
    if case == "budget_clip_select":
        # every audit tells the budget's manifest from its pool
        for r in got["audit_variants"]:
            assert r["pool_share"] != r["manifest_share"] != r["weighted_share"], r
        assert all(r["pool_samples"] != r["manifest_samples"] for r in got["audit_sources"])
        c = got["audit_concepts"][0]
        assert c["manifest_zero_share"] > c["pool_zero_share"] and c["concepts_lost"] > 0
        # the CLIP select kept the raw captions at or above the median of the pool's
        raw_pool = next(r for r in got["audit_clip"] if r["side"] == "pool" and r["variant"] == "raw")
        raw_man = next(r for r in got["audit_clip"] if r["side"] == "manifest" and r["variant"] == "raw")
        assert raw_man["min"] >= raw_pool["median"] - 1e-4


def test_retention_read_from_mix_retention_is_a_share_and_one_for_raw(mix_store, raw):
    """The per-caption retention the knowledge oracle reads: a share in [0, 1], 1 for
    every raw caption (it keeps its own entities), below 1 for some other captions."""
    pol, sources, variants = CASES["capsfusion_guard"]
    with Store.open(mix_store, read_only=True) as s:
        audit(s, run_policy(s, pol))
        rows = s.execute("SELECT caption_id, variant, retention FROM mix_retention").fetchall()
    assert len(rows) == len({cid for cid, _, _ in rows}) > 0
    assert all(0 <= t <= 1 for _, _, t in rows)
    assert all(t == 1 for _, v, t in rows if v == "raw")
    assert any(t < 1 for _, v, t in rows if v == "fused")


def test_a_manifest_file_written_by_the_cli_audits_to_the_python_recount(mix_store, raw, tmp_path, capsys):
    """audit_manifest: the manifest rows come from the parquet file `curate mix` wrote
    (through the CLI in-process), the pool from the policy in its sidecar."""
    policy = tmp_path / "budget.toml"
    policy.write_text(BUDGET_TOML, encoding="utf-8")
    assert load_policy(policy) == CASES["budget_clip_select"][0]
    out = tmp_path / "m.parquet"
    code, _, err = run_cli("mix", str(policy), "--store", str(mix_store), "--out", str(out), capsys=capsys)
    assert code == 0, err
    file_rows = pq.read_table(out).to_pylist()
    man = [Row(uuid.UUID(r["uid"]), r["source"], uuid.UUID(r["caption_id"]), r["variant"], r["weight"])
           for r in file_rows]
    with Store.open(mix_store, read_only=True) as s:
        got = frames_of(audit_manifest(s, out, vocabulary=VOCAB))
        retention = dict(s.execute("SELECT caption_id, retention FROM mix_retention").fetchall())
    assert len(man) == 120
    pool = pool_of(raw, {"capsfusion"}, {"raw", "synthetic", "fused"})
    assert_frames(got, expected(pool, man, raw, retention))


def test_audit_clip_reads_the_latest_scores_the_policy_selected_on(mix_store, tmp_path):
    """A store whose clip_scores came from clip.score.v1 run twice for one model (two
    configurations): clip_scores_latest, which the clip_score attribute reads, holds the
    second run only. The audit must describe those scores, not both runs' rows."""
    path = tmp_path / "store"
    shutil.copytree(mix_store, path)
    model = "ViT-B-32/test"
    with Store.open(path) as s:
        s.execute("ALTER TABLE clip_scores RENAME TO stand_in")
        s.execute("""CREATE TABLE clip_scores AS
            SELECT k.caption_id, k.uid, c.variant, ? AS model, k.score - 0.1 * (r = 1)::INT AS score, 'ok' AS status,
                   NULL::VARCHAR AS detail, 'clip.score.v1' AS stage, 'h' || r AS config_hash, 100 + r AS run_id
            FROM stand_in k JOIN captions c USING (caption_id), range(1, 3) t(r)""", [model])
        for r in (1, 2):
            s.execute("INSERT INTO runs (run_id, kind, stage, config, config_hash, status, started_at, curate_version) "
                      "VALUES (?, 'stage', 'clip.score.v1', ?, ?, 'ok', now(), 'test')",
                      [100 + r, f'{{"config": {{"model_id": "{model}"}}}}', f"h{r}"])
        from curate.stages.clip import SCORES_LATEST_VIEW
        s.execute(SCORES_LATEST_VIEW)
        latest = defaultdict(list)
        for cid, score, h in s.execute("SELECT caption_id, score, config_hash FROM clip_scores").fetchall():
            if h == "h2":
                latest[cid].append(score)
    pol = policy_from_dict({k: v for k, v in BUDGET.items() if k != "weight"})
    with Store.open(path, read_only=True) as s:
        res = run_policy(s, pol)
        got = frames_of(audit(s, res))
        man = [Row(*r) for r in s.execute("SELECT uid, source, caption_id, variant, weight FROM _mix_final").fetchall()]
        captions = [Row(*r) for r in s.execute("SELECT uid, source, caption_id, variant FROM captions").fetchall()]
    pool = [c for c in captions if c.source == "capsfusion" and c.variant in {"raw", "synthetic", "fused"}]
    raw_latest = Raw(captions, {}, latest, {}, {}, set())
    assert got["audit_clip"] == expect_clip(pool, man, raw_latest)
