"""URL/caption tables on real files (LAION parquet, CC3M TSV) and their bad-input cases."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import ConfigError, InputError, Store
from curate.ids import sample_uid
from curate.ingest import ingest
from tests.conftest import table_snapshot


@pytest.fixture(scope="module")
def laion(laion_file):
    return laion_file


@pytest.fixture(scope="module")
def cc3m(cc3m_file):
    return cc3m_file


def test_laion_parquet(store, laion):
    t = pq.read_table(laion)
    assert t.num_rows == 10_000 and "__index_level_0__" in t.column_names
    urls = t.column("URL").to_pylist()
    res = ingest(store, "table", laion, "laion", preset="laion")
    assert res.rows_in == 10_000
    assert res.samples_added == len(set(urls)) == 9_999
    assert res.captions_added == 9_999
    assert res.reject_reasons == {"duplicate id": 1}
    (row_ref, detail), = store.con.execute("SELECT row_ref, detail FROM rejects").fetchall()
    dup = [i for i, u in enumerate(urls) if urls.count(u) > 1]
    # parquet rows are referenced by their 1-based row in the file
    assert row_ref.endswith(f":row {dup[1] + 1}") and detail.endswith(f":row {dup[0] + 1}")
    # the pandas index column carries no data and is not kept
    assert store.con.execute("SELECT count(*) FROM samples WHERE extra IS NOT NULL").fetchall()[0][0] == 0
    # every kept caption is the input text of its url (first occurrence)
    first = {}
    for u, txt in zip(urls, t.column("TEXT").to_pylist()):
        first.setdefault(u, txt)
    got = dict(store.con.execute("SELECT s.url, c.text FROM samples s JOIN captions c USING (uid)").fetchall())
    assert got == first


def test_ingest_twice_adds_nothing(store, laion):
    ingest(store, "table", laion, "laion", preset="laion")
    before = table_snapshot(store)
    res = ingest(store, "table", laion, "laion", preset="laion")
    assert (res.samples_added, res.captions_added, res.already_present) == (0, 0, 9_999)
    after = table_snapshot(store)
    assert {k: v for k, v in after.items() if k != "runs"} == {k: v for k, v in before.items() if k != "runs"}
    assert len(after["runs"]) == len(before["runs"]) + 1


def test_cc3m_headerless_tsv(store, cc3m):
    res = ingest(store, "table", cc3m, "cc3m", preset="cc3m")
    assert (res.rows_in, res.samples_added, res.rejected) == (15_833, 15_833, 0)
    distinct = store.con.execute("SELECT count(DISTINCT text) FROM captions").fetchall()[0][0]
    assert distinct == 15_543
    first_line = cc3m.read_text(encoding="utf-8").splitlines()[0].split("\t")
    url, text = store.con.execute(
        "SELECT s.url, c.text FROM samples s JOIN captions c USING (uid) WHERE s.url = ?", [first_line[1]]).fetchall()[0]
    assert text == first_line[0]


def test_tsv_quotes_are_kept_verbatim(store, tmp_path):
    f = tmp_path / "q.tsv"
    f.write_text('say "cheese" please\thttp://a/1.jpg\n"quoted start\thttp://a/2.jpg\n', encoding="utf-8")
    ingest(store, "table", f, "q", preset="cc3m")
    assert sorted(r[0] for r in store.con.execute("SELECT text FROM captions").fetchall()) == [
        '"quoted start', 'say "cheese" please']


def test_csv_with_header_keeps_extra_columns(store, laion, tmp_path):
    rows = pq.read_table(laion).slice(0, 200).to_pylist()
    f = tmp_path / "t.csv"
    con = duckdb.connect()
    con.register("t", pa.Table.from_pylist([{"url": r["URL"], "caption": r["TEXT"], "nsfw": "UNLIKELY",
                                             "similarity": 0.3} for r in rows]))
    con.execute(f"COPY t TO '{f}' (HEADER, DELIMITER ',')")
    res = ingest(store, "table", f, "csvsrc")
    assert res.samples_added == len({r["URL"] for r in rows})
    extra = json.loads(store.con.execute("SELECT extra FROM samples LIMIT 1").fetchall()[0][0])
    assert extra == {"nsfw": "UNLIKELY", "similarity": "0.3"}  # CSV is read as text, kept as text


def test_jsonl_gives_the_same_samples_as_parquet(tmp_path, laion):
    rows = pq.read_table(laion).slice(0, 500).to_pylist()
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps({"URL": r["URL"], "TEXT": r["TEXT"], "rank": i}) + "\n"
                         for i, r in enumerate(rows)), encoding="utf-8")
    a, b = Store.init(tmp_path / "a"), Store.init(tmp_path / "b")
    ingest(a, "table", f, "laion", preset="laion")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    ingest(b, "table", tmp_path / "t.parquet", "laion", preset="laion")
    q = "SELECT s.uid::VARCHAR, s.url, c.caption_id::VARCHAR, c.text FROM samples s JOIN captions c USING (uid) ORDER BY 1"
    assert a.con.execute(q).fetchall() == b.con.execute(q).fetchall()
    assert json.loads(a.con.execute("SELECT extra FROM samples WHERE url = ?", [rows[3]["URL"]]).fetchall()[0][0]) == {"rank": 3}


def test_datacomp_preset_uses_the_source_uid(store, laion, tmp_path):
    rows = pq.read_table(laion).slice(0, 100).to_pylist()
    dc = [{"uid": hashlib.md5(r["URL"].encode()).hexdigest(), "url": r["URL"], "text": r["TEXT"],
           "original_width": 640, "original_height": 480, "sha256": "ab" * 32,
           "clip_b32_similarity_score": 0.31, "clip_l14_similarity_score": 0.27} for r in rows]
    pq.write_table(pa.Table.from_pylist(dc), tmp_path / "dc.parquet")
    ingest(store, "table", tmp_path / "dc.parquet", "datacomp", preset="datacomp")
    got = store.con.execute("SELECT replace(uid::VARCHAR, '-', ''), width, height, sha256, extra FROM samples "
                            "WHERE url = ?", [dc[0]["url"]]).fetchall()[0]
    assert got[:4] == (dc[0]["uid"], 640, 480, "ab" * 32)
    assert json.loads(got[4]) == {"clip_b32_similarity_score": 0.31, "clip_l14_similarity_score": 0.27}
    assert str(sample_uid("datacomp", source_id=dc[0]["uid"])).replace("-", "") == dc[0]["uid"]


# -- bad input ------------------------------------------------------------------------

def _parquet(tmp_path, rows, name="bad.parquet", schema=None):
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_missing_mapped_column_is_one_clear_error(store, laion, tmp_path):
    before = table_snapshot(store)
    with pytest.raises(InputError, match=r"column 'caption' \(the caption column\) is missing; the input has URL, TEXT"):
        ingest(store, "table", laion, "laion", url_col="URL")
    with pytest.raises(InputError, match=r"column 'caption' \(the caption column\) is missing"):
        ingest(store, "table", laion, "laion")  # `url` finds `URL` (case ignored); `caption` has no match
    assert table_snapshot(store) == before


def test_a_column_differing_only_in_case_is_found(store, tmp_path):
    rows = [{"Url": f"https://example.org/{i}.jpg", "CAPTION": f"a photo of thing {i}"} for i in range(5)]
    res = ingest(store, "table", _parquet(tmp_path, rows, "mixed.parquet"), "mixed")  # default url / caption
    assert res.samples_added == 5 and res.captions_added == 5
    assert sorted(r[0] for r in store.con.execute("SELECT url FROM samples").fetchall()) == sorted(r["Url"] for r in rows)
    # two columns equal but for case: DuckDB reads the second as URL_1, and the exact name wins
    both = [{"url": "https://example.org/a.jpg", "URL": "https://example.org/b.jpg", "caption": "x y"}]
    res = ingest(store, "table", _parquet(tmp_path, both, "both.parquet"), "both")
    assert res.samples_added == 1
    assert store.con.execute("SELECT url FROM samples WHERE source = 'both'").fetchall() == [("https://example.org/a.jpg",)]


def test_wrong_type_is_one_clear_error(store, tmp_path):
    f = _parquet(tmp_path, [{"url": "http://a", "caption": 5}])
    with pytest.raises(InputError, match="'caption' .*has type BIGINT, expected text"):
        ingest(store, "table", f, "s")


def test_null_empty_and_huge_captions_are_rejected_with_reasons(store, tmp_path):
    rows = [{"url": "http://a/0", "caption": "a fine caption"},
            {"url": "http://a/1", "caption": None},
            {"url": "http://a/2", "caption": ""},
            {"url": "http://a/3", "caption": "  \t "},
            {"url": "http://a/4", "caption": "x" * 1_000_000},
            {"url": None, "caption": "no url at all"}]
    res = ingest(store, "table", _parquet(tmp_path, rows), "s")
    assert res.samples_added == 1
    reasons = dict(store.con.execute("SELECT row_ref[-1:], reason FROM rejects WHERE reason <> 'no valid caption'").fetchall())
    assert reasons == {"2": "null caption", "3": "empty caption", "4": "empty caption", "5": "caption too long",
                       "6": "no url or id"}
    no_valid = store.con.execute("SELECT count(*) FROM rejects WHERE reason = 'no valid caption'").fetchall()[0][0]
    assert no_valid == 4
    detail = store.con.execute("SELECT detail, length(record) FROM rejects WHERE reason = 'caption too long'").fetchall()[0]
    assert "1000000 characters" in detail[0] and detail[1] == 1000


def test_one_id_two_texts(store, tmp_path):
    rows = [{"uid": "k1", "url": "http://a/1", "caption": "first text"},
            {"uid": "k1", "url": "http://a/1", "caption": "second text"},
            {"uid": "k2", "url": "http://a/2", "caption": "same"},
            {"uid": "k2", "url": "http://a/2", "caption": "same"}]
    res = ingest(store, "table", _parquet(tmp_path, rows), "s", uid_col="uid")
    assert res.samples_added == 2
    assert dict(store.con.execute("SELECT row_ref[-1:], reason FROM rejects").fetchall()) == {
        "2": "duplicate id", "4": "duplicate row"}
    assert sorted(r[0] for r in store.con.execute("SELECT text FROM captions").fetchall()) == ["first text", "same"]


def test_non_utf8_lines(store, tmp_path):
    f = tmp_path / "bad.tsv"
    f.write_bytes(b"good caption\thttp://a/1\ncaf\xe9 latin-1\thttp://a/2\nalso good\thttp://a/3\n")
    res = ingest(store, "table", f, "s", preset="cc3m")
    assert res.samples_added == 2
    ref, reason = store.con.execute("SELECT row_ref, reason FROM rejects").fetchall()[0]
    assert reason == "not UTF-8" and ref.endswith("bad.tsv:line 2")
    j = tmp_path / "bad.jsonl"
    j.write_bytes(b'{"url": "http://b/1", "caption": "ok"}\n{"url": "http://b/2", "caption": "caf\xe9"}\n'
                  b'{not json}\n[1, 2]\n{"url": "http://b/5", "caption": ["a", "list"]}\n')
    res = ingest(store, "table", j, "j")
    assert res.samples_added == 1
    got = dict(store.con.execute("SELECT row_ref[-6:], reason FROM rejects WHERE source = 'j'").fetchall())
    assert got == {"line 2": "not UTF-8", "line 3": "malformed JSON", "line 4": "not a JSON object",
                   "line 5": "wrong type"}



def test_jsonl_numbers_and_booleans_are_not_captions_and_a_bom_is_not_data(store, tmp_path):
    """A caption or url must be a JSON string: 12345 or true is a 'wrong type' reject,
    not the text "12345". An id may be a string or an integer. A UTF-8 byte-order mark
    before the first line is dropped, so that line ingests."""
    j = tmp_path / "types.jsonl"
    j.write_bytes(b'\xef\xbb\xbf{"url": "http://c/1", "caption": "first line after a BOM"}\n'
                  b'{"url": "http://c/2", "caption": 12345}\n'
                  b'{"url": "http://c/3", "caption": true}\n'
                  b'{"url": 123, "caption": "a url that is a number"}\n'
                  b'{"url": "http://c/5", "caption": "fine", "rank": 5}\n')
    res = ingest(store, "table", j, "t")
    assert res.samples_added == 2
    assert sorted(r[0] for r in store.con.execute("SELECT text FROM captions").fetchall()) == [
        "fine", "first line after a BOM"]
    got = dict(store.con.execute("SELECT row_ref[-6:], reason FROM rejects").fetchall())
    assert got == {"line 2": "wrong type", "line 3": "wrong type", "line 4": "wrong type"}
    ids = tmp_path / "ids.jsonl"
    ids.write_text('{"uid": 42, "url": "http://d/1", "caption": "an integer id"}\n'
                   '{"uid": 4.5, "url": "http://d/2", "caption": "a fractional id"}\n', encoding="utf-8")
    res = ingest(store, "table", ids, "ids", uid_col="uid")
    assert res.samples_added == 1
    assert store.con.execute("SELECT reason FROM rejects WHERE source = 'ids'").fetchall() == [("wrong type",)]


def test_truncated_parquet_leaves_store_unchanged(store, laion, tmp_path):
    ingest(store, "table", laion, "laion", preset="laion")
    before = table_snapshot(store)
    data = laion.read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.parquet is not a readable parquet file"):
        ingest(store, "table", cut, "laion", preset="laion")
    assert table_snapshot(store) == before


def test_error_mid_transaction_rolls_back(store, tmp_path):
    """A row that fails inside DuckDB after earlier statements ran leaves nothing behind."""
    f = _parquet(tmp_path, [{"url": "http://a/1", "caption": "fine", "w": "12"},
                            {"url": "http://a/2", "caption": "fine too", "w": "not a number"}])
    before = table_snapshot(store)
    # width_col is TRY_CAST (bad widths become NULL, not an error) ...
    ingest(store, "table", f, "s", width_col="w")
    assert store.con.execute("SELECT count(*) FROM samples WHERE width IS NULL").fetchall()[0][0] == 1
    # ... so force a failure with a uid column that is not text
    before = table_snapshot(store)
    g = _parquet(tmp_path, [{"id": [1], "url": "http://b", "caption": "x"}], name="g.parquet")
    with pytest.raises(InputError):
        ingest(store, "table", g, "s2", uid_col="id")
    assert table_snapshot(store) == before


def test_bad_options(store, laion, tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        ingest(store, "table", laion, "x", preset="nope")
    with pytest.raises(ConfigError, match="has no option.*valid options"):
        ingest(store, "table", laion, "x", colour="red")
    with pytest.raises(InputError, match="does not exist"):
        ingest(store, "table", tmp_path / "missing.parquet", "x")
    with pytest.raises(ConfigError, match="unknown ingest format"):
        ingest(store, "tabel", laion, "x")


def test_folder_of_parquet_files(store, laion, tmp_path):
    t = pq.read_table(laion)
    d = tmp_path / "parts"
    d.mkdir()
    pq.write_table(t.slice(0, 4000), d / "part-0.parquet")
    pq.write_table(t.slice(4000), d / "part-1.parquet")
    res = ingest(store, "table", d, "laion", preset="laion")
    assert (res.rows_in, res.samples_added) == (10_000, 9_999)


def test_streaming_ingest_stays_in_bounded_memory(tmp_path):
    """2M rows (about 300 MB as Python strings) ingest under a 300 MB DuckDB memory limit."""
    src = tmp_path / "big.parquet"
    duckdb.connect().execute(f"""
        COPY (SELECT 'https://img.example.com/' || i || '/photo-' || (i * 7919 % 1000003) || '.jpg' AS URL,
                     'a photo of item ' || (i % 500000) || ' on a wooden table, stock image number ' || i AS TEXT
              FROM range(2000000) t(i)) TO '{src}' (FORMAT parquet, ROW_GROUP_SIZE 200000)""")
    code = textwrap.dedent(f"""
        import resource, json
        from curate import Store
        from curate.ingest import ingest
        s = Store.open({str(tmp_path / 'st')!r}, create=True, memory_limit="300MB", threads=2)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = ingest(s, "table", {str(src)!r}, "big", preset="laion")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"samples": r.samples_added, "base_mb": base / 1024, "peak_mb": peak / 1024}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["samples"] == 2_000_000
    # the text alone is ~170 MB of UTF-8; holding the table in Python/Arrow would exceed 600 MB
    assert got["peak_mb"] - got["base_mb"] < 600, got


