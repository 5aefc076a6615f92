"""CapsFusion reader: the real 10,000-record example file, the JSONL form, and bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from curate import InputError
from curate.ids import sample_uid
from curate.ingest.capsfusion import ingest_capsfusion, prepare_capsfusion
from curate.ingest.core import run_ingest
from tests.conftest import table_snapshot

# Python's str.split() whitespace (Unicode spaces, \x1c-\x1f, \x85) as an RE2 class.
WORDS = r"[^\s\pZ\x{1c}-\x{1f}\x{85}]+"


@pytest.fixture(scope="module")
def example(capsfusion_file: Path) -> Path:
    return capsfusion_file


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


def _md5(t: str) -> str:
    return hashlib.md5(t.encode("utf-8")).hexdigest()


def test_uid_is_the_hash_of_raw_and_synthetic(store, example):
    ingest_capsfusion(store, example, source="cf")
    first = json.loads(example.read_text(encoding="utf-8"))[0]
    key = _md5(first["laion_2b"]) + "\x1f" + _md5(first["laion_coco"])
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
    # every line is a record read, the ones the reader rejected itself included; on a
    # second run exactly the 6 samples are "already in the store"
    assert (r.rows_in, r.already_present) == (13, 0)
    again = ingest_capsfusion(store, path, source="bad")
    assert (again.rows_in, again.samples_added, again.already_present) == (13, 0, 6)
    details = dict(store.con.execute("SELECT row_ref, detail FROM rejects WHERE reason = 'missing key'").fetchall())
    assert "no laion_coco (variant synthetic)" in details[f"{path.resolve()}:line 2"]
    assert store.con.execute(
        "SELECT list(variant ORDER BY variant) FROM captions WHERE uid = ?", [sample_uid("bad", record=_md5("raw only") + "\x1f-")]
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


# --- the CapsFusion-120M release layout: parquet with image_url, laion_2b, laion_coco, capsfusion
def _release_parquet(example: Path, out: Path, with_urls: bool) -> list[dict]:
    """The real example records written in the release's parquet layout. The example file
    has no urls; with_urls gives every other record a made-up one (the release pairs most,
    not all, captions with an image url)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = json.loads(example.read_text(encoding="utf-8"))
    rows = [{"image_url": (f" https://img.example.org/capsfusion/{i}.jpg" if with_urls and i % 2 == 0 else None),
             "laion_2b": r["laion_2b"], "laion_coco": r["laion_coco"], "capsfusion": r["capsfuion_official"]}
            for i, r in enumerate(records)]
    pq.write_table(pa.Table.from_pylist(rows), out, row_group_size=3000)
    return rows


def _content(store, source: str) -> dict[str, list]:
    """samples and captions of a source without run ids or row references."""
    return {
        "samples": sorted(store.con.execute(
            "SELECT uid::VARCHAR, url, extra::VARCHAR FROM samples WHERE source = ?", [source]).fetchall(), key=repr),
        "captions": sorted(store.con.execute(
            "SELECT caption_id::VARCHAR, uid::VARCHAR, variant, text, generator FROM captions WHERE source = ?",
            [source]).fetchall(), key=repr),
    }


def test_release_parquet_gives_the_samples_of_the_json_file(tmp_path, example):
    """The real 10,000 triples as parquet: 10,000 samples, 30,000 captions, and exactly the
    rows (uids, caption ids, texts, generators) the JSON file gives."""
    from curate import Store

    _release_parquet(example, tmp_path / "capsfusion_1.parquet", with_urls=False)
    with Store.init(tmp_path / "a") as a, Store.init(tmp_path / "b") as b:
        rj = ingest_capsfusion(a, example, source="cf")
        rp = ingest_capsfusion(b, tmp_path / "capsfusion_1.parquet", source="cf")
        assert (rp.rows_in, rp.samples_added, rp.captions_added, rp.rejected) == (10_000, 10_000, 30_000, 0)
        assert rp.by_variant == rj.by_variant == {"raw": 10_000, "synthetic": 10_000, "fused": 10_000}
        assert _content(a, "cf") == _content(b, "cf")
        mean = b.con.execute("SELECT variant, round(avg(len(regexp_extract_all(text, ?))), 2) FROM captions "
                             "GROUP BY 1 ORDER BY 1", [WORDS]).fetchall()
        assert mean == [("fused", 22.75), ("raw", 10.82), ("synthetic", 8.96)]  # PROVENANCE.md


