"""`curate mix` from real TOML policy files, through the CLI in-process.

tests/test_mix.py tests most strategy, weight and budget options through Python dicts
(``policy_from_dict``). Here each option is written as a TOML file in ``tmp_path`` and
run with ``curate mix`` on the same 500 CapsFusion records and LaCLIP pairs. Every test
reads the manifest file and its ``.sidecar.json`` back, checks the rows against a plain
Python computation of the rule in docs/mixing.md, and checks that the CLI wrote the
same bytes (manifest and sidecar) as ``write_manifest`` given the same policy built
from the Python objects.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from curate import Store
from curate.mix import (
    Budget,
    KnowledgeAware,
    MetaCLIPWeight,
    OneVariant,
    Output,
    Policy,
    Ratio,
    load_policy,
    write_manifest,
)
from curate.mix.attributes import named
from curate.mix.manifest import EXT
from tests.test_mix import mix_store, run_cli  # noqa: F401

#: the columns docs/mixing.md promises for parquet and jsonl, in order
ROW_KEYS = ["uid", "source", "url", "image_shard", "image_key", "image_path", "caption_id", "caption", "variant",
            "weight"]
#: csv/tsv: open_clip's two columns first, then the ids, the variant and the weight
CSV_KEYS = ["filepath", "title", "uid", "caption_id", "variant", "weight"]


# -- helpers ------------------------------------------------------------------------------
def write_policy(tmp_path: Path, stem: str, text: str) -> Path:
    path = tmp_path / f"{stem}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def mix_cli(capsys, policy: Path, store: Path, *extra: str) -> str:
    code, out, err = run_cli("mix", str(policy), "--store", str(store), *extra, capsys=capsys)
    assert code == 0, err
    return out


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + ".sidecar.json")


def api_manifest(store: Path, policy: Policy, path: Path) -> dict:
    with Store.open(store, read_only=True) as s:
        return write_manifest(s, policy, path=path)


def assert_same_files(cli_path: Path, api: dict) -> dict:
    """The CLI's manifest and sidecar are byte-identical to the Python API's; returns the
    sidecar as read from the CLI's file."""
    api_path = Path(api["path"])
    assert cli_path.name == api_path.name  # the sidecar records the file name
    assert cli_path.read_bytes() == api_path.read_bytes()
    assert sidecar_of(cli_path).read_bytes() == Path(api["sidecar"]).read_bytes()
    return json.loads(sidecar_of(cli_path).read_text(encoding="utf-8"))


def raw_in_draw_order(store: Path, seed: int, source: str = "capsfusion") -> list[tuple[str, str]]:
    """(uid hex, raw caption) of a source's samples in the budget's draw order: ascending
    ``hash(uid, seed)``, then uid."""
    with Store.open(store, read_only=True) as s:
        rows = s.execute(f"SELECT replace(p.uid::VARCHAR, '-', ''), hash(p.uid, {int(seed)}), c.text "
                         "FROM samples p JOIN captions c USING (uid) WHERE c.variant = 'raw' AND p.source = ?",
                         [source]).fetchall()
    return [(u, t) for u, _, t in sorted(rows, key=lambda r: (r[1], r[0]))]


def read_rows(path: Path, fmt: str) -> list[dict]:
    """Rows as a trainer reads them: pandas ``read_csv(sep=...)`` for csv/tsv (open_clip's
    CsvDataset), one JSON object per line for jsonl, pyarrow for parquet."""
    if fmt in ("csv", "tsv"):
        df = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False)
        return df.to_dict("records")
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return pq.read_table(path).to_pylist()


def largest_remainder(total: int, shares: dict[str, str]) -> dict[str, int]:
    """docs/mixing.md: floor(N p) per group, then one more to the largest fractional
    parts (ties by group name) until the quotas sum to N; exact arithmetic."""
    exact = {g: total * Fraction(p) for g, p in shares.items()}
    quota = {g: math.floor(x) for g, x in exact.items()}
    for g in sorted(exact, key=lambda g: (-(exact[g] - quota[g]), g))[:total - sum(quota.values())]:
        quota[g] += 1
    return quota