def test_a_large_csv_keeps_file_order_for_duplicates_rejects_and_reingest(tmp_path, laion):
    """590,000 rows of real LAION alt-text (each URL made distinct per copy), large
    enough for DuckDB to read the CSV in parallel. Row numbers must follow the file: the
    first of two rows with the same URL is kept, a reject names the row it came from,
    and ingesting the file again adds nothing. (Numbering rows with a window and no
    ORDER BY broke all three.)"""
    f = tmp_path / "big.csv"
    empty_row, dup_row, n = 555_555, 444_444, 590_000
    # the LAION rows with a caption, each URL once (the file has one URL twice), 60 copies
    duckdb.execute(f"""COPY (
        WITH base AS (SELECT URL AS url, TEXT AS caption, file_row_number AS j
                      FROM read_parquet('{laion}', file_row_number = true)
                      WHERE TEXT IS NOT NULL AND trim(TEXT) <> '' AND URL IS NOT NULL
                      QUALIFY row_number() OVER (PARTITION BY URL ORDER BY file_row_number) = 1),
        r AS (SELECT row_number() OVER (ORDER BY i, j) AS line, url || '?copy=' || i AS url, caption
              FROM base, range(60) t(i))
        SELECT CASE WHEN line = {dup_row} THEN (SELECT url FROM r WHERE line = 5) ELSE url END AS url,
               CASE WHEN line = {empty_row} THEN '' WHEN line = {dup_row} THEN 'another text for row five'
                    ELSE caption END AS caption
        FROM r WHERE line <= {n} ORDER BY line
    ) TO '{f}' (HEADER, DELIMITER ',')""")
    lines = duckdb.execute(f"SELECT count(*) FROM read_csv('{f}', all_varchar = true)").fetchall()[0][0]
    assert lines == n
    rows = duckdb.execute(f"SELECT url, caption FROM read_csv('{f}', all_varchar = true) LIMIT 5").fetchall()
    ingest(store := Store.init(tmp_path / "s"), "table", f, "big")
    rej = store.con.execute("SELECT row_ref, reason FROM rejects ORDER BY row_ref, reason").fetchall()
    kept = store.con.execute("SELECT c.text FROM captions c JOIN samples s USING (uid) WHERE s.url = ?",
                             [rows[4][0]]).fetchall()
    assert kept == [(rows[4][1],)]
    # an empty CSV field reads as NULL: the caption is null and the row has no valid caption
    # the header is line 1, so data row N is on line N + 1
    assert rej == [("big.csv:line 444445", "duplicate id"), ("big.csv:line 555556", "no valid caption"),
                   ("big.csv:line 555556", "null caption")]
    before = {t: store.con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in ("samples", "captions", "rejects")}
    ingest(store, "table", f, "big")
    after = {t: store.con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in ("samples", "captions", "rejects")}
    store.close()
    assert after == before