def test_release_parquet_with_urls_matches_jsonl_with_urls(tmp_path, example):
    """With an image url the uid is md5(source, url) (trimmed as table urls are), from
    parquet and from JSONL alike; records without one keep the caption key. A folder of
    shards ingests as one input."""
    from curate import Store

    shards = tmp_path / "release"
    shards.mkdir()
    rows = _release_parquet(example, tmp_path / "all.parquet", with_urls=True)
    import pyarrow.parquet as pq
    t = pq.read_table(tmp_path / "all.parquet")
    pq.write_table(t.slice(0, 6000), shards / "capsfusion_1.parquet")
    pq.write_table(t.slice(6000), shards / "capsfusion_2.parquet")
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with Store.init(tmp_path / "a") as a, Store.init(tmp_path / "b") as b:
        rp = ingest_capsfusion(a, shards, source="cf")
        rj = ingest_capsfusion(b, tmp_path / "all.jsonl", source="cf")
        assert (rp.samples_added, rp.captions_added) == (rj.samples_added, rj.captions_added) == (10_000, 30_000)
        assert _content(a, "cf") == _content(b, "cf")
        url = "https://img.example.org/capsfusion/4.jpg"
        assert a.con.execute("SELECT uid, url FROM samples WHERE url = ?", [url]).fetchall() == [
            (sample_uid("cf", url=url), url)]
        assert a.con.execute("SELECT count(*) FROM samples WHERE url IS NULL").fetchone()[0] == 5_000
        assert a.con.execute("SELECT count(*) FROM rejects").fetchone()[0] == 0
        assert a.con.execute("SELECT count(*) FROM runs WHERE stage = 'ingest.capsfusion'").fetchone()[0] == 1


def test_release_parquet_bad_input(store, tmp_path):
    """Rejects with reasons for bad rows; one-line errors, store unchanged, for a missing
    or mistyped column and a truncated file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"image_url": "http://a/1", "laion_2b": "raw one", "laion_coco": "syn one", "capsfusion": "fused one"},  # kept
        {"image_url": None, "laion_2b": "raw two", "laion_coco": None, "capsfusion": "fused two"},   # null synthetic
        {"image_url": "http://a/3", "laion_2b": "  ", "laion_coco": "", "capsfusion": None},         # nothing valid
        {"image_url": None, "laion_2b": None, "laion_coco": None, "capsfusion": "fused only"},      # no key
        {"image_url": "http://a/1", "laion_2b": "raw one", "laion_coco": "syn one", "capsfusion": "fused one"},  # dup row
        {"image_url": " http://a/1", "laion_2b": "other", "laion_coco": "syn one", "capsfusion": "fused one"},  # dup id
    ]
    f = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    r = ingest_capsfusion(store, f, source="cfb")
    assert (r.rows_in, r.samples_added, r.captions_added) == (6, 2, 5)
    assert _reasons(store) == sorted([
        ("row 2", "null caption"), ("row 3", "empty caption"), ("row 3", "empty caption"), ("row 3", "null caption"),
        ("row 3", "no valid caption"), ("row 4", "no url or id"), ("row 5", "duplicate row"), ("row 6", "duplicate id"),
    ])
    before = table_snapshot(store)
    pq.write_table(pa.table({"image_url": ["x"], "laion_2b": ["a"], "laion_coco": ["b"]}), tmp_path / "nofuse.parquet")
    pq.write_table(pa.table({"laion_2b": ["a"], "laion_coco": [3], "capsfusion": ["c"]}), tmp_path / "typed.parquet")
    (tmp_path / "cut.parquet").write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    for name, message in [("nofuse", "CapsFusion column(s) capsfusion (or capsfuion_official) missing"),
                          ("typed", "column 'laion_coco' has type BIGINT, expected text"),
                          ("cut", "not a readable parquet file")]:
        with pytest.raises(InputError) as e:
            ingest_capsfusion(store, tmp_path / f"{name}.parquet", source="cfb")
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert table_snapshot(store) == before


def test_record_key_sql_twin():
    """RECORD_KEY_SQL gives record_key's text for any pair of captions, NULLs included."""
    import random

    import duckdb

    from curate.ingest.capsfusion import RECORD_KEY_SQL, record_key

    rnd = random.Random(3)
    pool = [chr(c) for c in (*range(0, 0x80), 0xA0, 0xE9, 0x2028, 0xFEFF, 0x1F642, 0x10FFFF)]
    pairs = [(None if rnd.random() < 0.15 else "".join(rnd.choice(pool) for _ in range(rnd.randint(0, 12))),
              None if rnd.random() < 0.15 else "".join(rnd.choice(pool) for _ in range(rnd.randint(0, 12))))
             for _ in range(5000)] + [(None, None), ("", ""), ("a\x1fb", None)]
    con = duckdb.connect()
    con.execute("CREATE TABLE p (a VARCHAR, b VARCHAR, i INTEGER)")
    con.executemany("INSERT INTO p VALUES (?, ?, ?)", [(a, b, i) for i, (a, b) in enumerate(pairs)])
    got = [r[0] for r in con.execute(f"SELECT {RECORD_KEY_SQL.format(raw='a', synthetic='b')} FROM p ORDER BY i").fetchall()]
    assert got == [record_key(a, b) for a, b in pairs]


