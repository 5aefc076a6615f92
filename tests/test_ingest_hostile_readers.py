"""Hostile input to the JSON-shaped readers (CapsFusion, COCO, GBC, LaCLIP), through the
real CLI in a subprocess: JSON nested 100,000 levels deep, image paths that climb out of
their input's root, and GBC labels that are not safe variant names.

Each defect test failed on the readers as they were (a RecursionError traceback, the path
``../../../../etc/passwd`` stored as is, the variant ``gbc_../../evil``) and passes now.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from curate import vectors
from curate.ingest.jsonrecords import MAX_JSON_DEPTH, json_depth
from curate.names import is_name
from curate.store import Store

REPO = Path(__file__).resolve().parent.parent
DEEP = 100_000
DEEP_JSON = "[" * DEEP + "]" * DEEP


def curate(*args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m curate.cli ARGS`` in a fresh process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300, check=False)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


def rows(store_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with Store.open(store_dir, read_only=True) as s:
        return s.con.execute(sql).fetchall()


def rejects(store_dir: Path) -> list[tuple[str, str, str]]:
    """(last part of row_ref, reason, detail) of every reject, sorted."""
    got = rows(store_dir, "SELECT row_ref, reason, detail FROM rejects")
    return sorted((ref.rsplit(":", 1)[-1], reason, detail) for ref, reason, detail in got)


def write_jsonl(path: Path, lines: list[Any | str]) -> Path:
    """One line per item: a str is written as is (raw JSON text), anything else dumped."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


# -- 1. nesting ------------------------------------------------------------------------

CAPSFUSION_RECORD = {"image_url": "https://example.org/1.jpg", "laion_2b": "a cat", "laion_coco": "a cat on a mat",
                     "capsfusion": "a grey cat sitting on a mat"}
GBC_GRAPH = {"img_path": "images/1.jpg", "vertices": [
    {"vertex_id": "image", "label": "image", "descs": [{"text": "a cat on a mat", "label": "short"}]}]}
LACLIP_PAIR = {"source_caption": "a cat", "rewritten_caption": "a small cat resting", "strategy": "chatgpt"}