def test_a_tsv_line_of_3_mb_is_a_reject_and_one_over_32_mb_a_one_line_error(store, tmp_path):
    """DuckDB reads CSV lines up to 2 MB by default and failed the whole file with a dump
    of the line. curate reads lines up to 32 MB: a 3 MB caption becomes a 'caption too
    long' reject beside the good rows; a longer line fails before any write, naming it."""
    f = tmp_path / "long.tsv"
    f.write_text("ok caption\thttp://a/1\n" + "x" * 3_000_000 + "\thttp://a/2\nanother\thttp://a/3\n", encoding="utf-8")
    res = ingest(store, "table", f, "long", preset="cc3m")
    assert res.samples_added == 2
    assert sorted(store.con.execute("SELECT row_ref, reason FROM rejects").fetchall()) == [
        ("long.tsv:line 2", "caption too long"), ("long.tsv:line 2", "no valid caption")]
    huge = tmp_path / "huge.tsv"
    huge.write_text("ok caption\thttp://b/1\n" + "y" * (33 * 2**20) + "\thttp://b/2\n", encoding="utf-8")
    before = table_snapshot(store)
    with pytest.raises(InputError) as e:
        ingest(store, "table", huge, "huge", preset="cc3m")
    assert str(e.value).startswith("huge.tsv line 2 is longer than 32 MB, the most curate reads")
    assert "\n" not in str(e.value) and len(str(e.value)) < 200
    assert table_snapshot(store) == before