# -- 1. choose strategies -------------------------------------------------------------------
def test_ratio_strategy_from_toml_through_the_cli(mix_store, tmp_path, capsys):
    """``ratio``: u = hash(uid, seed, 'choose') / 2^64 picks the variant by cumulative
    share in the listed order (every CapsFusion sample has all three variants, so no
    renormalisation); recomputed here per sample from DuckDB's hash."""
    toml = write_policy(tmp_path, "toml-ratio", """
[policy]
name = "toml-ratio"
seed = 5
sources = ["capsfusion"]

[choose]
strategy = "ratio"
ratios = { raw = 0.2, synthetic = 0.2, fused = 0.6 }

[output]
format = "parquet"
candidates = true
""")
    ratios = {"raw": 0.2, "synthetic": 0.2, "fused": 0.6}
    pol = Policy("toml-ratio", seed=5, sources=("capsfusion",), choose=Ratio(ratios),
                 output=Output(format="parquet", candidates=True))
    assert load_policy(toml) == pol
    out_path = tmp_path / "cli" / "toml-ratio.parquet"
    out = mix_cli(capsys, toml, mix_store, "--out", str(out_path))
    assert f"wrote 500 rows to {out_path}" in out
    assert not (mix_store / "manifests" / "toml-ratio.parquet").exists()  # --out, not STORE/manifests
    side = assert_same_files(out_path, api_manifest(mix_store, pol, tmp_path / "api" / "toml-ratio.parquet"))

    with Store.open(mix_store, read_only=True) as s:
        u = {uid: (h >> 11) / 2**53 for uid, h in s.execute(
            "SELECT replace(uid::VARCHAR, '-', ''), hash(uid, 5, 'choose') FROM samples "
            "WHERE source = 'capsfusion'").fetchall()}
        text = {(uid, v): t for uid, v, t in s.execute(
            "SELECT replace(uid::VARCHAR, '-', ''), variant, text FROM captions WHERE source = 'capsfusion'").fetchall()}
    want = {}
    for uid, x in u.items():
        lo = 0.0
        for variant, share in ratios.items():
            if lo <= x:
                want[uid] = variant
            lo += share
    rows = read_rows(out_path, "parquet")
    assert len(rows) == side["rows"] == 500
    assert {r["uid"]: r["variant"] for r in rows} == want
    assert all(r["caption"] == text[(r["uid"], r["variant"])] for r in rows)
    assert all({c["variant"]: c["prob"] for c in r["captions"]} == pytest.approx(ratios) for r in rows)
    assert side["counts"]["by_variant"] == dict(sorted(Counter(want.values()).items()))
    assert set(want.values()) == set(ratios)
    assert side["policy"]["choose"] == {"strategy": "ratio", "ratios": ratios} and side["seed"] == 5


