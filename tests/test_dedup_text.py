"""Caption dedup (issue #7): oracle tests against datasketch and brute-force Jaccard on
real LAION, CC3M, CapsFusion and COCO captions; short-caption traps; bad input; the
store tables, reruns and failures; SQL twins; HyperLogLog; the CLI."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import CurateError, MissingExtraError, Store
from curate.dedup.hll import distinct_counts, registers
from curate.dedup.minhash import (
    band_keys,
    candidate_pairs,
    jaccard_pairs,
    lsh_params,
    shingle_hashes,
    shingles_of,
    signatures,
)
from curate.dedup.normalize import NO_WORDS, NULL_TEXT, normalize_sql, normalize_text
from curate.dedup.quality import SHORT_SAME, SHORT_TRAPS, group_pairs, oracle_pairs, plant, score
from curate.dedup.text import dedup_captions, find_duplicates
from curate.ingest import ingest

datasketch = pytest.importorskip("datasketch")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def laion_texts(laion_file) -> list[str]:
    return pq.read_table(laion_file, columns=["TEXT"]).column("TEXT").to_pylist()


@pytest.fixture(scope="module")
def corpus_store(tmp_path_factory, laion_file, cc3m_file, capsfusion_file):
    """LAION, CC3M and CapsFusion in one store, with one default dedup run."""
    s = Store.init(tmp_path_factory.mktemp("dedup") / "store")
    ingest(s, "table", laion_file, "laion400m", preset="laion")
    ingest(s, "table", cc3m_file, "cc3m", preset="cc3m")
    ingest(s, "capsfusion", capsfusion_file, "capsfusion")
    res = dedup_captions(s)
    yield s, res
    s.close()


def _ds_minhash(normal: str, shingle: int = 3, num_perm: int = 128, seed: int = 1):
    m = datasketch.MinHash(num_perm=num_perm, seed=seed)
    for sh in shingles_of(normal, shingle):
        m.update(sh.encode("utf-8"))
    return m


# -- MinHash and LSH against datasketch and brute force ------------------------------------
@pytest.mark.parametrize("shingle,num_perm,seed", [(3, 128, 1), (1, 64, 7)])
def test_signatures_equal_datasketch(laion_texts, shingle, num_perm, seed):
    normals = [n for n in (normalize_text(t) for t in laion_texts[:400]) if n]
    normals += ["red", "dress red", "東京タワー 夜景", " ".join(f"w{i}" for i in range(20_000))]  # > one chunk
    sig = signatures(shingle_hashes(normals, shingle), num_perm, seed)
    for k, n in enumerate(normals):
        assert np.array_equal(sig[k], _ds_minhash(n, shingle, num_perm, seed).hashvalues), n[:80]


def test_lsh_candidates_equal_datasketch_and_cover_brute_force(laion_texts):
    texts = plant(laion_texts[:1500], 500, seed=3).texts
    normals = [n for n in (normalize_text(t) for t in texts) if n]
    sh = shingle_hashes(normals, 3)
    bands, rows = lsh_params(0.8, 128)
    ci, cj, _ = candidate_pairs(band_keys(signatures(sh), bands, rows))
    ours = set(zip(ci.tolist(), cj.tolist()))
    lsh = datasketch.MinHashLSH(num_perm=128, params=(bands, rows))
    hashes = [_ds_minhash(n) for n in normals]
    for i, m in enumerate(hashes):
        lsh.insert(i, m)
    theirs = {(min(i, j), max(i, j)) for i, m in enumerate(hashes) for j in lsh.query(m) if j != i}
    assert ours == theirs
    oracle = oracle_pairs(normals, 3, 0.8)
    assert len(oracle) > 200
    found = sum(p in ours for p in oracle) / len(oracle)
    assert found >= 0.98, found
    # verification is exact: the Jaccard of each candidate equals the brute-force value
    jac = jaccard_pairs(sh, ci, cj)
    for (i, j), v in zip(zip(ci.tolist(), cj.tolist()), jac):
        if (i, j) in oracle:
            assert v == pytest.approx(oracle[(i, j)])
        else:
            assert v < 0.8


def test_quality_on_laion_with_planted_near_duplicates(laion_texts):
    """A smaller version of the benchmark's quality run: recall >= 0.95 at precision >= 0.98,
    for the Jaccard rule alone (the one-word edit rule off; with it, the oracle of the new
    definition is the reference: tests/test_dedup_recall.py)."""
    pl = plant(laion_texts[:4000], 1200, seed=5)
    oracle = set(oracle_pairs(pl.texts, 3, 0.8))
    res = find_duplicates(pl.texts, edit_min_words=0)
    g = res.groups.to_pydict()
    pred = group_pairs([int(m) for m in g["member_id"]], g["group_id"])
    s = score(pred, oracle)
    assert s.true > 500
    assert s.recall >= 0.95 and s.precision >= 0.98, s
    assert min(g["similarity"]) >= 0.8  # center grouping: every member is a near duplicate of the kept one
    edits = collections.Counter(pl.edit[b] for a, b in oracle if pl.edit[b] != "original")
    assert set(edits) >= {"append", "drop", "punctuation", "case"}, edits


def test_group_invariants(corpus_store):
    s, res = corpus_store
    g = res.groups.to_pydict()
    text = dict(s.con.execute("SELECT caption_id::VARCHAR, text FROM captions").fetchall())
    by = collections.defaultdict(list)
    for gid, m, kept, sim, method, size in zip(g["group_id"], g["member_id"], g["kept"], g["similarity"], g["method"],
                                               g["group_size"]):
        by[gid].append((kept, sim, method, size, normalize_text(text[m]).split()))
    methods = collections.Counter()
    for members in by.values():
        assert sum(k for k, *_ in members) == 1
        assert all(size == len(members) for *_, size, _ in members)
        kept_words = next(w for k, *_, w in members if k)
        for kept, sim, method, _, words in members:
            methods[method] += 1
            assert method != "exact" or sim == 1.0
            assert method in ("exact", "short", "minhash", "edit")
            if method == "edit":  # one word inserted into the shorter, which has at least 4 words
                a, b = sorted((words, kept_words), key=len)
                assert len(a) >= 4 and any(b[:k] + b[k + 1:] == a for k in range(len(b))) and sim < 0.8
            else:
                assert sim >= 0.8
            if kept:
                assert method == "exact" and sim == 1.0
    assert methods["edit"] > 0 and methods["minhash"] > 0


# -- short captions and paraphrases ---------------------------------------------------------
def test_short_caption_traps_are_never_grouped():
    # the failure being avoided: naive 3-word shingling leaves short captions with no
    # shingles, and every empty datasketch MinHash is equal to every other
    empty = [datasketch.MinHash(num_perm=128) for t in SHORT_TRAPS if len(normalize_text(t).split()) < 3]
    assert empty[0].jaccard(empty[1]) == 1.0
    texts = SHORT_TRAPS + [t for pair in SHORT_SAME for t in pair]
    res = find_duplicates(texts)
    g = res.groups.to_pydict()
    groups = collections.defaultdict(list)
    for m, gid, method in zip(g["member_id"], g["group_id"], g["method"]):
        groups[gid].append((texts[int(m)], method))
    for members in groups.values():
        assert len({frozenset(normalize_text(t).split()) for t, _ in members}) == 1, members
    assert {t for t, _ in groups[next(iter(groups))]} == {"red dress", "dress red", "Red Dress!"}
    assert {m for members in groups.values() for _, m in members} == {"exact", "short"}
    assert len(groups) == 1


def test_coco_paraphrases_are_mostly_not_merged(coco_val2017_file):
    data = json.loads(coco_val2017_file.read_text())
    caps = [(a["image_id"], a["caption"]) for a in data["annotations"]][:10_000]
    res = find_duplicates([c for _, c in caps])
    g = res.groups.to_pydict()
    pairs = group_pairs([int(m) for m in g["member_id"]], g["group_id"])
    per_image = collections.Counter(i for i, _ in caps)
    same_image = sum(n * (n - 1) // 2 for n in per_image.values())
    merged = sum(caps[a][0] == caps[b][0] for a, b in pairs)
    assert merged / same_image < 0.01, (merged, same_image)


# -- bad input ------------------------------------------------------------------------------
def test_bad_input_is_analysed_or_skipped_with_a_reason():
    big = " ".join(f"word{i}" for i in range(100_000))  # 1 MB
    assert len(big) > 980_000
    texts = [None, "", "   ", "!!! ...", "😀😀😀", "🎉", big, big + " extra", "東京タワー の 夜景 写真",
             "東京タワー の 夜景 写真!", "Москва ночью, вид сверху", "москва НОЧЬЮ вид сверху", "mixed 東京 Москва text",
             "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ here", "fullwidth text here", "zero\u200bwidth join", "zero width join"]
    res = find_duplicates(texts)
    skipped = dict(zip(map(int, res.skipped.column("member_id").to_pylist()), res.skipped.column("reason").to_pylist()))
    assert skipped == {0: NULL_TEXT, 1: NO_WORDS, 2: NO_WORDS, 3: NO_WORDS, 4: NO_WORDS, 5: NO_WORDS}
    groups = collections.defaultdict(set)
    for m, gid in zip(res.groups.column("member_id").to_pylist(), res.groups.column("group_id").to_pylist()):
        groups[gid].add(int(m))
    assert sorted(map(sorted, groups.values())) == [[6, 7], [8, 9], [10, 11], [13, 14], [15, 16]]
    stats = res.scopes["*"]
    assert stats.items == len(texts) and stats.skipped == 6 and stats.analysed == len(texts) - 6


def test_bad_captions_in_the_store_are_recorded(store):
    # ingest rejects these; a store written by other tools may still hold them
    rows = [("", "raw"), ("?!", "raw"), ("😀", "raw"), ("a b c d e", "raw"), ("A, B, C, D, E", "raw"), ("x" * 1_000_000, "raw")]
    for i, (text, variant) in enumerate(rows):
        store.con.execute("INSERT INTO captions (caption_id, uid, variant, text, source, run_id) "
                          "VALUES (md5_number(?)::UUID, md5_number(?)::UUID, ?, ?, 'bad', 0)", [str(i), str(i), variant, text])
    res = dedup_captions(store)
    assert store.con.execute("SELECT reason, count(*) FROM dedup_skipped GROUP BY ALL").fetchall() == [(NO_WORDS, 3)]
    assert store.con.execute("SELECT count(*), count(DISTINCT group_id) FROM dedup_groups").fetchall() == [(2, 1)]
    assert res.scopes["raw"].items == 6


# -- normalisation: Python vs SQL ------------------------------------------------------------
def test_normalisation_examples():
    assert normalize_text("  Hello,  WORLD!! 😀 ") == "hello world"
    assert normalize_text("ＡＢＣ ﬁne\u00a0x\u200by—z_a\tb") == "abc fine x y z a b"
    assert normalize_text("Straße") == "straße"
    assert normalize_text("!!!") == normalize_text("😀") == ""


def test_sql_twin_agrees_with_python_on_real_captions(laion_texts, cc3m_file):
    import duckdb

    cc3m = [line.split("\t")[0] for line in cc3m_file.read_text(encoding="utf-8").splitlines()]
    special = ["ＡＢＣ", "ﬁne", "x²", "①", "İstanbul", "a\u3000b", "tab\there", "e\u0301"]
    texts = laion_texts + cc3m + special
    con = duckdb.connect()
    sql = con.execute(f"SELECT {normalize_sql('t')} FROM unnest($1) AS u(t)", [texts]).fetchall()
    differ = [t for t, (s,) in zip(texts, sql) if s != normalize_text(t)]
    # the documented differences only: NFKC compatibility characters and İ
    import unicodedata
    for t in differ:
        assert unicodedata.normalize("NFKC", t) != unicodedata.normalize("NFC", t) or "İ" in t, t
    assert {"ＡＢＣ", "ﬁne", "x²", "①", "İstanbul"} <= set(differ)
    assert len(differ) / len(texts) < 0.005, len(differ)


def test_sql_exact_repetition_matches_the_python_pass(corpus_store):
    s, res = corpus_store
    sql = {r[0]: r for r in s.query("dedup.exact_repetition").fetchall()}
    for scope, st in res.scopes.items():
        assert sql[scope][4] == st.distinct_items, scope  # no compatibility characters in these sources


def test_store_floors_and_repetition(corpus_store):
    s, res = corpus_store
    # real-data floors (research notes): LAION 12 and CC3M 290 duplicate texts (both 'raw'), laion_coco 61
    assert res.scopes["raw"].exact_removed >= 12 + 290
    assert res.scopes["synthetic"].exact_removed >= 61
    assert res.scopes["synthetic"].near_rate >= res.scopes["synthetic"].exact_rate
    rep = {r["scope"]: r for r in s.query("dedup.repetition").to_arrow_table().to_pylist()}
    assert rep["synthetic"]["removed"] == res.scopes["synthetic"].removed
    assert rep["raw"]["run_id"] == res.run_id
    top = s.query("dedup.groups", scope="synthetic").to_arrow_table().to_pylist()
    assert top and top[0]["members"] >= 2 and top[0]["kept_text"]
    members = s.query("dedup.members", run_id=res.run_id, group_id=top[0]["group_id"]).fetchall()
    assert len(members) == top[0]["members"]
    assert s.query("dedup.exact_groups", variant="synthetic").fetchall()
    assert s.query("dedup.exact_groups_across").fetchall() is not None


# -- the store: runs, reruns, failures, kills -----------------------------------------------
@pytest.fixture
def laion_store(store, laion_file):
    ingest(store, "table", laion_file, "laion400m", preset="laion")
    return store


def test_rerun_replaces_and_other_configs_write_beside(laion_store):
    s = laion_store
    a = dedup_captions(s)
    n = s.count("dedup_groups")
    b = dedup_captions(s)
    assert s.count("dedup_groups") == n and a.config_hash == b.config_hash
    assert s.con.execute("SELECT DISTINCT run_id FROM dedup_groups").fetchall() == [(b.run_id,)]
    c = dedup_captions(s, threshold=0.9, keep="longest")
    assert c.config_hash != a.config_hash
    assert s.con.execute("SELECT count(DISTINCT config_hash) FROM dedup_summary").fetchall() == [(2,)]
    runs = s.con.execute("SELECT kind, stage, status, rows_in, rows_out FROM runs WHERE kind = 'dedup' ORDER BY run_id").fetchall()
    assert [r[:3] for r in runs] == [("dedup", "dedup.captions.v1", "ok")] * 3
    assert runs[0][3] == 9_999 and runs[0][4] == n


def test_keep_rules(store):
    base = "blue cotton summer dress with two pockets and a belt for women"
    texts = [base, base.title() + "!!!", base + " xl"]
    for t in texts:
        store.con.execute("INSERT INTO captions (caption_id, uid, variant, text, source, run_id) "
                          "VALUES (md5_number(?)::UUID, md5_number(?)::UUID, 'raw', ?, 'x', 0)", [t, t, t])
    ids = {t: str(store.con.execute("SELECT md5_number(?)::UUID", [t]).fetchall()[0][0]) for t in texts}
    for keep, want in [("longest", texts[2]), ("shortest", texts[0]), ("min_id", min(texts, key=lambda t: ids[t]))]:
        res = dedup_captions(store, keep=keep)
        kept = [m for m, k in zip(res.groups.column("member_id").to_pylist(), res.groups.column("kept").to_pylist()) if k]
        assert kept == [ids[want]], keep
        assert res.groups.num_rows == 3


def test_failed_write_leaves_the_previous_result(laion_store, monkeypatch):
    s = laion_store
    first = dedup_captions(s)
    before = s.con.execute("SELECT * FROM dedup_groups ORDER BY ALL").fetchall()
    import curate.dedup.text as text_mod

    real = text_mod.pa.table

    def broken_summary(*a, **k):
        t = real(*a, **k)
        if "near_rate" in t.column_names:  # the last table built before the transaction's inserts
            monkeypatch.setattr(text_mod.pa, "table", real)
            return t.rename_columns([*t.column_names[:-1], "not_a_column"])
        return t

    monkeypatch.setattr(text_mod.pa, "table", broken_summary)
    with pytest.raises(Exception):  # noqa: B017 - any failure of the write must roll back
        dedup_captions(s)
    assert s.con.execute("SELECT * FROM dedup_groups ORDER BY ALL").fetchall() == before
    status = s.con.execute("SELECT run_id, status FROM runs WHERE kind = 'dedup' ORDER BY run_id").fetchall()
    assert status[0] == (first.run_id, "ok") and status[1][1] == "failed"


def test_killed_run_leaves_nothing_and_is_marked_interrupted(tmp_path, laion_file):
    path = tmp_path / "store"
    with Store.init(path) as s:
        ingest(s, "table", laion_file, "laion400m", preset="laion")
    script = textwrap.dedent(f"""
        import sys, time
        import curate.dedup.text as t
        real = t._group
        def slow(*a, **k):
            print("computing", flush=True); time.sleep(60); return real(*a, **k)
        t._group = slow
        from curate import Store
        with Store.open({str(path)!r}) as s:
            t.dedup_captions(s)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 60
    assert proc.stdout is not None
    while "computing" not in proc.stdout.readline():
        assert time.time() < deadline
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with Store.open(path) as s:
        assert not s.has_table("dedup_groups") or s.count("dedup_groups") == 0
        assert s.con.execute("SELECT status FROM runs WHERE kind = 'dedup'").fetchall() == [("running",)]
        dedup_captions(s)
        assert s.con.execute("SELECT status FROM runs WHERE kind = 'dedup' ORDER BY run_id").fetchall() == \
            [("interrupted",), ("ok",)]