def test_the_url_expression_equals_trim_on_every_code_point():
    """url_sql runs trim() only when an edge character is one trim removes. Oracle: DuckDB's
    own nullif(trim(x), '') on every BMP code point alone, at either edge, doubled and in
    the middle, and on 20,000 random strings of spaces, tabs, combining marks and emoji.
    TRIM_CODEPOINTS must be exactly the set trim removes."""
    import random

    from curate.ingest.tables import TRIM_CODEPOINTS, url_sql

    con = duckdb.connect()
    cps = [c for c in range(1, 0x10000) if not 0xD800 <= c <= 0xDFFF]
    trimmed = con.execute("SELECT list(c ORDER BY c) FROM (SELECT unnest(?) AS c) "
                          "WHERE trim(chr(c) || 'a') = 'a' OR trim('a' || chr(c)) = 'a'", [cps]).fetchall()[0][0]
    assert trimmed == sorted(TRIM_CODEPOINTS)
    vals: list[str | None] = []
    for c in cps + [0x1F642, 0x10FFFF]:
        ch = chr(c)
        vals += [ch, ch + "a", "a" + ch, ch + ch + "x" + ch, "a" + ch + "b"]
    rnd = random.Random(7)
    pool = [chr(c) for c in TRIM_CODEPOINTS] + list("ab\t\n é") + ["\u0301", "\U0001F642"]
    vals += ["".join(rnd.choice(pool) for _ in range(rnd.randint(0, 6))) for _ in range(20_000)]
    vals += ["", None, "  http://example.com/a.jpg \u3000"]
    con.execute("CREATE TABLE v AS SELECT unnest(?) AS x", [vals])
    differ = con.execute(f"SELECT x FROM v WHERE ({url_sql('x')}) IS DISTINCT FROM nullif(trim(x), '')").fetchall()
    assert differ == []
    assert con.execute(f"SELECT {url_sql('x')} FROM v WHERE x LIKE '%example%'").fetchall() == [
        ("http://example.com/a.jpg",)]