@pytest.mark.parametrize("variants", [("synthetic", "fused"), ("fused",)])
def test_knowledge_strategy_from_toml_through_the_cli(mix_store, tmp_path, capsys, variants):
    """``knowledge`` with raw as the reference only: of the listed captions with no
    hallucinated entity, the one retaining the most raw entities, ties to the earlier
    variant in the list; a sample whose candidates all hallucinate is dropped (only
    possible without synthetic, which is a reference and never hallucinates).
    Recomputed from the named per-caption queries."""
    stem = "toml-knowledge-" + "-".join(variants)
    toml = write_policy(tmp_path, stem, f"""
[policy]
name = "{stem}"
sources = ["capsfusion"]

[choose]
strategy = "knowledge"
variants = [{", ".join(f'"{v}"' for v in variants)}]
raw = "raw"
synthetic = "synthetic"

[output]
format = "jsonl"
""")
    pol = Policy(stem, sources=("capsfusion",), choose=KnowledgeAware(variants=variants), output=Output(format="jsonl"))
    assert load_policy(toml) == pol
    out_path = tmp_path / "cli" / f"{stem}.jsonl"
    mix_cli(capsys, toml, mix_store, "--out", str(out_path))
    side = assert_same_files(out_path, api_manifest(mix_store, pol, tmp_path / "api" / f"{stem}.jsonl"))

    listed = ", ".join(f"'{v}'" for v in variants)
    with Store.open(mix_store, read_only=True) as s:
        cands = s.execute(f"""
            SELECT replace(c.uid::VARCHAR, '-', ''), c.variant, replace(c.caption_id::VARCHAR, '-', ''),
                   coalesce(r.retained, 0), coalesce(h.hallucinated, 0)
            FROM captions c LEFT JOIN ({named('mix.caption_retention')}) r ON r.caption_id = c.caption_id
            LEFT JOIN ({named('mix.caption_hallucinations')}) h ON h.caption_id = c.caption_id
            WHERE c.source = 'capsfusion' AND c.variant IN ({listed})""").fetchall()
    order = {v: i for i, v in enumerate(variants)}
    by_uid: dict[str, list] = {}
    for uid, variant, cid, retained, hallucinated in cands:
        by_uid.setdefault(uid, []).append((variant, cid, retained, hallucinated))
    want = {}
    for uid, cs in by_uid.items():
        ok = [c for c in cs if c[3] == 0]
        if ok:
            best = max(ok, key=lambda c: (c[2], -order[c[0]]))
            want[uid] = (best[0], best[1])
    rows = read_rows(out_path, "jsonl")
    assert len(by_uid) == 500
    assert {r["uid"]: (r["variant"], r["caption_id"]) for r in rows} == want
    assert side["rows"] == len(want)
    assert side["counts"]["dropped_by_choose"] == 500 - len(want)
    assert side["counts"]["by_variant"] == dict(sorted(Counter(v for v, _ in want.values()).items()))
    assert set(side["counts"]["by_variant"]) == set(variants)
    if "synthetic" in variants:
        assert len(want) == 500
    else:
        assert 0 < 500 - len(want) < 500  # some fused captions hallucinate
    assert side["policy"]["choose"] == {"strategy": "knowledge", "variants": list(variants),
                                        "raw": "raw", "synthetic": "synthetic"}


# -- 2. budget by source ----------------------------------------------------------------------
@pytest.mark.parametrize("samples, shares", [
    (101, {"capsfusion": "0.7", "laclip": "0.3"}),    # 70.7 -> 71, 30.3 -> 30
    (300, {"capsfusion": "0.8", "laclip": "0.2"}),    # laclip's quota 60 > its 46 rows: not moved
    (None, {"capsfusion": "0.85", "laclip": "0.15"}),  # N = floor(min(500/0.85, 46/0.15)) = 306
])
def test_budget_by_source_from_toml_through_the_cli(mix_store, tmp_path, capsys, samples, shares):
    """``by = "source"``: quotas by the largest remainder (N = ``samples``, or without it
    the largest total every source can fill, ``floor(min(available / p))``); each source
    gives its first ``min(quota, available)`` samples in draw order. Counts in the
    sidecar and rows per source in the file match that rule computed here in exact
    arithmetic from the available counts."""
    stem = f"toml-budget-{samples}"
    props = ", ".join(f"{g} = {p}" for g, p in shares.items())
    toml = write_policy(tmp_path, stem, f"""
[policy]
name = "{stem}"
seed = 3

[choose]
strategy = "variant"
variant = "raw"

[budget]
{f"samples = {samples}" if samples is not None else ""}
by = "source"
proportions = {{ {props} }}

[output]
format = "parquet"
""")
    pol = Policy(stem, seed=3, choose=OneVariant("raw"),
                 budget=Budget(samples=samples, by="source", proportions={g: float(p) for g, p in shares.items()}))
    assert load_policy(toml) == pol
    out_path = tmp_path / "cli" / f"{stem}.parquet"
    out = mix_cli(capsys, toml, mix_store, "--out", str(out_path))
    side = assert_same_files(out_path, api_manifest(mix_store, pol, tmp_path / "api" / f"{stem}.parquet"))

    drawn = {g: raw_in_draw_order(mix_store, 3, g) for g in shares}
    available = {g: len(v) for g, v in drawn.items()}
    assert available == {"capsfusion": 500, "laclip": 46}
    total = samples if samples is not None else math.floor(min(Fraction(available[g]) / Fraction(p)
                                                               for g, p in shares.items()))
    quota = largest_remainder(total, shares)
    assert sum(quota.values()) == total
    taken = {g: min(quota[g], available[g]) for g in shares}
    assert side["counts"]["budget"] == {
        "by": "source", "total": total, "rounding": "largest remainder",
        "groups": {g: {"share": float(shares[g]), "available": available[g], "quota": quota[g], "taken": taken[g]}
                   for g in sorted(shares)}}
    rows = read_rows(out_path, "parquet")
    assert len(rows) == side["rows"] == sum(taken.values()) <= total
    assert Counter(r["source"] for r in rows) == taken
    assert side["counts"]["by_source"] == taken
    for g in shares:  # each source's rows are its head in draw order
        assert {r["uid"] for r in rows if r["source"] == g} == {u for u, _ in drawn[g][:taken[g]]}
    assert (f"budget by source (largest remainder), total {total:,}: "
            + ", ".join(f"{g} {taken[g]:,}/{quota[g]:,} of {available[g]:,}" for g in sorted(shares))) in out
    if samples is None:
        assert total == 306 and quota == {"capsfusion": 260, "laclip": 46}
    if samples == 300:
        assert quota["laclip"] == 60 and taken["laclip"] == 46 and len(rows) == 286


