"""GBC graph reader: the real apple/ml-gbc wiki graphs (with and without CLIP scores) and bad lines."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from curate import InputError
from curate.ids import sample_uid
from curate.ingest.gbc import ingest_gbc
from tests.conftest import table_snapshot


def _graphs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _reasons(store) -> list[tuple[str, str]]:
    rows = store.con.execute("SELECT row_ref, reason FROM rejects").fetchall()
    return sorted((ref.rsplit(":", 1)[-1], reason) for ref, reason in rows)


@pytest.mark.parametrize("name", ["wiki_gbc_graphs.jsonl", "wiki_gbc_graphs_with_clip.jsonl"])
def test_real_file_counts(store, gbc_dir, name):
    graphs = _graphs(gbc_dir / name)
    vertices = [v for g in graphs for v in g["vertices"]]
    descs = [d for v in vertices for d in v["descs"]]
    assert (len(graphs), len(vertices), len(descs)) == (19, 231, 459)
    labels = Counter(f"gbc_{d['label']}" for d in descs)
    assert labels == {"gbc_detail": 162, "gbc_hardcode": 110, "gbc_short": 109, "gbc_relation": 50,
                      "gbc_composition": 28}
    tops = Counter(k for g in graphs for k in ("short_caption", "detail_caption") if g.get(k) is not None)
    assert tops == {"short_caption": 19, "detail_caption": 19}
    assert all(g["original_caption"] is None and g["img_url"] is None for g in graphs)

    r = ingest_gbc(store, gbc_dir / name, source="gbc")
    assert (r.rows_in, r.samples_added, r.captions_added, r.rejected) == (19, 19, 459 + 38, 0)
    assert r.by_variant == {**labels, "gbc_short_caption": 19, "gbc_detail_caption": 19}
    per_vertex = store.con.execute(
        "SELECT count(DISTINCT (uid, provenance->>'vertex_id')) FROM captions WHERE provenance->>'vertex_id' IS NOT NULL"
    ).fetchone()[0]
    assert per_vertex == 231

    g = graphs[0]
    uid = sample_uid("gbc", source_id=g["img_path"])
    sample = store.con.execute("SELECT url, image_path, width, height, extra FROM samples WHERE uid = ?", [uid]).fetchone()
    # img_path is relative to the image root, by default the JSONL file's folder (the uid keeps the path as written)
    assert sample[:4] == (None, os.path.join(os.path.abspath(gbc_dir), g["img_path"]), g["img_size"][0], g["img_size"][1])
    assert json.loads(sample[4]) == {"mask_inside_threshold": g["mask_inside_threshold"]}
    top = dict(store.con.execute(
        "SELECT variant, text FROM captions WHERE uid = ? AND variant LIKE '%_caption'", [uid]).fetchall())
    assert top == {"gbc_short_caption": g["short_caption"], "gbc_detail_caption": g["detail_caption"]}


def test_provenance_keeps_vertex_and_clip_scores(store, gbc_dir):
    path = gbc_dir / "wiki_gbc_graphs_with_clip.jsonl"
    ingest_gbc(store, path, source="gbc")
    g = _graphs(path)[3]
    v = next(v for v in g["vertices"] if v["label"] == "entity")
    d = v["descs"][0]
    prov = store.con.execute(
        "SELECT provenance FROM captions WHERE uid = ? AND variant = ? AND text = ?",
        [sample_uid("gbc", source_id=g["img_path"]), f"gbc_{d['label']}", d["text"]],
    ).fetchone()[0]
    prov = json.loads(prov)
    assert prov["vertex_id"] == v["vertex_id"] and prov["vertex_label"] == "entity" and prov["desc_index"] == 0
    assert prov["bbox"] == v["bbox"]
    assert prov["clip_scores"] == d["clip_scores"] and prov["clip_scores"]["scores"]  # real scores in this file
    assert prov["statistics"] == d["statistics"] and prov["full_label"] == d["full_label"]
    assert "toxicity_scores" not in prov  # null in this file: left out


def test_the_two_files_are_the_same_samples_and_twice_adds_nothing(store, gbc_dir):
    ingest_gbc(store, gbc_dir / "wiki_gbc_graphs_with_clip.jsonl", source="gbc")
    before = table_snapshot(store)
    for name in ("wiki_gbc_graphs.jsonl", "wiki_gbc_graphs_with_clip.jsonl"):
        r = ingest_gbc(store, gbc_dir / name, source="gbc")
        assert (r.samples_added, r.captions_added, r.already_present) == (0, 0, 19)
    after = table_snapshot(store)
    for t in ("samples", "captions", "rejects"):
        assert after[t] == before[t]


def test_bad_lines_are_rejected_with_reasons(store, tmp_path):
    def graph(path, descs, **kw):
        image = {"vertex_id": "", "label": "image", "bbox": {"left": 0, "top": 0, "right": 1, "bottom": 1},
                 "descs": descs}
        return {"vertices": [image], "img_url": None, "img_path": path, "short_caption": None,
                "detail_caption": None, "img_size": [4, 3], **kw}

    ok = graph("a.jpg", [{"text": "A short caption.", "label": "short"}, {"text": "A long one.", "label": "detail"}])
    lines = [
        json.dumps(ok),                                                                     # 1 kept
        json.dumps(ok),                                                                     # 2 same graph again
        json.dumps(graph("a.jpg", [{"text": "Other.", "label": "short"}])),                 # 3 same path, other graph
        json.dumps(graph("b.jpg", [{"text": 3.5, "label": "short"}, {"text": ["x"], "label": "detail"},
                                   {"text": None, "label": "relation"}, {"text": "", "label": "hardcode"},
                                   {"label": "short"}, {"text": "No label."},
                                   {"text": "Kept.", "label": "short"}, {"text": "Kept.", "label": "short"}])),  # 4
        json.dumps({"vertices": [], "img_size": [1, 1]}),                                   # 5 no img_url/img_path
        json.dumps({"img_path": "c.jpg"}),                                                  # 6 no vertices
        json.dumps({"img_path": "d.jpg", "vertices": {"not": "a list"}}),                   # 7
        json.dumps(graph("e.jpg", [{"text": "Fine.", "label": "short"}], short_caption=7)),  # 8 top caption a number
        json.dumps(["a", "list"]),                                                          # 9
        '{"vertices": [',                                                                   # 10
        json.dumps(graph("f.jpg", [None])),                                                 # 11 desc not an object
    ]
    path = tmp_path / "graphs.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8") + b'\n{"img_path": "\xff.jpg", "vertices": []}\n')  # 12
    r = ingest_gbc(store, path, source="bad")
    d4 = "line 4 vertex ''"
    assert _reasons(store) == sorted([
        ("line 2", "duplicate row"), ("line 3", "duplicate id"),
        (f"{d4} desc 0", "wrong type"), (f"{d4} desc 1", "wrong type"), (f"{d4} desc 2", "null caption"),
        (f"{d4} desc 3", "empty caption"), (f"{d4} desc 4", "missing key"), (f"{d4} desc 5", "missing key"),
        (f"{d4} desc 7", "duplicate caption"),
        ("line 5", "missing key"), ("line 6", "missing key"), ("line 7", "wrong type"),
        ("line 8 short_caption", "wrong type"), ("line 9", "not a JSON object"), ("line 10", "malformed JSON"),
        ("line 11 vertex '' desc 0", "not a JSON object"), ("line 11", "no valid caption"),
        ("line 12", "not UTF-8"),
    ])
    assert (r.samples_added, r.captions_added) == (3, 7)
    texts = sorted(store.con.execute("SELECT variant, text FROM captions").fetchall())
    assert texts == sorted([
        ("gbc_short", "A short caption."), ("gbc_detail", "A long one."),
        ("gbc_short_caption", "A short caption."), ("gbc_detail_caption", "A long one."),
        ("gbc_short", "Kept."), ("gbc_short_caption", "Kept."), ("gbc_short", "Fine."),
    ])


def test_missing_file_fails_and_leaves_the_store_unchanged(store, gbc_dir, tmp_path):
    ingest_gbc(store, gbc_dir / "wiki_gbc_graphs.jsonl", source="gbc")
    before = table_snapshot(store)
    with pytest.raises(InputError, match="does not exist"):
        ingest_gbc(store, tmp_path / "nope.jsonl", source="gbc")
    assert table_snapshot(store) == before