def test_across_variants_and_variant_selection(corpus_store, tmp_path):
    s, _ = corpus_store
    res = dedup_captions(s, variant=["raw", "synthetic"], across_variants=True)
    assert list(res.scopes) == ["*"]
    assert res.scopes["*"].items == s.con.execute(
        "SELECT count(*) FROM captions WHERE variant IN ('raw', 'synthetic')").fetchall()[0][0]
    with pytest.raises(CurateError, match="no captions of variant"):
        dedup_captions(s, variant="nope")


def test_missing_datasketch_names_the_install(monkeypatch):
    import curate.dedup.minhash as mh

    mh.permutations.cache_clear()
    monkeypatch.setitem(sys.modules, "datasketch", None)
    try:
        with pytest.raises(MissingExtraError, match=r"pip install 'curate\[dedup\]'"):
            find_duplicates(["a red dress with pockets"])
    finally:
        mh.permutations.cache_clear()


# -- HyperLogLog ----------------------------------------------------------------------------
def test_hll_registers_equal_datasketch_update():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**32, 20_000, dtype=np.uint64)
    h[:3] = [0, 1, 2**32 - 1]
    for p in (4, 10, 14):
        ref = datasketch.HyperLogLog(p=p, hashfunc=lambda x: x)
        for v in h.tolist():
            ref.update(v)
        assert np.array_equal(ref.reg, registers(h, p))


