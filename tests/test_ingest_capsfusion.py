"""CapsFusion reader: the real 10,000-record example file, the JSONL form, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import table_snapshot

from curate import InputError
from curate.ids import sample_uid
from curate.ingest.capsfusion import ingest_capsfusion, prepare_capsfusion
from curate.ingest.core import run_ingest

# Python's str.split() whitespace (Unicode spaces, \x1c-\x1f, \x85) as an RE2 class.
WORDS = r"[^\s\pZ\x{1c}-\x{1f}\x{85}]+"


@pytest.fixture(scope="module")
def example(shared_data: Path) -> Path:
    return shared_data / "capsfusion-examples" / "example_data.json"


def _reasons(store) -> list[tuple[str, str]]:
    """(last part of row_ref, reason) of every reject, sorted."""
    rows = store.con.execute("SELECT row_ref, reason FROM rejects").fetchall()
    return sorted((ref.rsplit(":", 1)[-1], reason) for ref, reason in rows)


def test_real_file_counts_and_caption_lengths(store, example):
    r = ingest_capsfusion(store, example, source="capsfusion")
    assert (r.rows_in, r.samples_added, r.captions_added, r.rejected) == (10_000, 10_000, 30_000, 0)
    assert r.by_variant == {"raw": 10_000, "synthetic": 10_000, "fused": 10_000}

    means = dict(store.con.execute(
        f"SELECT variant, avg(len(regexp_extract_all(text, '{WORDS}'))) FROM captions GROUP BY variant"
    ).fetchall())
    # PROVENANCE.md: laion_coco 8.96, capsfusion 22.75, laion_2b 10.82 mean words per caption
    assert means["synthetic"] == pytest.approx(8.96, abs=0.01)
    assert means["fused"] == pytest.approx(22.75, abs=0.01)
    assert means["raw"] == pytest.approx(10.82, abs=0.01)
    # and exactly what plain Python computes from the file
    records = json.loads(example.read_text(encoding="utf-8"))
    for key, variant in (("laion_2b", "raw"), ("laion_coco", "synthetic"), ("capsfuion_official", "fused")):
        assert means[variant] == pytest.approx(sum(len(r[key].split()) for r in records) / len(records), abs=1e-9)

    gens = dict(store.con.execute("SELECT DISTINCT variant, generator FROM captions").fetchall())
    assert gens == {"raw": "alt-text", "synthetic": "BLIP (LAION-COCO)", "fused": "CapsFusion LLM"}
    # 61 repeated laion_coco captions are still one caption per sample (distinct uids)
    assert store.con.execute("SELECT count(DISTINCT text) FROM captions WHERE variant = 'synthetic'").fetchone()[0] == 9_939


def test_uid_is_the_hash_of_raw_and_synthetic(store, example):
    ingest_capsfusion(store, example, source="cf")
    first = json.loads(example.read_text(encoding="utf-8"))[0]
    key = json.dumps([first["laion_2b"], first["laion_coco"]], ensure_ascii=False, separators=(",", ":"))
    uid = sample_uid("cf", record=key)
    texts = dict(store.con.execute("SELECT variant, text FROM captions WHERE uid = ?", [uid]).fetchall())
    assert texts == {"raw": first["laion_2b"], "synthetic": first["laion_coco"], "fused": first["capsfuion_official"]}


def test_ingesting_twice_adds_nothing(store, example):
    ingest_capsfusion(store, example, source="cf")
    before = table_snapshot(store)
    r = ingest_capsfusion(store, example, source="cf")
    assert (r.samples_added, r.captions_added, r.already_present) == (0, 0, 10_000)
    after = table_snapshot(store)
    for t in ("samples", "captions", "rejects"):
        assert after[t] == before[t]


def test_jsonl_and_corrected_key_give_the_same_samples(store, example, tmp_path):
    records = json.loads(example.read_text(encoding="utf-8"))[:200]
    (tmp_path / "head.json").write_text(json.dumps(records), encoding="utf-8")
    renamed = [{"laion_2b": r["laion_2b"], "laion_coco": r["laion_coco"], "capsfusion": r["capsfuion_official"]}
               for r in records]
    (tmp_path / "head.jsonl").write_text("".join(json.dumps(r) + "\n" for r in renamed), encoding="utf-8")
    a = ingest_capsfusion(store, tmp_path / "head.json", source="cf")
    b = ingest_capsfusion(store, tmp_path / "head.jsonl", source="cf")
    assert (a.samples_added, a.captions_added) == (200, 600)
    assert (b.samples_added, b.captions_added, b.rows_in) == (0, 0, 200)


def test_bad_records_are_rejected_with_reasons(store, tmp_path):
    ok = {"laion_2b": "a raw alt text", "laion_coco": "a photo of a cat", "capsfusion": "a fused caption"}
    lines = [
        json.dumps(ok),                                                         # 1 kept
        json.dumps({"laion_2b": "raw only", "capsfusion": "fused two"}),        # 2 kept, no laion_coco
        json.dumps({**ok, "laion_2b": "number", "laion_coco": 7}),              # 3 laion_coco is a number
        json.dumps({**ok, "laion_2b": "list", "capsfusion": ["a", "b"]}),       # 4 capsfusion is a list
        json.dumps({**ok, "laion_2b": "null", "laion_coco": None}),             # 5 null caption
        json.dumps({**ok, "laion_2b": "empty", "capsfusion": "  "}),            # 6 empty caption
        json.dumps(["not", "an", "object"]),                                    # 7
        '{"laion_2b": "broken',                                                 # 8
        json.dumps(ok),                                                         # 9 same record again
        json.dumps({**ok, "capsfusion": "another fusion"}),                     # 10 same uid, other content
        json.dumps({"capsfusion": "fused only"}),                               # 11 nothing to key it by
        json.dumps({"laion_2b": "", "laion_coco": None, "capsfusion": 3}),      # 12 no valid caption
    ]
    path = tmp_path / "bad.jsonl"
    data = "\n".join(lines).encode("utf-8") + b'\n{"laion_2b": "caf\xe9"}\n'   # 13 latin-1 byte
    path.write_bytes(data)
    r = ingest_capsfusion(store, path, source="bad")
    assert _reasons(store) == sorted([
        ("line 2", "missing key"), ("line 3", "wrong type"), ("line 4", "wrong type"), ("line 5", "null caption"),
        ("line 6", "empty caption"), ("line 7", "not a JSON object"), ("line 8", "malformed JSON"),
        ("line 9", "duplicate row"), ("line 10", "duplicate id"), ("line 11", "missing key"),
        ("line 12", "empty caption"), ("line 12", "null caption"), ("line 12", "wrong type"),
        ("line 12", "no valid caption"), ("line 13", "not UTF-8"),
    ])
    assert r.samples_added == 6  # lines 1-6; 9 and 10 repeat line 1's uid; 12 has no valid caption
    details = dict(store.con.execute("SELECT row_ref, detail FROM rejects WHERE reason = 'missing key'").fetchall())
    assert "no laion_coco (variant synthetic)" in details[f"{path.resolve()}:line 2"]
    assert store.con.execute(
        "SELECT list(variant ORDER BY variant) FROM captions WHERE uid = ?", [sample_uid("bad", record='["raw only",null]')]
    ).fetchone()[0] == ["fused", "raw"]


@pytest.mark.parametrize("content, message", [
    (b'[{"laion_2b": "a", "laion_coco": "b"', "not valid JSON"),
    (b'[{"laion_2b": "caf\xe9", "laion_coco": "b"}]', "not valid UTF-8"),
])
def test_unreadable_array_fails_and_leaves_the_store_unchanged(store, example, tmp_path, content, message):
    head = tmp_path / "head.json"
    head.write_text(json.dumps(json.loads(example.read_text(encoding="utf-8"))[:300]), encoding="utf-8")
    ingest_capsfusion(store, head, source="cf")
    before = table_snapshot(store)
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"broken\.json is {message}") as e:
        ingest_capsfusion(store, path, source="cf")
    assert "\n" not in str(e.value)
    assert table_snapshot(store) == before


def test_error_inside_the_transaction_rolls_everything_back(store, example):
    ingest_capsfusion(store, example, source="first")
    before = table_snapshot(store)
    plan = prepare_capsfusion(store, example, "second")

    def fail(con, run_id):
        assert con.execute("SELECT count(*) FROM samples WHERE source = 'second'").fetchone()[0] == 10_000
        raise InputError("stop after the inserts")

    plan.after = fail
    with pytest.raises(InputError, match="stop after the inserts"):
        run_ingest(store, plan)
    assert table_snapshot(store) == before
