"""Concept vocabularies: bundled sets, user files (TXT, CSV/TSV, JSON), bad input, and the
concepts table (one row per vocabulary, concept and alias; re-adding is a no-op)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from curate.concepts.vocab import (
    add_vocabulary,
    bundled_vocabularies,
    load_vocabulary,
    read_bundled,
    read_file,
    vocabulary_names,
)
from curate.errors import ConfigError, CurateError, InputError

DATA = Path(__file__).resolve().parent.parent / "curate" / "concepts" / "data"


@pytest.mark.parametrize("name,size", [
    ("imagenet1k", 998),  # 1,000 classes; 'missile' and 'sunglasses' each name two of them
    ("cifar10", 10), ("cifar100", 100), ("food101", 101), ("caltech101", 102), ("sun397", 397),
    ("cars", 196), ("aircraft", 100), ("flowers", 102), ("pets", 37), ("dtd", 47), ("eurosat", 10),
    ("country211", 211), ("letitwag", 290),
    ("nozeroshot", 3951),                  # 3,954 normalised paper concepts minus 'being', 'her', 'on'
    ("nozeroshot_classification", 3121),   # the 3,168 published strings of the 17 sets, case/_ folded
])
def test_bundled_sizes(name, size):
    assert len(read_bundled(name).concepts) == size


def test_bundled_imagenet_reports_the_two_shared_names():
    rep = read_bundled("imagenet1k").report
    assert len(rep.duplicates) == 2
    assert rep.duplicates[0].startswith("'missile'") and rep.duplicates[1].startswith("'sunglasses'")


def test_bundled_classnames_cover_clip_benchmark_and_slip(classnames_dir):
    cb = json.loads((classnames_dir / "en_classnames.json").read_text())
    names = bundled_vocabularies()
    assert set(cb) <= set(names)
    for key in cb:  # copied entry for entry
        assert json.loads((DATA / "classnames.json").read_text())[key] == cb[key]
    assert {"cifar10", "cifar100", "food101", "sun397", "cars", "aircraft", "dtd"} <= set(names)
    assert "background" in read_bundled("nozeroshot").report.generic
    assert read_bundled("nozeroshot").report.function_words == ["being", "her", "on"]


def test_bundled_files_are_small_and_inside_the_package():
    assert DATA.parent.name == "concepts" and DATA.parent.parent.name == "curate"
    assert sum(f.stat().st_size for f in DATA.iterdir()) < 300_000
    assert (DATA / "PROVENANCE.md").is_file()


def test_txt_aliases_duplicates_empty_lines_nfc(tmp_path):
    f = tmp_path / "v.txt"
    # "Cafe\u0301" (e + combining accent) is NFC-normalised to "Café"
    f.write_text("# my concepts\ncar|automobile|auto\n\n  golden   retriever \nCAR|motorcar\n"
                 "Cafe\u0301\nt-shirt\nthe\nbackground\n", encoding="utf-8")
    v = read_file(f)
    got = {c.name: c.aliases for c in v.concepts}
    assert got == {"car": ("car", "automobile", "auto", "motorcar"), "golden retriever": ("golden retriever",),
                   "Café": ("Café",), "t-shirt": ("t-shirt",), "background": ("background",)}
    r = v.report
    assert r.empty == 2 and r.function_words == ["the"] and r.generic == ["background"]
    assert r.duplicates == ["'car' (line 2, line 5)"]


def test_csv_tsv_json_forms(tmp_path):
    (tmp_path / "v.csv").write_text("concept,aliases,notes\ndog,puppy|doggo,x\ncat,,y\n,,\n", encoding="utf-8")
    (tmp_path / "v.tsv").write_text("Concept\tAliases\ndog\tpuppy|doggo\ncat\t\n", encoding="utf-8")
    (tmp_path / "list.json").write_text(json.dumps(["dog", ["cat", "kitty"], ""]), encoding="utf-8")
    (tmp_path / "map.json").write_text(json.dumps({"dog": ["puppy", "doggo"], "cat": None}), encoding="utf-8")
    expect = {"dog": ("dog", "puppy", "doggo"), "cat": ("cat",)}
    for name in ("v.csv", "v.tsv", "map.json"):
        assert {c.name: c.aliases for c in read_file(tmp_path / name).concepts} == expect, name
    assert [c.aliases for c in read_file(tmp_path / "list.json").concepts] == [("dog",), ("cat", "kitty")]


@pytest.mark.parametrize("name,content,message", [
    ("empty.txt", "", "no concepts (the file is empty)"),
    ("blank.txt", "\n\n  \n# only a comment\n", "no concepts"),
    ("stop.txt", "a\nthe\n", "no concepts (2 entries, all function words)"),
    ("latin1.txt", "caf\xe9\n".encode("latin-1"), "line 1 is not UTF-8"),
    ("noheader.csv", "dog\ncat\n", "no 'concept' column"),
    ("bad.json", "{not json", "invalid JSON at line 1"),
    ("num.json", "[1, 2]", "item 1: expected a concept name"),
    ("alias_only.txt", "|puppy\n", "line 1: aliases without a concept name"),
])
def test_bad_files_are_one_line_input_errors(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        read_file(f)
    assert "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_file(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="is not a file"):
        read_file(tmp_path)


def test_concepts_table_add_reload_replace(store, tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("car|automobile\ndog\n", encoding="utf-8")
    r = add_vocabulary(store, "mine", f)
    assert r.status == "added" and r.concepts == 2 and r.aliases == 1
    rows = store.con.execute("SELECT vocabulary, concept, alias, added_run FROM concepts ORDER BY all").fetchall()
    assert rows == [("mine", "car", "automobile", r.run_id), ("mine", "car", "car", r.run_id),
                    ("mine", "dog", "dog", r.run_id)]
    assert load_vocabulary(store, "mine") == [("car", ("car", "automobile")), ("dog", ("dog",))]
    # same content again (even from another file form): nothing written
    (tmp_path / "v.json").write_text(json.dumps({"dog": [], "car": ["automobile"]}))
    assert add_vocabulary(store, "mine", tmp_path / "v.json").status == "unchanged"
    assert store.count("concepts") == 3
    f.write_text("car\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="already exists with different content"):
        add_vocabulary(store, "mine", f)
    assert add_vocabulary(store, "mine", f, replace=True).status == "replaced"
    assert load_vocabulary(store, "mine") == [("car", ("car",))]
    add_vocabulary(store, "cifar10", "cifar10")
    assert vocabulary_names(store) == ["cifar10", "mine"]
    assert store.df("SELECT * FROM concepts").select("vocabulary", "concept", "alias").is_duplicated().sum() == 0
    assert store.query("concepts.vocabularies").fetchall() == [("cifar10", 10, 0, 3), ("mine", 1, 0, 2)]


def test_add_errors(store, tmp_path):
    with pytest.raises(ConfigError, match="vocabulary name 'Bad Name'"):
        add_vocabulary(store, "Bad Name", "cifar10")
    with pytest.raises(ConfigError, match="neither a bundled vocabulary nor a file"):
        add_vocabulary(store, "x", "imagenet22k")
    with pytest.raises(ConfigError, match="no vocabulary 'missing'"):
        load_vocabulary(store, "missing")
    assert not store.has_table("concepts") or store.count("concepts") == 0


def run_cli(args: list[str]) -> tuple[int, str]:
    """``curate concepts ...`` in-process, with the main CLI's one-line error handling."""
    from click.testing import CliRunner

    from curate.cli.concepts import concepts

    res = CliRunner().invoke(concepts, args, catch_exceptions=True)
    if isinstance(res.exception, CurateError):
        return res.exception.exit_code, f"error: {res.exception}"
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def test_cli_vocab(tmp_path):
    st = str(tmp_path / "st")
    f = tmp_path / "v.txt"
    f.write_text("car|automobile\ncar\n\n", encoding="utf-8")
    code, out = run_cli(["vocab", "add", "mine", str(f), "--store", st])
    assert code == 0 and "added; 1 concepts, 1 extra aliases" in out and "1 duplicate concepts merged" in out
    code, out = run_cli(["vocab", "list", "--store", st])
    assert code == 0 and "mine" in out and "letitwag" in out and "290" in out
    code, out = run_cli(["vocab", "show", "mine", "--store", st])
    assert code == 0 and "automobile" in out
    code, out = run_cli(["vocab", "add", "x", str(tmp_path / "none.txt"), "--store", st])
    assert code == 3 and out == f"error: vocabulary file {tmp_path / 'none.txt'} does not exist"
    assert sys.modules["curate.cli.concepts"]