# -- 3. MetaCLIP weights with matched counts -------------------------------------------------
def metaclip_oracle(store: Path, t: int, k: int, min_score: float = 0.0) -> tuple[dict[str, float], int]:
    """MetaCLIP ``w = 1 - prod(1 - t / max(n_c, t))`` over the concepts the chosen raw
    caption names and the image's latest tagging run puts in its top ``k`` (score >=
    min_score); n_c = chosen samples with concept c; unmatched samples weigh 1.
    Returns (weight per uid hex, text hits the image side removed)."""
    with Store.open(store, read_only=True) as s:
        chosen = dict(s.execute("SELECT replace(uid::VARCHAR, '-', ''), caption_id::VARCHAR FROM captions "
                                "WHERE source = 'capsfusion' AND variant = 'raw'").fetchall())
        hits = s.execute("SELECT replace(uid::VARCHAR, '-', ''), caption_id::VARCHAR, concept FROM concept_hits "
                         "WHERE vocabulary = 'cifar10' AND mode = 'phrase'").fetchall()
        tags = s.execute("SELECT replace(uid::VARCHAR, '-', ''), concept, score, rank, run_id FROM concept_tags "
                         "WHERE set_name = 'imgs' AND concept_set = 'cifar10@stand-in'").fetchall()
    latest = max(r[4] for r in tags)
    shown = {(u, c) for u, c, score, rank, run in tags if run == latest and rank <= k and score >= min_score}
    concepts: dict[str, set[str]] = {}
    removed = 0
    for uid, cid, concept in hits:
        if chosen.get(uid) != cid:
            continue
        if (uid, concept) not in shown:
            removed += 1
            continue
        concepts.setdefault(uid, set()).add(concept)
    n = Counter(c for cs in concepts.values() for c in cs)
    return {uid: (1 - math.prod(1 - t / max(n[c], t) for c in concepts[uid]) if uid in concepts else 1.0)
            for uid in chosen}, removed