def test_a_large_jsonl_streams_in_bounded_memory(tmp_path):
    """2M JSONL lines (about 350 MB) ingest through the CLI under CURATE_MEMORY_LIMIT=300MB in
    under 600 MB more than the interpreter had before. The lines stream into a DuckDB temp
    table, which spills to the store's tmp/. (Gathered as one Arrow table, as before, the
    same ingest grew by about 1.1 GB; with the limit, growth is about 430 MB for a 130 MB
    file and 490 MB for a 530 MB one.)"""
    src = tmp_path / "big.jsonl"
    duckdb.connect().execute(f"""
        COPY (SELECT 'https://img.example.com/' || i || '/photo-' || (i * 7919 % 1000003) || '.jpg' AS url,
                     'a photo of item ' || (i % 500000) || ' on a wooden table, stock image number ' || i AS caption,
                     (i % 997) / 997.0 AS similarity, i % 3 = 0 AS nsfw
              FROM range(2000000) t(i)) TO '{src}' (FORMAT json)""")
    size_mb = src.stat().st_size / 2**20
    assert size_mb > 300
    code = textwrap.dedent(f"""
        import resource, json, sys
        from curate.cli import main
        import duckdb, polars, pyarrow  # imported before the baseline is taken
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            main(["ingest", "table", {str(src)!r}, "--store", {str(tmp_path / 'st')!r}])
        except SystemExit as e:
            assert not e.code, e.code
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"base_mb": base / 1024, "peak_mb": peak / 1024}}))
    """)
    env = {**os.environ, "CURATE_MEMORY_LIMIT": "300MB", "CURATE_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    with Store.open(tmp_path / "st", read_only=True) as s:
        assert s.count("samples") == 2_000_000
        assert s.con.execute("SELECT extra->>'$.nsfw', count(*) FROM samples GROUP BY 1 ORDER BY 1").fetchall() == [
            ("false", 1_333_333), ("true", 666_667)]
    assert got["peak_mb"] - got["base_mb"] < 600, (got, size_mb)


@pytest.mark.parametrize("content, message", [
    (b"", "empty.jsonl: no lines to read; nothing was written"),
    (b"\n  \n", "empty.jsonl: no lines to read; nothing was written"),
    (b"\xff\xfe\n{bad json\n", "empty.jsonl: no line is a JSON object with keys (1 UTF-8 lines, 1 not UTF-8)"),
    (b'[1, 2]\n"x"\n{}\n', "empty.jsonl: no line is a JSON object with keys (3 UTF-8 lines, 0 not UTF-8)"),
])
def test_a_jsonl_with_no_object_is_a_one_line_error(store, tmp_path, content, message):
    f = tmp_path / "empty.jsonl"
    f.write_bytes(content)
    before = table_snapshot(store)
    with pytest.raises(InputError) as e:
        ingest(store, "table", f, "e", url_col="url", caption_col="caption")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert table_snapshot(store) == before


def test_parquet_shards_are_checked_one_by_one(store, laion, tmp_path):
    """A folder of parquet shards whose schemas differ: columns are matched by name, a
    column only a later shard has is kept, and a later shard whose caption column is not
    text is an error naming that shard (DuckDB alone would cast it or drop the column,
    depending on which shard sorts first)."""
    t = pq.read_table(laion).slice(0, 300)
    d = tmp_path / "shards"
    d.mkdir()
    pq.write_table(t.slice(0, 100), d / "part-0.parquet")
    pq.write_table(t.slice(100, 100).append_column("lang", pa.array(["en"] * 100)), d / "part-1.parquet")
    res = ingest(store, "table", d, "laion", preset="laion")
    assert res.samples_added == 200
    langs = dict(store.con.execute("SELECT coalesce(extra->>'$.lang', 'none'), count(*) FROM samples GROUP BY 1").fetchall())
    assert langs == {"en": 100, "none": 100}
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(t.slice(0, 100), bad / "part-0.parquet")
    pq.write_table(pa.table({"URL": t.column("URL").slice(200, 100), "TEXT": pa.array(range(100))}), bad / "part-1.parquet")
    before = table_snapshot(store)
    with pytest.raises(InputError) as e:
        ingest(store, "table", bad, "bad", preset="laion")
    assert str(e.value).startswith("part-1.parquet: column 'TEXT' (the caption column) has type BIGINT, expected text")
    assert table_snapshot(store) == before


def test_parquet_under_another_name_is_read_as_parquet(store, laion, tmp_path):
    f = tmp_path / "laion.jsonl"
    f.write_bytes(laion.read_bytes())
    res = ingest(store, "table", f, "laion", preset="laion")
    assert (res.rows_in, res.samples_added) == (10_000, 9_999)


def test_jsonl_keys_with_quotes_dots_and_slashes(store, tmp_path):
    """Any JSON key can be mapped or kept: keys go into SQL as escaped JSON Pointers."""
    f = tmp_path / "q.jsonl"
    rows = [{"u.r/l": f"http://q/{i}", "it's \"the\" caption": f"caption {i}", "a~b": i} for i in range(3)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = ingest(store, "table", f, "q", url_col="u.r/l", caption_col="it's \"the\" caption")
    assert (res.samples_added, res.captions_added) == (3, 3)
    got = store.con.execute("SELECT s.url, c.text, s.extra->>'$.\"a~b\"' FROM samples s JOIN captions c USING (uid) "
                            "ORDER BY s.url").fetchall()
    assert got == [(f"http://q/{i}", f"caption {i}", str(i)) for i in range(3)]


def test_out_of_memory_while_reading_is_a_one_line_error(tmp_path, capsfusion_file):
    """A memory limit too small for the input fails in one line that says what to raise,
    and the store is unchanged (before, the JSONL reader's own statements gave a traceback)."""
    recs = json.loads(capsfusion_file.read_text(encoding="utf-8"))
    f = tmp_path / "caps.jsonl"
    f.write_text("".join(json.dumps({"url": f"http://r/{i}", "caption": r["capsfuion_official"], "raw": r["laion_2b"]})
                         + "\n" for i, r in enumerate(recs)), encoding="utf-8")
    Store.init(tmp_path / "s").close()
    code = textwrap.dedent(f"""
        from curate.cli import main
        raise SystemExit(main(["ingest", "table", {str(f)!r}, "--store", {str(tmp_path / 's')!r}]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CURATE_MEMORY_LIMIT": "20MB", "CURATE_THREADS": "2"})
    assert out.returncode != 0
    err = out.stderr.strip()
    assert err.startswith("error: ingest table failed, nothing was written: Out of Memory Error"), err
    assert "raise CURATE_MEMORY_LIMIT" in err and "\n" not in err and "Traceback" not in err
    with Store.open(tmp_path / "s", read_only=True) as s:
        assert (s.count("samples"), s.count("runs")) == (0, 0)


# -- uid conflicts (issue 17) ---------------------------------------------------------

CLI = [sys.executable, "-m", "curate.cli"]
DC_UID = "0123456789abcdef0123456789abcdef"


def _dc(tmp_path, name, uid, url, text):
    f = tmp_path / name
    f.write_text(f"uid,url,text\n{uid},{url},{text}\n", encoding="utf-8")
    return f


def test_a_uid_of_another_source_is_a_conflict_not_a_merge(store, tmp_path):
    """Two sources share a DataComp uid, the second in upper case. Before, the second
    source's caption went onto the first source's sample and its url was dropped ("1
    samples already in the store"). Now the row is a reject naming the other source and
    url, and the first sample keeps only its own caption."""
    ingest(store, "table", _dc(tmp_path, "a.csv", DC_UID, "http://a/1.jpg", "first caption"), "A", preset="datacomp")
    before = table_snapshot(store)
    res = ingest(store, "table", _dc(tmp_path, "b.csv", DC_UID.upper(), "http://b/1.jpg", "second caption"), "B",
                 preset="datacomp")
    assert store.con.execute("SELECT c.text, c.source FROM captions c").fetchall() == [("first caption", "A")]
    assert (res.rows_in, res.samples_added, res.already_present, res.rows_rejected) == (1, 0, 0, 1)
    assert table_snapshot(store)["samples"] == before["samples"]
    (ref, reason, detail, record), = store.con.execute(
        "SELECT row_ref, reason, detail, record FROM rejects WHERE source = 'B'").fetchall()
    assert (ref, reason, record) == ("b.csv:line 2", "uid conflict", "http://b/1.jpg")
    assert detail == ("uid 01234567-89ab-cdef-0123-456789abcdef already belongs to a sample of source 'A' with url "
                      "http://a/1.jpg; this row has url http://b/1.jpg")


def test_a_uid_of_another_url_in_the_same_source_is_a_conflict(store, tmp_path):
    ingest(store, "table", _dc(tmp_path, "a.csv", DC_UID, "http://a/1.jpg", "first"), "dc", preset="datacomp")
    same = ingest(store, "table", _dc(tmp_path, "a2.csv", DC_UID, "http://a/1.jpg", "a new caption"), "dc",
                  preset="datacomp")
    assert (same.samples_added, same.already_present, same.rows_rejected, same.captions_added) == (0, 1, 0, 1)
    other = ingest(store, "table", _dc(tmp_path, "a3.csv", DC_UID, "http://a/2.jpg", "third"), "dc", preset="datacomp")
    assert (other.samples_added, other.already_present, other.rows_rejected) == (0, 0, 1)
    assert other.reject_reasons == {"uid conflict": 1}
    assert store.con.execute("SELECT url FROM samples").fetchall() == [("http://a/1.jpg",)]
    assert sorted(r[0] for r in store.con.execute("SELECT text FROM captions").fetchall()) == ["a new caption", "first"]


def test_the_uid_conflict_through_the_cli(tmp_path):
    store = tmp_path / "s"
    a = _dc(tmp_path, "a.csv", DC_UID, "http://a/1.jpg", "first caption")
    b = _dc(tmp_path, "b.csv", DC_UID.upper(), "http://b/1.jpg", "second caption")

    def run(*args):
        return subprocess.run(CLI + [str(x) for x in args], capture_output=True, text=True, timeout=300)

    assert run("ingest", "table", a, "--preset", "datacomp", "--source", "A", "--store", store).returncode == 0
    out = run("ingest", "table", b, "--preset", "datacomp", "--source", "B", "--store", store)
    # every record rejected: a failure a script sees (exit 3), the summary and one error line
    assert out.returncode == 3
    assert "read 1 rows: 0 added, 0 already present, 1 rejected" in out.stdout
    assert "1 rejects recorded (uid conflict: 1)" in out.stdout
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: nothing was added from") and "Traceback" not in out.stderr
    again = run("ingest", "table", a, "--preset", "datacomp", "--source", "A", "--store", store)
    assert again.returncode == 0 and "read 1 rows: 0 added, 1 already present, 0 rejected" in again.stdout
    with Store.open(store, read_only=True) as s:
        assert s.con.execute("SELECT source, url FROM samples").fetchall() == [("A", "http://a/1.jpg")]
        assert s.con.execute("SELECT source, text FROM captions").fetchall() == [("A", "first caption")]


# -- CSV/TSV row references and unreadable CSV (issues 16 and 17) ---------------------

def test_csv_references_are_the_lines_rows_start_on(store, tmp_path):
    """Blank lines, a quoted caption over two lines and a malformed line: every row and
    reject is ``file:line N``, the 1-based line of the file it starts on."""
    f = tmp_path / "b.csv"
    f.write_text('url,caption\nhttp://x/1,one\n\nhttp://x/3,"multi\nline"\nu2,too,many\nhttp://x/5,\n'
                 "http://x/5,dup\n", encoding="utf-8")
    res = ingest(store, "table", f, "b")
    assert (res.rows_in, res.samples_added, res.rows_rejected) == (5, 2, 3)
    assert sorted(store.con.execute("SELECT row_ref, reason, detail FROM rejects").fetchall()) == [
        ("b.csv:line 6", "too many columns", "Expected Number of Columns: 2 Found: 3"),
        ("b.csv:line 7", "no valid caption", None),
        ("b.csv:line 7", "null caption", "variant raw"),
        ("b.csv:line 8", "duplicate id", "same uid as b.csv:line 7"),
    ]
    assert store.con.execute("SELECT text FROM captions WHERE text LIKE 'multi%'").fetchall() == [("multi\nline",)]


def test_tsv_references_count_blank_lines(store, tmp_path):
    f = tmp_path / "t.tsv"
    f.write_text("one\thttp://t/1\n\n\nx\thttp://t/1\nbad line\n\tthree\thttp://t/3\n", encoding="utf-8")
    ingest(store, "table", f, "t", preset="cc3m")
    assert sorted(store.con.execute("SELECT row_ref, reason FROM rejects").fetchall()) == [
        ("t.tsv:line 4", "duplicate id"), ("t.tsv:line 5", "missing columns"), ("t.tsv:line 6", "too many columns")]


@pytest.mark.parametrize("lines_before", [0, 3_000])
def test_an_unclosed_quote_names_its_line(store, tmp_path, lines_before):
    """A quote that never closes: DuckDB either fails to detect the dialect (a small file)
    or records one reject and reads nothing more of the file (a larger one). Both are one
    error naming the line the quote opens on, not "a line longer than 32 MB" or a silent loss."""
    f = tmp_path / "q.csv"
    good = "".join(f"http://q/{i},caption {i}\n" for i in range(lines_before))
    f.write_text("url,caption\n" + good + 'http://q/x,"unterminated start\nhttp://q/y,after it\n'
                 + "".join(f"http://q/z{i},more\n" for i in range(2_000)), encoding="utf-8")
    before = table_snapshot(store)
    with pytest.raises(InputError) as e:
        ingest(store, "table", f, "q")
    assert str(e.value).startswith(f"q.csv line {lines_before + 2}: a quoted field opens on this line and is never "
                                   "closed"), str(e.value)
    assert "\n" not in str(e.value) and "32 MB" not in str(e.value)
    assert table_snapshot(store) == before


def test_an_unclosed_quote_through_the_cli(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text('url,caption\nhttp://x/1,"unterminated\nhttp://x/2,two\n', encoding="utf-8")
    out = subprocess.run(CLI + ["ingest", "table", str(f), "--store", str(tmp_path / "s")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 3 and out.stdout == ""
    assert out.stderr.strip() == ('error: q.csv line 2: a quoted field opens on this line and is never closed (the '
                                  'rest of the file would be one value); close it, and double any quote inside a '
                                  'quoted field (""); nothing was written')
    with Store.open(tmp_path / "s", read_only=True) as s:
        assert (s.count("samples"), s.count("runs")) == (0, 0)


def test_rows_are_numbered_by_record_when_lines_cannot_be_matched(store, tmp_path, monkeypatch):
    """Should curate's own count of a file's records not match DuckDB's, the file's rows are
    ``file:record N`` (never a guessed line); its rejects keep DuckDB's line number."""
    import curate.ingest.tables as tables

    monkeypatch.setattr(tables, "_record_starts", lambda *a: None)  # the count that does not match
    f = tmp_path / "r.csv"
    f.write_text('url,caption\nhttp://r/1,one\n\nhttp://r/1,again\nu2,too,many\n', encoding="utf-8")
    ingest(store, "table", f, "r")
    assert sorted(store.con.execute("SELECT row_ref, reason, detail FROM rejects").fetchall()) == [
        ("r.csv:line 5", "too many columns", "Expected Number of Columns: 2 Found: 3"),
        ("r.csv:record 2", "duplicate id", "same uid as r.csv:record 1")]


def test_table_captions_record_their_input_and_caption_columns(store, tmp_path):
    """Issue 16, item 10: a table caption's provenance names the input record and column,
    and columns about the caption (`caption_cols`: a prompt, a captioning model) go into
    it rather than into samples.extra, in every table format; captions carry an empty
    `generation` column for generated variants."""
    pq.write_table(pa.table({"url": ["http://a/1.jpg"], "caption": ["a dog"], "prompt": ["describe"],
                             "model": ["blip2"], "other": [1]}), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("url,caption,prompt\nhttp://b/1.jpg,a bird,hi\n", encoding="utf-8")
    (tmp_path / "t.jsonl").write_text('{"url": "http://c/1.jpg", "caption": "a fish", "prompt": "p1", "x": 3}\n',
                                      encoding="utf-8")
    ingest(store, "table", tmp_path / "t.parquet", "p", caption_cols="prompt,model")
    ingest(store, "table", tmp_path / "t.csv", "c", caption_cols=("prompt",))
    ingest(store, "table", tmp_path / "t.jsonl", "j", caption_cols="prompt")
    got = {src: (json.loads(prov), None if extra is None else json.loads(extra), gen) for src, prov, extra, gen in
           store.execute("SELECT c.source, c.provenance, s.extra, c.generation FROM captions c "
                         "JOIN samples s USING (uid)").fetchall()}
    assert got["p"] == ({"record": "t.parquet:row 1", "column": "caption", "prompt": "describe", "model": "blip2"},
                        {"other": 1}, None)
    assert got["c"] == ({"record": "t.csv:line 2", "column": "caption", "prompt": "hi"}, None, None)
    assert got["j"] == ({"record": "t.jsonl:line 1", "column": "caption", "prompt": "p1"}, {"x": 3}, None)
    with pytest.raises(InputError, match=r"caption column\(s\) nope not in the input"):
        ingest(store, "table", tmp_path / "t.csv", "c2", caption_cols="nope")
