"""The pass contract (curate/passes/base.py): every registered pass builds from a plain
config by the one config engine, names itself as its registry key, says what it writes
and how a user makes it, declares its attributes, and refuses a bad key. Passes run
from a pipeline's ``[[pass]]`` steps on real data (LAION alt-text, the published
counts of Udandarao et al. 2024): each leaves an ``ok`` runs row, and a rerun gives the
same rows (a second ok run, or nothing to do, as the engine does)."""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from curate import ConfigError, Store, registry
from curate.attributes import declared
from curate.ingest import ingest
from curate.passes.base import Pass, PassResult
from curate.pipeline import load_pipeline, run_pipeline

NAMES = registry.pass_names()


def minimal_config(cls: type[Pass]) -> dict[str, str]:
    """A value for each required field (all are names or paths: strings)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert f.type in ("str", str), (cls, f.name, f.type)
            out[f.name] = "x"
    return out


# -- the contract, for every registered pass ---------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_pass_keeps_the_contract(name):
    cls = registry.get_pass_class(name)
    assert issubclass(cls, Pass) and dataclasses.is_dataclass(cls)
    assert cls.registry_name() == name == f"{cls.name}.v{cls.version}"
    assert isinstance(cls.writes, tuple) and cls.writes and all(isinstance(t, str) and t for t in cls.writes)
    assert isinstance(cls.produced_by, str) and "(curate " in cls.produced_by

    p = cls.from_config(minimal_config(cls))
    assert registry.build_pass(name, minimal_config(cls)) == p
    assert cls.from_config(p.config()) == p, "config() round-trips through from_config"
    json.dumps(p.config())  # plain values
    assert len(p.config_hash()) == 16 and p.config_hash() == cls.from_config(p.config()).config_hash()

    for a in declared(cls):
        assert a.producer == name
        assert a.table and a.sql and a.doc
        assert a.table in cls.writes or a.table == "samples", (a.name, a.table)

    with pytest.raises(ConfigError, match=rf"{name.replace('.', '[.]')} config: unknown key\(s\) no_such_key; valid: "):
        cls.from_config({**minimal_config(cls), "no_such_key": 1})
    with pytest.raises(ConfigError, match=rf"{name.replace('.', '[.]')} config"):
        cls.from_config({**minimal_config(cls), next(f.name for f in dataclasses.fields(cls)): [1.5]})


def test_required_fields_are_named_when_missing():
    with pytest.raises(ConfigError, match=r"similarity\.semdedup\.v1 config: missing key 'set_name' \(a string\)"):
        registry.build_pass("similarity.semdedup.v1", {})
    with pytest.raises(ConfigError, match=r"unknown pass 'similarity\.neardup\.v1'; valid passes: .*similarity\.near\.v1"):
        registry.build_pass("similarity.neardup.v1")


def test_the_engines_checks_run_when_a_pass_is_built():
    for name, cfg, message in [
        ("dedup.captions.v1", {"threshold": 1.5}, r"threshold must be in \(0, 1\], got 1\.5"),
        ("dedup.captions.v1", {"bands": 4}, "give both bands and rows"),
        ("similarity.semdedup.v1", {"set_name": "s", "eps": 1.0}, r"eps must be in \(0, 1\)"),
        ("similarity.semdedup.v1", {"set_name": "s", "keep": "score"}, "keep='score' needs score"),
        ("similarity.near.v1", {"set_name": "s", "threshold": 1.0}, r"threshold must be a cosine similarity"),
        ("similarity.exact.v1", {"min_urls": 1}, "min_urls must be at least 2"),
        ("similarity.merge_captions.v1", {"suffix": "-x y"}, "suffix must be letters"),
        ("concepts.vocabulary.v1", {"vocabulary": "Bad Name", "source": "cifar10"}, "vocabulary name 'Bad Name'"),
        ("similarity.tags.v1", {"set_name": "s", "concept_set": "c", "k": 0}, "k must be at least 1"),
        ("similarity.near.v1", {"set_name": "s", "keep": "farthest"},
         r"config\.keep: expected .*'first'.*'score'.*, got str 'farthest'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            registry.build_pass(name, cfg)


def test_runs_rows_keep_their_stored_stage_strings():
    """The stage strings already in stores stay as they are; the two imports stored
    theirs without a version, so their registry names map onto them."""
    import importlib

    published, vocab, text, index, near, semdedup, tags, target = (importlib.import_module(f"curate.{m}") for m in (
        "concepts.published", "concepts.vocab", "dedup.text", "similarity.index", "similarity.near",
        "similarity.semdedup", "similarity.tags", "similarity.target"))

    stored = {"dedup.captions.v1": text.STAGE, "similarity.semdedup.v1": semdedup.STAGE,
              "similarity.near.v1": near.NEAR_STAGE, "similarity.exact.v1": near.EXACT_STAGE,
              "similarity.tags.v1": tags.STAGE, "similarity.target.v1": target.STAGE,
              "similarity.index.v1": index.INDEX_STAGE, "similarity.merge_captions.v1": near.MERGE_STAGE,
              "concepts.vocabulary.v1": vocab.STAGE, "concepts.import_published.v1": published.STAGE}
    assert set(stored) == set(NAMES)
    for name, stage in stored.items():
        assert registry.get_pass_class(name).stored_stage() == stage
    assert vocab.STAGE == "concepts.vocabulary" and published.STAGE == "concepts.import_published"


def test_the_dedup_pass_hash_is_the_engines():
    from curate.dedup.text import DedupConfig

    p = registry.build_pass("dedup.captions.v1", {"variant": ["synthetic", "raw"], "threshold": 0.7, "batch_size": 9})
    assert p.config_hash() == DedupConfig(variant=("raw", "synthetic"), threshold=0.7).config_hash()


def test_moved_attributes_are_declared_once():
    owners = {a.name: a.producer for n in NAMES for a in declared(registry.get_pass_class(n))}
    assert owners == {"dedup_kept": "dedup.captions.v1", "image_dedup_kept": "similarity.semdedup.v1",
                      "placeholder_image": "similarity.exact.v1", "target_selected": "similarity.target.v1"}
    attrs = {a.name: a for n in NAMES for a in declared(registry.get_pass_class(n))}
    order = ("dedup_kept", "image_dedup_kept", "placeholder_image", "target_selected")
    assert [(attrs[n].key, attrs[n].type, attrs[n].default) for n in order] == [
        ("caption", "bool", True), ("sample", "bool", True), ("sample", "bool", False), ("sample", "bool", None)]


# -- passes from a pipeline, on real data --------------------------------------------------
def trigram_vectors(texts: list[str], dim: int = 256) -> np.ndarray:
    """A deterministic text embedding: hashed character trigrams, L2-normalised (equal
    texts get equal vectors; similar texts, close ones)."""
    x = np.zeros((len(texts), dim), np.float64)
    for i, t in enumerate(texts):
        t = " ".join(t.lower().split())
        for j in range(max(len(t) - 2, 0)):
            x[i, zlib.crc32(t[j:j + 3].encode()) % dim] += 1.0
        if not x[i].any():
            x[i, -1] = 1.0
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def laion_store(tmp_path, laion_file):
    """Real LAION alt-text, and a vector set of its captions keyed by the samples' uids."""
    from curate.vectors import write_set

    s = Store.init(tmp_path / "store")
    ingest(s, "table", laion_file, "laion", preset="laion")
    uids, texts = zip(*s.con.execute(
        "SELECT uid::VARCHAR, text FROM captions WHERE variant = 'raw' ORDER BY uid").fetchall())
    write_set(s, "laion_text", trigram_vectors(list(texts)), list(uids), model="trigram-hash")
    yield s
    s.close()