def test_metaclip_matched_weights_from_toml_through_the_cli(mix_store, tmp_path, capsys):
    toml = write_policy(tmp_path, "toml-metaclip", """
[policy]
name = "toml-metaclip"
sources = ["capsfusion"]

[choose]
strategy = "variant"
variant = "raw"

[weight]
method = "metaclip"
vocabulary = "cifar10"
t = 2
counts = "matched"
image_set = "imgs"
concept_set = "cifar10@stand-in"
k = 7

[output]
format = "jsonl"
""")
    pol = Policy("toml-metaclip", sources=("capsfusion",), choose=OneVariant("raw"),
                 weight=MetaCLIPWeight(vocabulary="cifar10", t=2, counts="matched", image_set="imgs",
                                       concept_set="cifar10@stand-in", k=7),
                 output=Output(format="jsonl"))
    assert load_policy(toml) == pol
    out_path = tmp_path / "cli" / "toml-metaclip.jsonl"
    out = mix_cli(capsys, toml, mix_store, "--out", str(out_path))
    assert "weight: min " in out
    side = assert_same_files(out_path, api_manifest(mix_store, pol, tmp_path / "api" / "toml-metaclip.jsonl"))

    rows = read_rows(out_path, "jsonl")
    got = {r["uid"]: r["weight"] for r in rows}
    assert len(got) == 500 and all(w > 0 and math.isfinite(w) for w in got.values())
    assert len({round(w, 9) for w in got.values()}) >= 2
    want, removed = metaclip_oracle(mix_store, t=2, k=7)
    assert removed > 0  # the image side (top 7 of the latest run) removed some text hits
    assert got.keys() == want.keys()
    assert all(got[u] == pytest.approx(w, rel=1e-9) for u, w in want.items())
    # k = 7 from the file matters: the default k = 5 would give other weights
    assert want != metaclip_oracle(mix_store, t=2, k=5)[0]
    weight = side["policy"]["weight"]
    assert {key: weight[key] for key in ("method", "vocabulary", "t", "counts", "image_set", "concept_set", "k")} == {
        "method": "metaclip", "vocabulary": "cifar10", "t": 2, "counts": "matched", "image_set": "imgs",
        "concept_set": "cifar10@stand-in", "k": 7}
    tag_runs = [st for st in side["stages"] if st["table"] == "concept_tags"]
    assert [(st["set_name"], st["concept_set"], st["config_hash"]) for st in tag_runs] == [
        ("imgs", "cifar10@stand-in", "h1")]  # the latest tagging run, not the older h0
    assert side["counts"]["weight"]["min"] == pytest.approx(min(want.values()))
    assert side["counts"]["weight"]["sum"] == pytest.approx(sum(want.values()))


# -- 4. formats, from [output] and from the CLI overrides --------------------------------------
BASE = """
[policy]
name = "{name}"
seed = 0
sources = ["capsfusion"]

[choose]
strategy = "variant"
variant = "raw"

[budget]
samples = 40

[output]
{output}
"""


