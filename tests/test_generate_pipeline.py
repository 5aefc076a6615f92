"""pipelines/generate.toml, the generation stages as TOML pipeline steps, run against a
real llama-server: every step writes its rows, paths in stage configs resolve against
the pipeline's folder, the server comes from $OPENAI_BASE_URL, and a rerun adds nothing."""

from __future__ import annotations

from pathlib import Path

from curate.config import load_toml
from curate.pipeline import parse_pipeline, run_pipeline
from curate.store import Store
from tests.test_generate import N, caps_subset  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "generate.toml"
#: keeps the random model writing words that end by themselves (tests/test_generate.py)
KEEP = {"logit_bias": {str(i): -100.0 for i in range(259)}, "stop": ["e "], "language": "any", "max_tokens": 24,
        "concurrency": 4}


def _counts(store: Store) -> dict[str, tuple[int, int]]:
    return {st: (n, o) for st, n, o in store.con.execute(
        "SELECT stage, count(*), sum(len(outputs)) FROM generations GROUP BY 1").fetchall()}


def test_the_generation_pipeline_runs_and_resumes(tmp_path, caps_subset, llama_server, monkeypatch):
    data = load_toml(PIPELINE)
    [ing] = data["ingest"]
    ing["path"] = str(caps_subset)  # the bundled file's first N records
    for step in data["stage"]:
        if step["name"] != "generate.subcaptions.v1":
            step["config"].update(KEEP)
    monkeypatch.setenv("OPENAI_BASE_URL", llama_server.base_url)
    pipe = parse_pipeline(data, base=PIPELINE.parent, path=PIPELINE)
    rewrite = next(s.stage for s in pipe.stages if s.stage.registry_name() == "generate.rewrite.v1")
    # the examples file is LaCLIP's pairs beside the pipeline, resolved against its folder
    assert Path(rewrite.examples) == ROOT / "examples" / "data" / "laclip" / "meta_input_output_pairs.jsonl"
    assert all(s.stage.base_url == llama_server.base_url for s in pipe.stages if hasattr(s.stage, "base_url"))
    with Store.init(tmp_path / "store") as s:
        run_pipeline(s, pipe)
        counts = _counts(s)
        assert counts["generate.fuse.v1"] == (N, N)
        assert counts["generate.rewrite.v1"] == (N, 4 * N)
        long_fused = s.con.execute("SELECT count(*) FROM captions WHERE variant IN ('fused_llm', 'fused') AND "
                                   "len(string_split(trim(text), ' ')) >= 12").fetchall()[0][0]
        assert counts["generate.subcaptions.v1"][0] == long_fused > 0
        variants = dict(s.con.execute("SELECT variant, count(*) FROM captions GROUP BY 1").fetchall())
        assert variants.get("fused_llm", 0) > 0 and variants.get("rewrite", 0) > 0 and variants.get("subcap", 0) > 0
        # each rewrite records its seeded draw of LaCLIP's chatgpt pairs
        draws = s.con.execute("SELECT DISTINCT generation->'examples'->>'n' FROM captions WHERE variant = 'rewrite'"
                              ).fetchall()
        assert draws == [("3",)]
        before = (counts, s.count("captions"))
    with Store.open(tmp_path / "store") as s:
        run_pipeline(s, parse_pipeline(data, base=PIPELINE.parent, path=PIPELINE))
        assert (_counts(s), s.count("captions")) == before


def test_image_stages_run_as_pipeline_steps(tmp_path, vlm_server, monkeypatch):
    """caption and vec as [[stage]] steps over real image files, against a VLM server;
    a template file named relative to the pipeline's folder."""
    from tests.test_clip import make_coco

    f, _ = make_coco(tmp_path / "coco", n_good=6)
    (tmp_path / "p").mkdir()
    src = (ROOT / "curate" / "generate" / "templates" / "caption-v1.toml").read_text(encoding="utf-8")
    (tmp_path / "p" / "my-caption.toml").write_text(src.replace('name = "caption-v1"', 'name = "my-caption"'),
                                                    encoding="utf-8")
    data = {
        "pipeline": {"name": "images"},
        "ingest": [{"format": "coco", "path": str(f), "source": "coco"}],
        "stage": [
            {"name": "generate.caption.v1", "config": {**KEEP, "max_tokens": 48, "variant": "vlm",
                                                       "template": "my-caption.toml"}},
            {"name": "generate.vec.v1", "config": {**KEEP, "max_tokens": 48, "vlm_max_tokens": 48,
                                                   "raw_variant": "human", "guard_min_retention": None}},
        ],
    }
    monkeypatch.setenv("OPENAI_BASE_URL", vlm_server.base_url)
    pipe = parse_pipeline(data, base=tmp_path / "p", path=tmp_path / "p" / "images.toml")
    assert pipe.stages[0].stage.template == str(tmp_path / "p" / "my-caption.toml")
    with Store.init(tmp_path / "store") as s:
        run_pipeline(s, pipe)
        counts = _counts(s)
        # 6 good images + 3 bad files + 1 missing: every sample, and each of its 2 captions for vec
        assert counts["generate.caption.v1"][0] == 10 and counts["generate.vec.v1"][0] == 20
        made = dict(s.con.execute("SELECT variant, count(*) FROM captions GROUP BY 1").fetchall())
        assert made.get("vlm", 0) > 0 and made.get("vec", 0) > 0
        templates = {t for (t,) in s.con.execute("SELECT DISTINCT generation->>'template' FROM captions "
                                                 "WHERE variant = 'vlm'").fetchall()}
        assert templates == {"my-caption"}
        before = (counts, s.count("captions"))
        run_pipeline(s, parse_pipeline(data, base=tmp_path / "p", path=tmp_path / "p" / "images.toml"))
        assert (_counts(s), s.count("captions")) == before