PASSES_PIPELINE = """
[[pass]]
name = "dedup.captions.v1"
[pass.config]
variant = "raw"
threshold = 0.8

[[pass]]
name = "similarity.near.v1"
[pass.config]
set_name = "laion_text"
threshold = 0.95

[[pass]]
name = "similarity.exact.v1"
"""


def _rows(s: Store, sql: str) -> list[tuple]:
    return sorted(s.con.execute(sql).fetchall(), key=repr)


def _results(s: Store) -> dict[str, list[tuple]]:
    return {
        "groups": _rows(s, "SELECT kind, scope, group_id, member_kind, member_id, kept, similarity, method, group_size, "
                           "config_hash FROM dedup_groups"),
        "skipped": _rows(s, "SELECT kind, scope, member_id, reason, config_hash FROM dedup_skipped"),
        "summary": _rows(s, "SELECT * EXCLUDE (run_id) FROM dedup_summary"),
        "placeholders": _rows(s, "SELECT * EXCLUDE (run_id) FROM image_placeholders"),
        "captions": _rows(s, "SELECT caption_id FROM captions"),
    }


def test_passes_run_from_a_pipeline_and_a_rerun_is_idempotent(tmp_path, laion_store):
    s = laion_store
    p = tmp_path / "passes.toml"
    p.write_text(PASSES_PIPELINE, encoding="utf-8")
    pipe = load_pipeline(p)
    assert [x.pass_.registry_name() for x in pipe.passes] == ["dedup.captions.v1", "similarity.near.v1",
                                                              "similarity.exact.v1"]
    lines: list[str] = []
    first = run_pipeline(s, pipe, echo=lines.append)
    assert [line.split(":")[0] for line in lines] == ["dedup.captions.v1", "similarity.near.v1", "similarity.exact.v1"]
    dedup, near, exact = first
    assert all(isinstance(r, PassResult) and r.run_id is not None for r in first)
    assert lines[0] == dedup.summary().splitlines()[0]
    assert sum(st.removed for st in dedup.scopes.values()) > 0, "LAION alt-text repeats"
    assert near.groups.n_groups > 0, "repeated alt-texts have equal vectors"
    runs = s.con.execute("SELECT run_id, kind, stage, status FROM runs WHERE run_id IN (?, ?, ?) ORDER BY run_id",
                         [r.run_id for r in first]).fetchall()
    assert [r[1:] for r in runs] == [("dedup", "dedup.captions.v1", "ok"), ("similarity", "similarity.near.v1", "ok"),
                                     ("similarity", "similarity.exact.v1", "ok")]
    cfg = json.loads(s.con.execute("SELECT config FROM runs WHERE run_id = ?", [dedup.run_id]).fetchall()[0][0])
    assert cfg["stage"] == "dedup.captions.v1" and cfg["config"]["variant"] == ["raw"]
    assert cfg["options"] == {"batch_size": 50_000}

    # the declared attributes read what the passes wrote
    attrs = {a.name: a for n in NAMES for a in declared(registry.get_pass_class(n))}
    dropped = {str(k) for k, v in s.con.execute(attrs["dedup_kept"].sql).fetchall() if not v}
    assert dropped == {str(m) for (m,) in s.con.execute(
        "SELECT member_id FROM dedup_groups WHERE kind = 'caption_text' AND run_id = ? AND NOT kept",
        [dedup.run_id]).fetchall()}
    assert len(dropped) == sum(st.removed for st in dedup.scopes.values())
    dropped_images = {str(k) for k, v in s.con.execute(attrs["image_dedup_kept"].sql).fetchall() if not v}
    assert len(dropped_images) == near.groups.removed > 0
    assert s.con.execute(attrs["placeholder_image"].sql).fetchall() == []  # LAION rows carry no sha256

    before = _results(s)
    second = run_pipeline(s, load_pipeline(p))
    assert _results(s) == before, "a rerun gives the same rows"
    for a, b in zip(first, second):
        assert b.run_id > a.run_id
        (ha, sa), (hb, sb) = (s.con.execute("SELECT config_hash, status FROM runs WHERE run_id = ?", [r.run_id])
                              .fetchall()[0] for r in (a, b))
        assert (ha, sa) == (hb, sb) and sb == "ok"
    counts = dict(s.con.execute("SELECT stage, count(*) FROM runs WHERE status = 'ok' GROUP BY stage").fetchall())
    assert [counts[n] for n in ("dedup.captions.v1", "similarity.near.v1", "similarity.exact.v1")] == [2, 2, 2]
    assert s.con.execute("SELECT count(*) FROM runs WHERE status <> 'ok'").fetchall() == [(0,)]


