"""Distillation export (curate generate export-distill): accepted fused captions of a real
run against llama-server become chat-format JSONL pairs that transformers' chat
templating reads; flagged, fallback and failed outputs stay out unless asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate.cli import main
from curate.generate.templates import load_template
from curate.store import Store
from tests.test_generate import FUSE, KEEP, caps_store, caps_subset  # noqa: F401  (fixtures)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _fuse(store: Path, url: str, capsys, *extra: str, floor: str = "0.0", variant: str = "fused_gen") -> None:
    code, out, err = _run([*FUSE, "--store", str(store), "--url", url, "--max-tokens", "32",
                           "--guard-min-retention", floor, "--guard-retries", "0", "--guard-final", "flag",
                           *KEEP, *extra, "--variant", variant], capsys)
    assert code == 0, err


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _outputs(store: Path) -> list[dict]:
    with Store.open(store, read_only=True) as s:
        return s.con.sql("SELECT uid::VARCHAR AS uid, input_caption_ids, unnest(outputs) AS o FROM generations"
                         ).to_arrow_table().to_pylist()


def test_accepted_pairs_are_chat_jsonl_of_the_prompt_the_model_saw(caps_store, llama_server, tmp_path, capsys):
    # the guard judges every output: at a floor of 0 all are accepted; at 1.0 (a second
    # variant) gibberish, which keeps none of the alt-text's entities, is flagged
    _fuse(caps_store, llama_server.base_url, capsys)
    _fuse(caps_store, llama_server.base_url, capsys, "--temperature", "0.9", "--seed", "7", floor="1.0",
          variant="fused_flag")
    outs = _outputs(caps_store)
    actions = {o["o"]["action"] for o in outs if o["o"]["status"] == "ok"}
    assert actions == {"generated", "flagged"}, actions
    out = tmp_path / "pairs.jsonl"
    code, text, err = _run(["generate", "export-distill", "--store", str(caps_store), "--out", str(out)], capsys)
    assert code == 0, err
    lines = _lines(out)
    accepted = {(o["uid"], o["o"]["text"]) for o in outs if o["o"]["status"] == "ok" and o["o"]["action"] == "generated"}
    assert len(lines) == len(accepted) > 0
    assert f"wrote {len(lines):,} pairs" in text and "flagged by the guard" in text
    tpl = load_template("fuse-v1")
    with Store.open(caps_store, read_only=True) as s:
        texts = dict(s.con.execute("SELECT caption_id::VARCHAR, text FROM captions").fetchall())
        by_uid = {}
        for cid, uid, variant in s.con.execute("SELECT caption_id::VARCHAR, uid::VARCHAR, variant FROM captions "
                                               "WHERE variant IN ('raw', 'synthetic', 'fused_gen', 'fused_flag')").fetchall():
            by_uid.setdefault((uid, variant), set()).add(texts[cid])
    for line in lines:
        meta, msgs = line["metadata"], line["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
        assert (meta["uid"], msgs[2]["content"]) in accepted
        # the user message is the template rendered from the sample's own raw and synthetic captions
        [raw] = by_uid[(meta["uid"], "raw")]
        [syn] = by_uid[(meta["uid"], "synthetic")]
        assert msgs[:2] == list(tpl.render(raw=raw, synthetic=syn))
        assert msgs[2]["content"] in by_uid[(meta["uid"], meta["variant"])]
        assert meta["template_sha256"] == tpl.sha256 and meta["model"] == "tiny" and meta["action"] == "generated"

    # the real consumer: transformers' chat templating reads each line's messages
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tests.genserver import CHATML

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = CHATML
    for line in lines[:5]:
        rendered = fast.apply_chat_template(line["messages"], tokenize=False)
        assert line["messages"][2]["content"] in rendered and "<|im_start|>assistant" in rendered

    # flagged outputs on request; no metadata, no system message
    out2 = tmp_path / "all.jsonl"
    code, text, err = _run(["generate", "export-distill", "--store", str(caps_store), "--out", str(out2),
                            "--include-flagged", "--no-metadata", "--no-system"], capsys)
    assert code == 0, err
    lines2 = _lines(out2)
    # (pairs are unique: an output equal to another for the same prompt is written once)
    ok = {(o["uid"], o["o"]["text"]) for o in outs if o["o"]["status"] == "ok"}
    assert len(lines2) == len(ok) > len(lines)
    assert all(set(x) == {"messages"} and [m["role"] for m in x["messages"]] == ["user", "assistant"] for x in lines2)

    # one variant; and a retention floor, read from each output's guard record
    with Store.open(caps_store, read_only=True) as s:
        ret = s.con.execute("SELECT retention_strict, count(*) FROM generation_guard WHERE variant = 'fused_flag' "
                            "GROUP BY 1").fetchall()
    out3 = tmp_path / "floor.jsonl"
    code, text, err = _run(["generate", "export-distill", "--store", str(caps_store), "--out", str(out3),
                            "--variant", "fused_flag", "--include-flagged", "--min-retention", "0.5"], capsys)
    assert code == 0, err
    kept = _lines(out3)
    assert all(x["metadata"]["variant"] == "fused_flag" and x["metadata"]["retention_strict"] >= 0.5 for x in kept)
    assert len(kept) <= sum(n for r, n in ret if r >= 0.5)
    assert "below min_retention" in text or not [r for r, _ in ret if r < 0.5]


def test_a_changed_template_or_bad_request_is_one_line(caps_store, llama_server, tmp_path, capsys):
    mine = tmp_path / "my-fuse.toml"
    src = load_template("fuse-v1")
    mine.write_text(f'name = "my-fuse"\ntask = "fuse"\nuser = """{src.user}"""\n', encoding="utf-8")
    _fuse(caps_store, llama_server.base_url, capsys, "--template", str(mine), "--guard-min-retention", "off")
    out = tmp_path / "p.jsonl"
    # not bundled: the file must be given
    code, text, err = _run(["generate", "export-distill", "--store", str(caps_store), "--out", str(out)], capsys)
    assert code != 0 and "my-fuse" in err and "--template" in err and "Traceback" not in err
    assert not out.exists()
    code, text, err = _run(["generate", "export-distill", "--store", str(caps_store), "--out", str(out),
                            "--template", str(mine)], capsys)
    assert code == 0, err and out.exists()
    assert len(_lines(out)) > 0
    # the file changed since: refused, and no half-written file is left
    mine.write_text(mine.read_text(encoding="utf-8").replace("fluent", "FLUENT"), encoding="utf-8")
    out.unlink()
    code, text, err = _run(["generate", "export-distill", "--store", str(caps_store), "--out", str(out),
                            "--template", str(mine)], capsys)
    assert code != 0 and "changed" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob("p.jsonl.tmp-*"))
    # captions of images have no text input
    code, text, err = _run(["generate", "export-distill", "--store", str(caps_store), "--out", str(out),
                            "--task", "caption"], capsys)
    assert code != 0 and "caption" in err