def test_hll_distinct_counts_close_to_exact(corpus_store):
    s, _ = corpus_store
    for row in distinct_counts(s, exact=True):
        assert abs(row.error) < 0.03, row  # 0.81% standard error at p = 14
    for row in distinct_counts(s, value="text", p=12, exact=True):
        assert abs(row.error) < 0.06, row


def test_distinct_in_sql_agrees_with_the_python_counts(corpus_store):
    """dedup.distinct: exact counts equal the Python pass's exact counts of the stored
    text. DuckDB's HyperLogLog is coarser than curate's p = 14 sketch: 6.9% off at 9,939
    distinct texts here, so the bound is 10%."""
    s, _ = corpus_store
    py = {r.variant: r for r in distinct_counts(s, value="text", exact=True)}
    rows = s.query("dedup.distinct").fetchall()
    assert {r[0] for r in rows} == set(py)
    for variant, captions, exact, approx, exact_norm, approx_norm in rows:
        assert exact == py[variant].exact_distinct and captions >= exact >= exact_norm > 0
        assert abs(approx - exact) / exact < 0.10 and abs(approx_norm - exact_norm) / exact_norm < 0.10


# -- CLI ------------------------------------------------------------------------------------
@pytest.fixture
def cli_main():
    from curate.cli import cli, main
    from curate.cli.dedup import dedup

    added = "dedup" not in cli.commands
    if added:
        cli.add_command(dedup)
    yield main
    if added:
        cli.commands.pop("dedup", None)