def test_release_shards_are_checked_one_by_one(store, tmp_path):
    """Shards with different schemas: a url column only the second shard has keys its
    samples by url (ingesting that shard again adds nothing); a later shard with a caption
    column that is not text is an error naming it, store unchanged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "drift"
    d.mkdir()
    pq.write_table(pa.table({"laion_2b": ["raw a"], "laion_coco": ["syn a"], "capsfusion": ["fused a"]}), d / "a.parquet")
    pq.write_table(pa.table({"image_url": ["http://u/b"], "laion_2b": ["raw b"], "laion_coco": ["syn b"],
                             "capsfusion": ["fused b"], "lang": ["en"]}), d / "b.parquet")
    r = ingest_capsfusion(store, d, source="drift")
    assert (r.samples_added, r.captions_added) == (2, 6)
    assert set(store.con.execute("SELECT url, extra->>'$.lang' FROM samples").fetchall()) == {
        (None, None), ("http://u/b", "en")}
    again = ingest_capsfusion(store, d / "b.parquet", source="drift")
    assert (again.samples_added, again.already_present) == (0, 1)
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"laion_2b": ["raw"], "laion_coco": ["syn"], "capsfusion": ["fused"]}), bad / "a.parquet")
    pq.write_table(pa.table({"laion_2b": ["raw"], "laion_coco": [{"t": "x"}], "capsfusion": ["fused"]}), bad / "b.parquet")
    before = table_snapshot(store)
    with pytest.raises(InputError, match=r"^b\.parquet: column 'laion_coco' has type STRUCT\(t VARCHAR\), expected text$"):
        ingest_capsfusion(store, bad, source="bad")
    assert table_snapshot(store) == before


def test_json_keys_match_without_case_like_parquet_columns(store, tmp_path):
    """Image_URL / LAION_2B in JSONL are the same keys as in parquet, so the same record
    gives the same sample from both."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rec = {"Image_URL": "http://x/1", "LAION_2B": "raw", "Laion_Coco": "syn", "CapsFusion": "fused"}
    (tmp_path / "r.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([rec]), tmp_path / "r.parquet")
    a = ingest_capsfusion(store, tmp_path / "r.jsonl", source="x")
    b = ingest_capsfusion(store, tmp_path / "r.parquet", source="x")
    assert (a.samples_added, a.captions_added, a.rejected) == (1, 3, 0)
    assert (b.samples_added, b.captions_added, b.already_present) == (0, 0, 1)
    assert store.con.execute("SELECT uid, url FROM samples").fetchall() == [(sample_uid("x", url="http://x/1"), "http://x/1")]