def check_format(path: Path, fmt: str, side: dict, want: list[tuple[str, str]], candidates: bool = False) -> None:
    """The file has the columns its trainer reads and the budget's head in draw order."""
    rows = read_rows(path, fmt)
    assert side["format"] == fmt and side["manifest"] == path.name and side["rows"] == len(rows) == len(want)
    if fmt in ("csv", "tsv"):
        sep = "\t" if fmt == "tsv" else ","
        header = path.read_text(encoding="utf-8").split("\n", 1)[0]
        assert header == sep.join(CSV_KEYS)
        assert list(pd.read_csv(path, sep=sep).columns) == CSV_KEYS  # what open_clip's CsvDataset reads
        assert next(csv.reader(io.StringIO(path.read_text(encoding="utf-8")), delimiter=sep)) == CSV_KEYS
        assert [(r["uid"], r["title"]) for r in rows] == want
        assert all(r["variant"] == "raw" and float(r["weight"]) == 1.0 and len(r["caption_id"]) == 32 for r in rows)
        assert all(r["filepath"] == "" for r in rows)  # no image_path, no url in these samples
        args = side["open_clip"]["args"]
        assert args == ["--dataset-type", "csv", "--csv-img-key", "filepath", "--csv-caption-key", "title",
                        "--csv-separator", sep]
        assert side["open_clip"]["images"] == "any" and side["open_clip"]["excluded"] == {"no image": len(want)}
    else:
        assert all(list(r) == ROW_KEYS + (["captions"] if candidates else []) for r in rows)
        assert [(r["uid"], r["caption"]) for r in rows] == want
        assert all(r["variant"] == "raw" and r["source"] == "capsfusion" and r["weight"] == 1.0 for r in rows)
        if candidates:
            assert all(r["captions"] == [{"variant": "raw", "caption_id": r["caption_id"], "text": r["caption"],
                                          "prob": 1.0}] for r in rows)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_output_format_and_name_from_toml(mix_store, tmp_path, capsys, fmt):
    """``[output] format`` and ``name``: the file is STORE/manifests/<output.name>.<ext>,
    in the trainer's columns, holding the 40 first samples of the draw order."""
    extra = "\ncandidates = true" if fmt == "jsonl" else '\nimages = "any"'  # url samples only in this store
    toml = write_policy(tmp_path, f"toml-format-{fmt}", BASE.format(
        name=f"toml-format-{fmt}", output=f'format = "{fmt}"\nname = "named-{fmt}"{extra}'))
    pol = Policy(f"toml-format-{fmt}", sources=("capsfusion",), choose=OneVariant("raw"), budget=Budget(samples=40),
                 output=Output(format=fmt, name=f"named-{fmt}", candidates=fmt == "jsonl",
                               images="local" if fmt == "jsonl" else "any"))
    assert load_policy(toml) == pol
    out = mix_cli(capsys, toml, mix_store)
    path = mix_store / "manifests" / f"named-{fmt}.{EXT[fmt]}"
    assert f"wrote 40 rows to {path} ({fmt}); sidecar {sidecar_of(path)}" in out
    assert not (mix_store / "manifests" / f"toml-format-{fmt}.{EXT[fmt]}").exists()
    side = assert_same_files(path, api_manifest(mix_store, pol, tmp_path / "api" / path.name))
    check_format(path, fmt, side, raw_in_draw_order(mix_store, 0)[:40], candidates=fmt == "jsonl")
    assert side["policy"]["output"]["format"] == fmt and side["policy"]["output"]["name"] == f"named-{fmt}"


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_cli_overrides_format_seed_and_name(mix_store, tmp_path, capsys, fmt):
    """``--format``, ``--seed`` and ``--name`` override a parquet, seed-0 policy: the
    file is <name>.<ext> in the new format, the budget draws by the new seed (another
    selection and order than seed 0), and the sidecar records the overridden policy."""
    stem = f"toml-override-{fmt}"
    toml = write_policy(tmp_path, stem, BASE.format(name=stem, output='format = "parquet"'))
    base = Policy(stem, sources=("capsfusion",), choose=OneVariant("raw"), budget=Budget(samples=40))
    assert load_policy(toml) == base
    paths = {}
    for seed in (7, 0):
        name = f"run{seed}-{fmt}"
        images = "any" if fmt in ("csv", "tsv") else "local"  # the store has url samples only
        args = ["--format", fmt, "--name", name] + (["--images", "any"] if images == "any" else []) + (
            ["--seed", str(seed)] if seed else [])
        out = mix_cli(capsys, toml, mix_store, *args)
        assert f"policy {stem} (seed {seed}):" in out
        path = paths[seed] = mix_store / "manifests" / f"{name}.{EXT[fmt]}"
        pol = Policy(stem, seed=seed, sources=("capsfusion",), choose=OneVariant("raw"), budget=Budget(samples=40),
                     output=Output(format=fmt, name=name, images=images))
        side = assert_same_files(path, api_manifest(mix_store, pol, tmp_path / "api" / path.name))
        assert side["seed"] == side["policy"]["policy"]["seed"] == seed
        assert side["policy_hash"] == pol.hash()
        assert side["policy"]["output"] == {"format": fmt, "name": name, "candidates": False, "max_repeats": 100,
                                            "images": images}
        check_format(path, fmt, side, raw_in_draw_order(mix_store, seed)[:40])
    assert not (mix_store / "manifests" / f"{stem}.parquet").exists()  # the file's own format and name unused
    seven, zero = (read_rows(paths[s], fmt) for s in (7, 0))
    key = "title" if fmt in ("csv", "tsv") else "caption"
    assert [r[key] for r in seven] != [r[key] for r in zero]
    assert {r[key] for r in seven} != {r[key] for r in zero}  # another selection, not only another order