@pytest.mark.parametrize("fmt, name, text", [
    ("capsfusion", "triples.json", f'[{json.dumps(CAPSFUSION_RECORD)}, {{"laion_2b": {DEEP_JSON}}}]'),
    ("coco", "captions.json", '{"images": [{"id": 1, "extra": ' + DEEP_JSON + '}], "annotations": []}'),
])
def test_a_deep_json_document_is_one_error_line(tmp_path, fmt, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    proc = curate("ingest", fmt, path, "--store", tmp_path / "s")
    assert proc.returncode == 3
    assert one_error_line(proc) == (f"error: {name} nests arrays/objects more than {MAX_JSON_DEPTH} levels deep; "
                                    "nothing was written")
    assert rows(tmp_path / "s", "SELECT (SELECT count(*) FROM samples), (SELECT count(*) FROM rejects)") == [(0, 0)]


@pytest.mark.parametrize("fmt, good, options, variants", [
    ("capsfusion", CAPSFUSION_RECORD, [], {"raw", "synthetic", "fused"}),
    ("gbc", GBC_GRAPH, [], {"gbc_short", "gbc_short_caption"}),
    ("laclip", LACLIP_PAIR, ["-o", "create=true"], {"raw", "rewrite"}),
])
def test_a_deep_jsonl_line_is_a_reject_and_the_other_lines_are_ingested(tmp_path, fmt, good, options, variants):
    path = write_jsonl(tmp_path / "in.jsonl", [good, '{"key": ' + DEEP_JSON + "}"])
    proc = curate("ingest", fmt, path, "--store", tmp_path / "s", "--source", "src", *options)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "" and "too deeply nested: 1" in proc.stdout
    assert rejects(tmp_path / "s") == [
        ("line 2", "too deeply nested", f"line nests arrays/objects more than {MAX_JSON_DEPTH} levels deep")]
    assert {v for (v,) in rows(tmp_path / "s", "SELECT DISTINCT variant FROM captions")} == variants
    assert rows(tmp_path / "s", "SELECT count(*) FROM samples") == [(1,)]


def test_nesting_up_to_the_limit_is_kept_and_one_more_level_is_rejected(tmp_path):
    """The limit is exact and far from Python's own: a record exactly MAX_JSON_DEPTH deep
    (the record object is level 1) is ingested and its extra kept whole; one level more is a reject."""
    def nested(levels: int) -> Any:
        v: Any = []
        for _ in range(levels - 1):
            v = [v]
        return v

    ok = {**CAPSFUSION_RECORD, "meta": nested(MAX_JSON_DEPTH - 1)}
    deep = {**CAPSFUSION_RECORD, "image_url": "https://example.org/2.jpg", "meta": nested(MAX_JSON_DEPTH)}
    assert (json_depth(ok), json_depth(deep)) == (MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1)
    path = write_jsonl(tmp_path / "in.jsonl", [ok, deep])
    proc = curate("ingest", "capsfusion", path, "--store", tmp_path / "s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r[:2] for r in rejects(tmp_path / "s")] == [("line 2", "too deeply nested")]
    (extra,) = rows(tmp_path / "s", "SELECT extra FROM samples")[0]
    assert json.loads(extra) == {"meta": ok["meta"]}


def test_json_depth_does_not_recurse():
    assert [json_depth(v) for v in (1, "x", None, [], {}, [1, [2]], {"a": [{"b": 1}]})] == [0, 0, 0, 1, 1, 2, 3]
    v: Any = []
    for _ in range(DEEP):
        v = [v]
    assert json_depth(v) == DEEP + 1
    assert json_depth(v, limit=MAX_JSON_DEPTH) == MAX_JSON_DEPTH + 1


# -- 2. image paths --------------------------------------------------------------------

def coco_doc(file_names: list[str]) -> dict[str, Any]:
    return {"images": [{"id": i, "file_name": f, "coco_url": f"https://example.org/{i}.jpg"}
                       for i, f in enumerate(file_names)],
            "annotations": [{"id": 100 + i, "image_id": i, "caption": f"photo number {i}"}
                            for i in range(len(file_names))]}


def test_coco_image_paths_stay_inside_the_captions_folder(tmp_path):
    root = tmp_path / "coco"
    root.mkdir()
    names = ["../../../../etc/passwd", "/etc/passwd", "000000000002.jpg", "val2017/../000000000003.jpg",
             str(root / "val2017" / "000000000004.jpg"), "", "."]
    path = root / "captions.json"
    path.write_text(json.dumps(coco_doc(names)), encoding="utf-8")
    # run from a deep folder: a path taken relative to the working directory would reach /etc/passwd
    work = tmp_path / "a" / "b" / "c" / "d"
    work.mkdir(parents=True)
    proc = curate("ingest", "coco", path, "--store", tmp_path / "s", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "image path escapes the input root: 2" in proc.stdout

    base = os.path.abspath(root)
    got = rejects(tmp_path / "s")
    images = [r for r in got if r[0].startswith("images")]
    assert images == [
        ("images[0]", "image path escapes the input root",  # joined to the root and normalised, as documented
         f"file_name '../../../../etc/passwd' resolves to {os.path.normpath(base + '/../../../../etc/passwd')}, "
         f"outside {base}"),
        ("images[1]", "image path escapes the input root", f"file_name '/etc/passwd' resolves to /etc/passwd, outside {base}"),
        ("images[5]", "bad image path", "file_name is empty"),
        ("images[6]", "bad image path", f"file_name '.' names the image root {base} itself"),
    ]
    # their annotations have no image to go to
    assert [r[:2] for r in got if r[0].startswith("annotations")] == [
        (f"annotations[{i}]", "unknown image") for i in (0, 1, 5, 6)]
    stored = sorted(p for (p,) in rows(tmp_path / "s", "SELECT image_path FROM samples"))
    assert stored == [f"{base}/000000000002.jpg", f"{base}/000000000003.jpg", f"{base}/val2017/000000000004.jpg"]


def test_coco_image_root_option_and_a_root_that_is_not_a_folder(tmp_path):
    ann, images = tmp_path / "annotations", tmp_path / "val2017"
    ann.mkdir()
    images.mkdir()
    path = ann / "captions_val2017.json"
    path.write_text(json.dumps(coco_doc(["000000000001.jpg", "../annotations/captions_val2017.json"])), "utf-8")
    proc = curate("ingest", "coco", path, "--store", tmp_path / "s", "-o", f"image_root={images}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r[:2] for r in rejects(tmp_path / "s")] == [
        ("annotations[1]", "unknown image"), ("images[1]", "image path escapes the input root")]
    assert rows(tmp_path / "s", "SELECT image_path FROM samples") == [(f"{os.path.abspath(images)}/000000000001.jpg",)]

    proc = curate("ingest", "coco", path, "--store", tmp_path / "s2", "-o", f"image_root={path}")
    assert proc.returncode == 3
    assert one_error_line(proc) == f"error: image_root {path} is not a folder"


def test_gbc_image_paths_stay_inside_the_image_root(tmp_path):
    checkout = tmp_path / "ml-gbc"
    (checkout / "data" / "gbc").mkdir(parents=True)

    def graph(img_path: str, text: str) -> dict[str, Any]:
        return {**GBC_GRAPH, "img_path": img_path,
                "vertices": [{"vertex_id": "image", "label": "image", "descs": [{"text": text, "label": "short"}]}]}

    path = write_jsonl(checkout / "data" / "gbc" / "graphs.jsonl", [
        graph("data/images/wiki/Wild_horses.jpg", "wild horses"),
        graph("../../../../../etc/shadow", "a secret"),
        graph("/etc/hostname", "a host"),
    ])
    proc = curate("ingest", "gbc", path, "--store", tmp_path / "s", "-o", f"image_root={checkout}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r[:2] for r in rejects(tmp_path / "s")] == [
        ("line 2", "image path escapes the input root"), ("line 3", "image path escapes the input root")]
    assert rows(tmp_path / "s", "SELECT image_path FROM samples") == [
        (f"{os.path.abspath(checkout)}/data/images/wiki/Wild_horses.jpg",)]


def test_a_symlink_inside_the_root_is_followed_and_a_symlinked_root_is_accepted(store, tmp_path):
    """The check is on the path's text: the root's own links (a dataset cache linking every
    file to a blob store) are followed, and an absolute path through the root's resolved
    name is inside it."""
    from curate.ingest.coco import ingest_coco

    blobs, real_root = tmp_path / "blobs", tmp_path / "real"
    blobs.mkdir()
    real_root.mkdir()
    (real_root / "images").symlink_to(blobs)
    link_root = tmp_path / "link"
    link_root.symlink_to(real_root)
    path = link_root / "captions.json"
    path.write_text(json.dumps(coco_doc(["images/1.jpg", str(real_root / "2.jpg"), str(link_root / "3.jpg")])), "utf-8")
    r = ingest_coco(store, path, source="linked")
    assert (r.samples_added, r.rejected) == (3, 0)
    stored = sorted(p for (p,) in store.con.execute("SELECT image_path FROM samples").fetchall())
    assert stored == sorted([f"{link_root}/images/1.jpg", f"{real_root}/2.jpg", f"{link_root}/3.jpg"])


# -- 3. variant names from data ----------------------------------------------------------

def test_gbc_labels_become_safe_variant_names(tmp_path):
    long_label = "x" * 300
    descs = [{"text": "the evil twin", "label": "../../evil"}, {"text": "two words", "label": "a b"},
             {"text": "nothing left", "label": "///"}, {"text": "empty label", "label": ""},
             {"text": "a long label", "label": long_label}, {"text": "a plain detail", "label": "detail"}]
    path = write_jsonl(tmp_path / "graphs.jsonl", [
        {"img_path": "1.jpg", "vertices": [{"vertex_id": "cat", "label": "cat", "descs": descs}]}])
    proc = curate("ingest", "gbc", path, "--store", tmp_path / "s", "--source", "gbc")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 GBC labels renamed to safe variant names ('../../evil' -> gbc_evil, 'a b' -> gbc_a_b, " in proc.stdout

    got = dict(rows(tmp_path / "s", "SELECT text, variant FROM captions"))
    assert got == {"the evil twin": "gbc_evil", "two words": "gbc_a_b", "a long label": "gbc_" + "x" * 46,
                   "a plain detail": "gbc_detail"}
    # every variant is a valid name, so the vector sets `curate embed` makes of them are too
    for variant in got.values():
        assert is_name(variant)
        vectors.check_name(f"clip.ViT-B-32-laion2b_s34b_b79k.text.{variant}")
    labels = dict(rows(tmp_path / "s", "SELECT text, provenance->>'desc_label' FROM captions"))
    assert labels == {"the evil twin": "../../evil", "two words": "a b", "a long label": long_label,
                      "a plain detail": None}
    assert [r[:2] for r in rejects(tmp_path / "s")] == [
        ("line 1 vertex 'cat' desc 2", "bad label"), ("line 1 vertex 'cat' desc 3", "bad label")]


def test_no_reader_makes_a_variant_name_of_hostile_keys(tmp_path):
    """CapsFusion and LaCLIP take their variant names from fixed keys, never from the data:
    a hostile strategy or extra key changes the generator or extra, not the variant (a guard;
    this held before too)."""
    write_jsonl(tmp_path / "caps.jsonl", [{**CAPSFUSION_RECORD, "../../variant": "x", "Laion_2B/..": "y"}])
    write_jsonl(tmp_path / "pairs.jsonl", [{**LACLIP_PAIR, "strategy": "../../evil"}])
    for fmt, name, more in (("capsfusion", "caps.jsonl", []), ("laclip", "pairs.jsonl", ["-o", "create=true"])):
        proc = curate("ingest", fmt, tmp_path / name, "--store", tmp_path / "s", *more)
        assert proc.returncode == 0, proc.stderr[-2000:]
    variants = {v for (v,) in rows(tmp_path / "s", "SELECT DISTINCT variant FROM captions")}
    assert variants == {"raw", "synthetic", "fused", "rewrite"} and all(is_name(v) for v in variants)
    assert rows(tmp_path / "s", "SELECT generator FROM captions WHERE variant = 'rewrite'") == [("LaCLIP ../../evil",)]