def test_cli(cli_main, laion_store, capsys):
    path = str(laion_store.path)
    laion_store.close()
    assert cli_main(["dedup", "captions", "--store", path, "--variant", "raw", "--keep", "longest"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dedup.captions.v1: 9,999 captions (0 skipped)") and "keep longest" in out
    assert cli_main(["dedup", "report", "--store", path]) == 0
    out = capsys.readouterr().out
    assert "exact_rate" in out and "near_rate" in out
    assert cli_main(["dedup", "groups", "--store", path, "--scope", "raw"]) == 0
    assert "kept_text" in capsys.readouterr().out
    assert cli_main(["dedup", "distinct", "--store", path, "--exact"]) == 0
    assert "approx_distinct" in capsys.readouterr().out
    assert cli_main(["sql", "--store", path, "-q", "dedup.repetition"]) == 0
    capsys.readouterr()
    for argv, msg in [(["dedup", "captions", "--store", path, "--variant", "nope"], "no captions of variant"),
                      (["dedup", "captions", "--store", path, "--threshold", "0"], "threshold must be"),
                      (["dedup", "groups", "--store", path, "--scope", "x"], "no dedup run covers scope"),
                      (["dedup", "report", "--store", path + "-missing"], "no store at")]:
        assert cli_main(argv) != 0
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err


def test_every_dedup_query_runs(corpus_store):
    from curate.sqlfiles import named_queries

    s, res = corpus_store
    run_id, group_id = s.execute("SELECT run_id, min(group_id) FROM dedup_groups GROUP BY run_id LIMIT 1").fetchall()[0]
    values = {"variant": "synthetic", "scope": "synthetic", "run_id": run_id, "group_id": group_id}
    for q in named_queries().values():
        if q.domain == "dedup":
            assert s.query(q.qualname, **{p: values[p] for p in q.params}).fetchall(), q.qualname


def test_keep_first_is_refused_because_it_never_meant_the_first_input_row(tmp_path, capsys):
    """`first` kept the smallest caption_id (a content hash); it is `min_id` now and the
    old name is a one-line config error, not a silent different meaning (issue 16, item 11)."""
    from curate.cli import main
    from curate.errors import ConfigError
    from curate.passes.dedup import DedupCaptions

    with pytest.raises(ConfigError, match=r"keep: expected 'min_id' or 'longest' or 'shortest', got str 'first'"):
        DedupCaptions.from_config({"keep": "first"})
    assert main(["dedup", "captions", "--store", str(tmp_path / "s"), "--keep", "first"]) == 2
    assert "'first' is not one of 'min_id', 'longest', 'shortest'" in capsys.readouterr().err
