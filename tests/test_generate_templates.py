"""Prompt templates: the bundled ones, rendering, hashes, every load error, and LaCLIP's
real in-context pairs."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from curate import ConfigError, InputError
from curate.generate.templates import (
    TASK_FIELDS,
    bundled_templates,
    choose_examples,
    examples_hash,
    load_examples,
    load_stricter,
    load_template,
    prompt_hash,
    read_examples,
)

REPO = Path(__file__).resolve().parent.parent
BUNDLED_DIR = REPO / "curate" / "generate" / "templates"
EXPECTED = {"caption-v1": "caption", "fuse-v1": "fuse", "fuse-strict-v1": "fuse", "rewrite-v1": "rewrite",
            "rewrite-strict-v1": "rewrite", "vec-caption-v1": "vec_caption", "vec-fuse-v1": "vec_fuse",
            "vec-fuse-strict-v1": "vec_fuse"}
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256))
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)

FUSE_TOML = '''name = "my-fuse"
task = "fuse"
description = "test"
user = "Alt: {raw}\\nCaption: {synthetic}\\nMerge them; keep {{braces}}."
'''


def write(tmp_path: Path, text: str, name: str = "t.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --- bundled ----------------------------------------------------------------------------------


def test_bundled_templates_are_the_documented_set():
    ts = {t.name: t for t in bundled_templates()}
    assert {n: t.task for n, t in ts.items()} == EXPECTED
    assert sorted(p.stem for p in BUNDLED_DIR.glob("*.toml")) == sorted(EXPECTED)
    for t in ts.values():
        assert t.path is None and t.description
        assert set(t.fields()) == set(TASK_FIELDS[t.task])  # every bundled prompt shows all its inputs
        assert t.sha256 == hashlib.sha256((BUNDLED_DIR / f"{t.name}.toml").read_bytes()).hexdigest()
    assert ts["rewrite-v1"].n_examples == 3 and "{input}" in ts["rewrite-v1"].examples_format


def test_stricter_chain():
    for name, strict in [("fuse-v1", "fuse-strict-v1"), ("rewrite-v1", "rewrite-strict-v1"),
                         ("vec-fuse-v1", "vec-fuse-strict-v1")]:
        t = load_template(name)
        assert t.stricter == strict
        s = load_stricter(t)
        assert s is not None and s.name == strict and s.task == t.task and s.user != t.user
        assert load_stricter(s) is None
    assert load_stricter(load_template("caption-v1")) is None


def test_strict_fuse_insists_on_verbatim_names():
    strict = load_template("fuse-strict-v1").user.lower()
    assert "exactly as it is" in strict and "proper noun" in strict
    assert "proper noun" not in load_template("fuse-v1").user.lower()


def test_bundled_templates_load_from_a_zipped_package(tmp_path):
    """Package data read through importlib.resources: it works from a zip (as from a wheel)."""
    archive = tmp_path / "curate.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in (REPO / "curate").rglob("*"):
            if "__pycache__" not in p.parts and p.is_file():
                z.write(p, p.relative_to(REPO).as_posix())
    code = ("import json, curate.generate.templates as t; "
            "print(json.dumps([t.__file__, [[x.name, x.sha256] for x in t.bundled_templates()]]))")
    env = {**os.environ, "PYTHONPATH": str(archive)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    where, names = json.loads(out.stdout)
    assert where.startswith(str(archive))
    assert names == [[t.name, t.sha256] for t in bundled_templates()]


# --- render -------------------------------------------------------------------------------------


def test_render_fuse_inserts_values_verbatim(tmp_path):
    t = load_template(str(write(tmp_path, FUSE_TOML)))
    raw, syn = "Nike Air Max 90 {red} 50% off", "a red shoe on a white background"
    msgs = t.render(raw=raw, synthetic=syn)
    assert msgs == ({"role": "user", "content": f"Alt: {raw}\nCaption: {syn}\nMerge them; keep {{braces}}."},)
    bundled = load_template("fuse-v1").render(raw=raw, synthetic=syn)
    assert [m["role"] for m in bundled] == ["system", "user"]
    assert raw in bundled[1]["content"] and syn in bundled[1]["content"] and "{" not in bundled[0]["content"]


def test_render_missing_and_unexpected_fields():
    t = load_template("fuse-v1")
    with pytest.raises(ConfigError, match=r"'fuse-v1' needs field 'synthetic'"):
        t.render(raw="x")
    with pytest.raises(ConfigError, match=r"'fuse-v1' has no field 'caption'"):
        t.render(raw="x", synthetic="y", caption="z")
    with pytest.raises(InputError, match="'raw' must be a string"):
        t.render(raw=None, synthetic="y")


def test_render_images():
    t = load_template("caption-v1")
    msgs = t.render(image=JPEG)
    assert [m["role"] for m in msgs] == ["system", "user"]
    image_part, text_part = msgs[1]["content"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,") and base64.b64decode(url.split(",", 1)[1]) == JPEG
    assert text_part == {"type": "text", "text": t.user}
    assert t.render(image=PNG)[1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert t.render(image=JPEG, image_mime="image/webp")[1]["content"][0]["image_url"]["url"].startswith("data:image/webp")
    assert t.render(image="https://example.org/a.jpg")[1]["content"][0]["image_url"]["url"] == "https://example.org/a.jpg"
    with pytest.raises(ConfigError, match="needs an image"):
        t.render()
    with pytest.raises(InputError, match="empty"):
        t.render(image=b"")
    with pytest.raises(ConfigError, match="takes no image"):
        load_template("fuse-v1").render(raw="a", synthetic="b", image=JPEG)


def test_render_rewrite_with_pairs_or_text(laclip_dir):
    t = load_template("rewrite-v1")
    pairs = load_examples(laclip_dir / "meta_input_output_pairs.jsonl", t.n_examples, seed=7, strategy="human")
    user = t.render(caption="a dog on a beach", examples=pairs)[-1]["content"]
    for src, dst in pairs:
        assert f"Caption: {src}\nRewrite: {dst}" in user
    assert user.rstrip().endswith("Caption: a dog on a beach\nRewrite:")
    assert t.render(caption="a dog on a beach", examples=t.format_examples(pairs)) == t.render(
        caption="a dog on a beach", examples=pairs)
    with pytest.raises(InputError, match="example 1"):
        t.render(caption="c", examples=[("a", "b"), ("only one",)])


def test_instruction_texts_hold_no_input():
    t = load_template("fuse-v1")
    texts = t.instruction_texts()
    assert texts and all("{" not in x for x in texts)
    assert any("Keep every name, place, number and brand" in x for x in texts)
    rendered = "\n".join(m["content"] for m in t.render(raw="RAWTEXT", synthetic="SYNTEXT"))
    assert all(x in rendered for x in texts) and not any("RAWTEXT" in x for x in texts)


# --- hashes -------------------------------------------------------------------------------------


def test_file_hash_is_of_the_bytes(tmp_path):
    copy = tmp_path / "copy.toml"
    shutil.copyfile(BUNDLED_DIR / "fuse-v1.toml", copy)
    assert load_template(str(copy)).sha256 == load_template("fuse-v1").sha256
    other = tmp_path / "other" / "same.toml"
    other.parent.mkdir()
    shutil.copyfile(copy, other)
    assert load_template(str(other)).sha256 == load_template(str(copy)).sha256
    copy.write_bytes(copy.read_bytes() + b"# a comment\n")
    assert load_template(str(copy)).sha256 != load_template("fuse-v1").sha256


def test_prompt_hash():
    t = load_template("fuse-v1")
    a = t.render(raw="VW T-ROC", synthetic="a wheel")
    assert prompt_hash(a) == prompt_hash(t.render(raw="VW T-ROC", synthetic="a wheel"))
    assert prompt_hash(a) != prompt_hash(t.render(raw="VW T-ROC", synthetic="a wheel."))
    reordered = tuple({k: m[k] for k in reversed(list(m))} for m in a)
    assert prompt_hash(reordered) == prompt_hash(a)
    assert len(prompt_hash(a)) == 64


def test_prompt_hash_counts_an_image_by_its_bytes():
    t = load_template("caption-v1")
    one = t.render(image=JPEG)
    url = one[1]["content"][0]["image_url"]["url"]
    head, payload = url.split(",", 1)
    wrapped = f"{head},{payload[:40]}\n{payload[40:]}"  # the same bytes, base64 spelt with a line break
    two = ({**one[0]}, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": wrapped}},
                                                     one[1]["content"][1]]})
    assert prompt_hash(two) == prompt_hash(one)
    assert prompt_hash(t.render(image=JPEG + b"\x00")) != prompt_hash(one)
    assert prompt_hash(t.render(image=JPEG, image_mime="image/png")) != prompt_hash(one)
    assert prompt_hash(t.render(image="https://example.org/a.jpg")) != prompt_hash(t.render(image="https://example.org/b.jpg"))


# --- load errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("text,match", [
    ('name = "x"\ntask = "fuse"\nuser = "{raw} {synthetic}"\ncolour = "red"\n',
     r"unknown key\(s\) colour; valid keys: name, task, description, system, user"),
    ('name = "x"\ntask = "fuse"\n', r"missing key 'user'"),
    ('name = "x"\ntask = "fuse"\nuser = "   "\n', r"'user' is empty"),
    ('name = "x"\ntask = "summarise"\nuser = "{raw}"\n', r"unknown task 'summarise'; tasks: caption, fuse, rewrite"),
    ('name = "x"\nuser = "{raw}"\n', r"unknown task None"),
    ('name = "x"\ntask = "fuse"\nuser = "{raw} {synthetic} {caption}"\n',
     r"placeholder \{caption\} is not allowed for task fuse; allowed: \{raw\}, \{synthetic\}"),
    ('name = "x"\ntask = "caption"\nuser = "Describe {image}"\n', r"\{image\} is not allowed for task caption; allowed: none"),
    ('name = "x"\ntask = "fuse"\nuser = "Merge {raw}"\n', r"needs placeholder \{synthetic\}"),
    ('name = "x"\ntask = "fuse"\nuser = "{raw} {} {synthetic}"\n', r"positional placeholder"),
    ('name = "x"\ntask = "fuse"\nuser = "{raw!r} {synthetic}"\n', r"format spec or conversion"),
    ('name = "x"\ntask = "fuse"\nuser = "{raw.upper} {synthetic}"\n', r"not a plain name"),
    ('name = "x"\ntask = "fuse"\nuser = "{raw} {synthetic"\n', r"bad placeholder syntax"),
    ('name = "x"\ntask = "fuse"\nuser = "{raw} {synthetic}"\nn_examples = 3\n', r"'n_examples' is for task rewrite only"),
    ('name = "x"\ntask = "rewrite"\nuser = "{caption} {examples}"\nn_examples = -1\n', r"whole number >= 0"),
    ('name = "x"\ntask = "rewrite"\nuser = "{caption} {examples}"\nexamples_format = "{input}"\n',
     r"must use exactly \{input\} and \{output\}"),
    ('name = "x"\ntask = "rewrite"\nuser = "Rewrite {caption}"\n', r"needs placeholder \{examples\}"),
    ('name = "x"\ntask = "rewrite"\nuser = "{caption} {examples}"\nn_examples = 0\n', r"n_examples = 0"),
    ('name = "x"\ntask = "fuse"\nuser = 3\n', r"'user' must be a string, got int"),
    ('name = "bad name!"\ntask = "fuse"\nuser = "{raw} {synthetic}"\n', r"must be letters, digits"),
    ('name = "x"\ntask = "fuse"\nuser = "{raw} {synthetic}"\nstricter = "x"\n', r"names the template itself"),
])
def test_load_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_template(str(write(tmp_path, text)))
    assert "\n" not in str(e.value)


def test_bad_toml_names_the_line(tmp_path):
    p = write(tmp_path, 'name = "x"\ntask = "fuse"\nuser = "{raw} {synthetic}\n')
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 3") as e:
        load_template(str(p))
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_file_unknown_name_and_bad_encoding(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_template(str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"unknown template 'fuse-v9'; bundled templates: caption-v1, "):
        load_template("fuse-v9")
    p = tmp_path / "latin1.toml"
    p.write_bytes('name = "x"\ntask = "fuse"\nuser = "Caf\xe9 {raw} {synthetic}"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_template(str(p))


def test_name_defaults_to_the_file_stem_and_stricter_is_relative(tmp_path):
    write(tmp_path, 'task = "fuse"\nuser = "STRICT {raw} {synthetic}"\n', "strict.toml")
    base = write(tmp_path, 'task = "fuse"\nuser = "{raw} {synthetic}"\nstricter = "strict.toml"\n', "base.toml")
    t = load_template(str(base))
    assert t.name == "base" and t.path == str(base.resolve())
    s = load_stricter(t)
    assert s is not None and s.name == "strict" and s.user.startswith("STRICT")
    wrong = write(tmp_path, 'task = "rewrite"\nuser = "{caption} {examples}"\nstricter = "fuse-strict-v1"\n', "w.toml")
    with pytest.raises(ConfigError, match="is for task fuse, not rewrite"):
        load_stricter(load_template(str(wrong)))


def test_zero_shot_rewrite_is_allowed(tmp_path):
    t = load_template(str(write(tmp_path, 'task = "rewrite"\nuser = "Rewrite: {caption}"\nn_examples = 0\n')))
    assert t.n_examples == 0 and t.fields() == ("caption",)
    assert t.render(caption="a dog")[0]["content"] == "Rewrite: a dog"


# --- in-context examples ------------------------------------------------------------------------


def test_real_laclip_pairs(laclip_dir):
    path = laclip_dir / "meta_input_output_pairs.jsonl"
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    pairs = read_examples(path)
    assert pairs == [(r["source_caption"].strip(), r["rewritten_caption"].strip()) for r in rows] and len(pairs) == 48
    for strategy in ("chatgpt", "bard", "human"):
        sub = read_examples(path, strategy=strategy)
        assert len(sub) == 16 and set(sub) <= set(pairs)
    with pytest.raises(InputError, match=r"no pairs of strategy 'gpt4' \(strategies in the file: bard, chatgpt, human\)"):
        read_examples(path, strategy="gpt4")


def test_choice_is_seeded_and_reproducible_across_processes(laclip_dir):
    path = laclip_dir / "meta_input_output_pairs.jsonl"
    a = load_examples(path, 3, seed="caption-123", strategy="chatgpt")
    assert a == load_examples(path, 3, seed="caption-123", strategy="chatgpt") and len(set(a)) == 3
    choices = {tuple(load_examples(path, 3, seed=s, strategy="chatgpt")) for s in range(20)}
    assert len(choices) > 10  # seeds give different examples
    code = ("import sys, json; from curate.generate.templates import load_examples; "
            "print(json.dumps(load_examples(sys.argv[1], 3, seed='caption-123', strategy='chatgpt')))")
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, check=True)
        assert [tuple(p) for p in json.loads(out.stdout)] == a
    with pytest.raises(InputError, match="asked for 17 in-context examples but only 16"):
        load_examples(path, 17, seed=0, strategy="bard")
    assert choose_examples(read_examples(path), 0, seed=1) == []


def test_examples_hash(laclip_dir):
    pairs = read_examples(laclip_dir / "meta_input_output_pairs.jsonl")[:3]
    assert examples_hash(pairs) == examples_hash([tuple(p) for p in pairs])
    assert examples_hash(pairs) != examples_hash(list(reversed(pairs)))
    assert examples_hash(pairs) != examples_hash(pairs[:2])


@pytest.mark.parametrize("content,match", [
    (b'{"input": "a", "output": "b"}\n{"input": "c", "output": \n', r":2: not valid JSON"),
    (b'{"input": "a", "output": "b"}\n\n["a", "b"]\n', r":3: expected a JSON object, got list"),
    (b'{"input": "a", "output": "b"}\n{"source": "a", "target": "b"}\n',
     r":2: needs keys 'input'/'output' or 'source_caption'/'rewritten_caption'; found 'source', 'target'"),
    (b'{"input": "a", "output": ""}\n', r":1: 'input' and 'output' must be non-empty strings"),
    (b'{"input": "a", "output": 3}\n', r":1: 'input' and 'output' must be non-empty strings"),
    (b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n', r":2: not UTF-8"),
    (b"\n\n", r"has no pairs"),
])
def test_bad_examples_file(tmp_path, content, match):
    p = tmp_path / "pairs.jsonl"
    p.write_bytes(content)
    with pytest.raises(InputError, match=match) as e:
        read_examples(p)
    assert "\n" not in str(e.value)


def test_missing_examples_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_examples(tmp_path / "none.jsonl", 3, seed=0)