def test_concept_passes_from_a_pipeline_resolve_paths_and_rerun(tmp_path, shared_data, monkeypatch):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "counts.parquet").symlink_to(shared_data / "nozeroshot-frequencies" / "derived_counts_long.parquet")
    (folder / "data" / "pets.txt").write_text("dog\ncat\n# a comment\nhamster\n", encoding="utf-8")
    p = folder / "concepts.toml"
    p.write_text("""
[[pass]]
name = "concepts.vocabulary.v1"
[pass.config]
vocabulary = "cifar10"
source = "cifar10"

[[pass]]
name = "concepts.vocabulary.v1"
[pass.config]
vocabulary = "pets"
source = "data/pets.txt"

[[pass]]
name = "concepts.import_published.v1"
config = { path = "data/counts.parquet" }
""", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # not the pipeline's folder
    pipe = load_pipeline(Path("project") / "concepts.toml")
    bundled, pets, published = (x.pass_ for x in pipe.passes)
    assert bundled.source == "cifar10", "a bundled name is not a path"
    assert pets.source == str(folder / "data" / "pets.txt")
    assert published.path == str(folder / "data" / "counts.parquet")
    resolved = json.loads(json.dumps(pipe.resolved()))
    assert [x["name"] for x in resolved["pass"]] == ["concepts.vocabulary.v1"] * 2 + ["concepts.import_published.v1"]
    assert resolved["pass"][1]["config"] == {"vocabulary": "pets", "source": pets.source, "replace": False}

    with Store.init(tmp_path / "store") as s:
        first = run_pipeline(s, pipe)
        assert [r.status for r in first[:2]] == ["added", "added"] and first[2].rows > 100_000
        stages = s.con.execute("SELECT stage, status, rows_out FROM runs ORDER BY run_id").fetchall()
        assert stages == [("concepts.vocabulary", "ok", 10), ("concepts.vocabulary", "ok", 3),
                          ("concepts.import_published", "ok", first[2].rows)]
        counts = _rows(s, "SELECT * FROM published_concept_counts")
        concepts = _rows(s, "SELECT vocabulary, concept, alias FROM concepts")
        second = run_pipeline(s, pipe)
        # the same vocabulary again is nothing to do (no run); the import replaces its rows with the same rows
        assert [(r.status, r.run_id) for r in second[:2]] == [("unchanged", None), ("unchanged", None)]
        assert second[2].run_id > first[2].run_id
        assert _rows(s, "SELECT * FROM published_concept_counts") == counts
        assert _rows(s, "SELECT vocabulary, concept, alias FROM concepts") == concepts
        assert s.con.execute("SELECT stage, status FROM runs ORDER BY run_id").fetchall()[3:] == \
            [("concepts.import_published", "ok")]


def test_a_missing_pass_input_fails_before_any_work(tmp_path, laion_file, capsys):
    from curate.cli import main

    p = tmp_path / "p.toml"
    p.write_text(f"""
[[ingest]]
format = "table"
path = "{laion_file}"
preset = "laion"
[[pass]]
name = "concepts.import_published.v1"
config = {{ path = "no-such-counts.parquet" }}
""", encoding="utf-8")
    load_pipeline(p)  # the file is read at run time; its absence is found by the preflight
    rc = main(["run", str(p), "--store", str(tmp_path / "store")])
    assert rc != 0 and "no-such-counts.parquet does not exist" in capsys.readouterr().err
    if (tmp_path / "store").exists():  # the CLI may have created it, empty
        with Store.open(tmp_path / "store", read_only=True) as s:
            assert s.con.execute("SELECT count(*) FROM samples").fetchall() == [(0,)]
