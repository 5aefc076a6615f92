"""Oracle tests for the fast table-ingest path (issue 2).

The parquet ingest reads back only the flagged rows (``Prepared.rows_where_ord``) and
takes each caption's uid from the narrow key pass (a join on ``row_ord``) instead of
hashing the url again. Neither may change a stored value: here every id is recomputed
the slow way (``hashlib.md5`` -> little-endian 128-bit integer -> ``uuid.UUID``, without
``curate.ids``), and every sample, caption and reject is compared with a brute-force
Python pass over the same input.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.ingest.tables import ingest_table, resolve_mapping
from tests.conftest import EXAMPLES_DATA

LAION = EXAMPLES_DATA / "laion400m" / "test_10000.parquet"
SEP = "\x1f"


def slow_id(text: str) -> uuid.UUID:
    """DuckDB's ``md5_number(text)::UUID``, by hand: the digest read as a little-endian integer."""
    return uuid.UUID(int=int.from_bytes(hashlib.md5(text.encode("utf-8")).digest(), "little"))


def oracle(files: list[Path], source: str, max_chars: int = 20_000) -> dict[str, set]:
    """The laion-preset ingest of parquet files into an empty store, row by row in Python."""
    rows = []
    for f in files:
        t = pq.read_table(f)
        for i, (url, text) in enumerate(zip(t.column("URL").to_pylist(), t.column("TEXT").to_pylist())):
            url = url.strip(" ") if url is not None else None  # DuckDB's trim(): spaces only
            url = url or None
            uid = slow_id(f"{source}{SEP}{url}") if url is not None else None
            rows.append((f"{f.name}:row {i + 1}", uid, url, text))
    first: dict[uuid.UUID, tuple] = {}
    samples, captions, rejects = set(), set(), set()
    for ref, uid, url, text in rows:
        if uid is None:
            rejects.add((ref, "no url or id", "the record has no url and no id to key it", None))
            continue
        if uid in first:
            f_ref, f_url, f_text = first[uid]
            same = (url or "", text or "") == (f_url or "", f_text or "")
            rejects.add((ref, "duplicate row" if same else "duplicate id", f"same uid as {f_ref}", None))
            continue
        first[uid] = (ref, url, text)
        bad = ("null caption" if text is None else "empty caption" if text.strip() == ""
               else "caption too long" if len(text) > max_chars else None)
        if bad:
            size = f" ({len(text)} characters)" if text is not None else ""
            rejects.add((ref, bad, f"variant raw{size}", None if text is None else text[:1000]))
            rejects.add((ref, "no valid caption", None, None))
            continue
        samples.add((uid, source, url))
        prov = json.dumps({"record": ref, "column": "TEXT"}, separators=(",", ":"))  # issue 16 item 10
        captions.add((slow_id(f"{uid}{SEP}raw{SEP}{text}"), uid, "raw", text, "alt-text", prov, source))
    return {"samples": samples, "captions": captions, "rejects": rejects}


def stored(store) -> dict[str, set]:
    con = store.con
    return {
        "samples": set(con.execute("SELECT uid, source, url FROM samples").fetchall()),
        "captions": set(con.execute(
            "SELECT caption_id, uid, variant, text, generator, provenance, source FROM captions").fetchall()),
        "rejects": set(con.execute("SELECT row_ref, reason, detail, record FROM rejects").fetchall()),
    }


def test_ids_equal_the_slow_md5_rule_on_real_laion(store):
    res = ingest_table(store, LAION, source="laion", mapping=resolve_mapping("laion"))
    assert res.samples_added == res.captions_added == 9_999
    for uid, url in store.con.execute("SELECT uid, url FROM samples").fetchall():
        assert uid == slow_id(f"laion{SEP}{url}")
    caps = store.con.execute("SELECT caption_id, uid, variant, text FROM captions").fetchall()
    assert len(caps) == 9_999
    for cid, uid, variant, text in caps:
        assert cid == slow_id(f"{uid}{SEP}{variant}{SEP}{text}")
    assert stored(store) == oracle([LAION], "laion")


@pytest.fixture
def two_files(tmp_path: Path) -> list[Path]:
    """Two parquet files cut from the real LAION sample, overlapping by 300 rows, with bad
    urls and captions planted at the same row numbers in both files (so a row-number
    filter that ignores the file matches rows of the other file too)."""
    t = pq.read_table(LAION).slice(0, 1_500)
    urls, texts = t.column("URL").to_pylist(), t.column("TEXT").to_pylist()
    a_urls, a_texts = urls[:1_000], texts[:1_000]
    b_urls, b_texts = urls[700:1_500], texts[700:1_500]  # rows 0..299 repeat a's 700..999
    for i in range(0, 1_000, 37):
        a_texts[i] = [None, "", " \t\u3000 ", "x" * 50][i % 4]
    for i in range(0, 800, 37):
        b_texts[i] = [None, "\u2028", texts[700 + i] + " (edited)", texts[700 + i]][i % 4]
    a_urls[5], a_urls[6], a_urls[7] = None, "   ", "  " + a_urls[7] + "  "
    b_urls[5] = a_urls[10]  # a second row of one uid, far from the first
    paths = []
    for name, u, x in (("a", a_urls, a_texts), ("b", b_urls, b_texts)):
        p = tmp_path / "in" / f"{name}.parquet"
        p.parent.mkdir(exist_ok=True)
        pq.write_table(pa.table({"URL": pa.array(u, pa.string()), "TEXT": pa.array(x, pa.string())}), p,
                       row_group_size=256)
        paths.append(p)
    return paths


def test_flagged_rows_across_files_match_the_python_oracle(store, two_files):
    res = ingest_table(store, two_files[0].parent, source="mix", mapping=resolve_mapping("laion"),
                       max_caption_chars=40)
    want = oracle(two_files, "mix", max_chars=40)
    got = stored(store)
    reasons = {r[1] for r in want["rejects"]}
    assert {"no url or id", "duplicate row", "duplicate id", "null caption", "empty caption",
            "caption too long", "no valid caption"} <= reasons  # every path is exercised
    assert got["rejects"] == want["rejects"]
    assert got["samples"] == want["samples"]
    assert got["captions"] == want["captions"]
    assert res.captions_added == len(want["captions"])


def test_reingest_adds_nothing_and_keeps_ids(store, two_files):
    ingest_table(store, two_files[0].parent, source="mix", mapping=resolve_mapping("laion"))
    before = stored(store)
    res = ingest_table(store, two_files[0].parent, source="mix", mapping=resolve_mapping("laion"))
    assert res.samples_added == res.captions_added == 0
    assert stored(store) == before
