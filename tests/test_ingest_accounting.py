"""Every row read is added, already present or rejected, exactly once (issue 17).

For each ingest format, a small input cut from the real data with one malformed record
planted in it is ingested twice. Both times the counts must add up, ``read = added +
already present + rejected``, to the numbers worked out here from the input, and the
summary line must say them. A plan whose counts do not add up is an error, and the
store is left as it was. Also here: caption variant names are names (``bad variant
name``, or a one-line ConfigError for a flag), checked against ``curate.names``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import ConfigError, Store
from curate.ingest import ingest
from curate.ingest.core import Prepared, Variant, run_ingest
from curate.ingest.jsonrecords import Collected
from curate.names import is_name
from tests.conftest import TEST_DATA, table_snapshot

CLI = [sys.executable, "-m", "curate.cli"]


def _laion(laion_file: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` LAION rows with a non-blank caption."""
    rows = [r for r in pq.read_table(laion_file).slice(0, 3 * n).to_pylist() if (r["TEXT"] or "").strip()]
    return rows[:n]


def _csv(tmp: Path, laion_file: Path) -> tuple[Path, dict[str, Any]]:
    rows = _laion(laion_file, 2)
    f = tmp / "m.csv"
    # urls hold commas too; a JSON string of these is a valid CSV quoted field
    q = [f"{json.dumps(r['URL'])},{json.dumps(r['TEXT'])}" for r in rows]
    f.write_text(f"url,caption\n{q[0]}\nu2,too,many,fields\n{q[1]}\n", encoding="utf-8")
    return f, {}


def _tsv(tmp: Path, cc3m_file: Path) -> tuple[Path, dict[str, Any]]:
    lines = cc3m_file.read_text(encoding="utf-8").splitlines()[:2]
    f = tmp / "m.tsv"
    f.write_text(f"{lines[0]}\nonly one field\n{lines[1]}\n", encoding="utf-8")
    return f, {"preset": "cc3m"}


def _jsonl(tmp: Path, laion_file: Path) -> tuple[Path, dict[str, Any]]:
    rows = _laion(laion_file, 2)
    f = tmp / "m.jsonl"
    f.write_text(json.dumps({"url": rows[0]["URL"], "caption": rows[0]["TEXT"]}) + "\n{not json\n"
                 + json.dumps({"url": rows[1]["URL"], "caption": rows[1]["TEXT"]}) + "\n", encoding="utf-8")
    return f, {}


def _parquet(tmp: Path, laion_file: Path) -> tuple[Path, dict[str, Any]]:
    rows = _laion(laion_file, 2)
    f = tmp / "m.parquet"
    pq.write_table(pa.table({"URL": [rows[0]["URL"], None, rows[1]["URL"]],
                             "TEXT": [rows[0]["TEXT"], "a caption without a url", rows[1]["TEXT"]]}), f)
    return f, {"preset": "laion"}


def _capsfusion(tmp: Path, capsfusion_file: Path) -> tuple[Path, dict[str, Any]]:
    recs = json.loads(capsfusion_file.read_text(encoding="utf-8"))[:2]
    f = tmp / "m.jsonl"
    f.write_text(json.dumps(recs[0]) + "\n[not, json\n" + json.dumps(recs[1]) + "\n", encoding="utf-8")
    return f, {}


def _gbc(tmp: Path, gbc_dir: Path) -> tuple[Path, dict[str, Any]]:
    lines = (gbc_dir / "wiki_gbc_graphs.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    graph = json.loads(lines[1])
    graph["vertices"].append(42)  # a vertex that is not an object: a part of a kept graph
    f = tmp / "m.jsonl"
    f.write_text(lines[0] + "\n{\"vertices\": \n" + json.dumps(graph) + "\n", encoding="utf-8")
    return f, {}


def _coco(tmp: Path, coco_file: Path) -> tuple[Path, dict[str, Any]]:
    doc = json.loads(coco_file.read_text(encoding="utf-8"))
    images = doc["images"][:2]
    ids = {im["id"] for im in images}
    anns = [a for a in doc["annotations"] if a["image_id"] in ids]
    anns.append({"id": 10**9, "image_id": images[0]["id"], "caption": 7})  # a caption that is a number
    f = tmp / "m.json"
    f.write_text(json.dumps({"images": images, "annotations": anns}), encoding="utf-8")
    return f, {}


def _img2dataset(tmp: Path, _: Any) -> tuple[Path, dict[str, Any]]:
    # the fixture's webdataset output: 7 successes, one of them with an empty caption,
    # which require_caption=True rejects (no valid caption)
    return TEST_DATA / "img2dataset" / "webdataset", {"require_caption": True}


# format, input builder, its data fixture, and the expected (read, added, rejected) of the
# first ingest; the second finds every added sample already present.
CASES: list[tuple[str, Callable[[Path, Any], tuple[Path, dict[str, Any]]], str, tuple[int, int, int]]] = [
    ("table", _csv, "laion_file", (3, 2, 1)),
    ("table", _tsv, "cc3m_file", (3, 2, 1)),
    ("table", _jsonl, "laion_file", (3, 2, 1)),
    ("table", _parquet, "laion_file", (3, 2, 1)),
    ("capsfusion", _capsfusion, "capsfusion_file", (3, 2, 1)),
    ("gbc", _gbc, "gbc_dir", (3, 2, 1)),
    ("coco", _coco, "coco_file", (2, 2, 0)),
    ("img2dataset", _img2dataset, "laion_file", (7, 6, 1)),
]


@pytest.fixture
def coco_file() -> Path:
    from tests.conftest import EXAMPLES_DATA

    return EXAMPLES_DATA / "coco" / "captions_val2017_first1000.json"


@pytest.mark.parametrize("fmt, build, data, expected", CASES,
                         ids=["csv", "tsv", "jsonl", "parquet", "capsfusion", "gbc", "coco", "img2dataset"])
def test_every_row_read_is_added_present_or_rejected(store, tmp_path, request, fmt, build, data, expected):
    path, options = build(tmp_path, request.getfixturevalue(data))
    read, added, rejected = expected
    first = ingest(store, fmt, path, "acc", **options)
    assert (first.rows_in, first.samples_added, first.already_present, first.rows_rejected) == (
        read, added, 0, rejected), first.summary()
    assert store.count("samples") == added
    assert f"read {read:,} rows: {added:,} added, 0 already present, {rejected:,} rejected;" in first.summary()
    again = ingest(store, fmt, path, "acc", **options)
    assert (again.rows_in, again.samples_added, again.already_present, again.rows_rejected) == (
        read, 0, added, rejected), again.summary()
    assert store.count("samples") == added
    # every rejected row has a reject naming it (a row's caption rejects may add more)
    refs = store.con.execute("SELECT count(DISTINCT row_ref) FROM rejects WHERE run_id = ?", [first.run_id]).fetchall()
    assert refs[0][0] >= rejected


def test_one_malformed_csv_line_is_one_reject(store, tmp_path, laion_file):
    """DuckDB reports ``u2,too,many,fields`` once per extra field; it is one line read and
    one row rejected, with one reject saying how many fields it has."""
    f, _ = _csv(tmp_path, laion_file)
    res = ingest(store, "table", f, "m")
    assert store.con.execute("SELECT row_ref, reason, detail, record FROM rejects").fetchall() == [
        ("m.csv:line 3", "too many columns", "Expected Number of Columns: 2 Found: 4", "u2,too,many,fields")]
    assert (res.rows_in, res.samples_added, res.rows_rejected, res.rejected) == (3, 2, 1, 1)


def test_the_cli_summary_states_the_accounting(tmp_path, laion_file):
    f, _ = _csv(tmp_path, laion_file)
    store = tmp_path / "s"
    out = subprocess.run(CLI + ["ingest", "table", str(f), "--store", str(store)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.startswith("ingest table into source 'm': read 3 rows: 2 added, 0 already present, 1 rejected; "
                                 "2 captions added (raw: 2); 1 rejects recorded (too many columns: 1)"), out.stdout
    with Store.open(store, read_only=True) as s:
        assert (s.count("samples"), s.count("rejects")) == (2, 1)
        assert s.con.execute("SELECT rows_in, rows_rejected FROM runs").fetchall() == [(3, 1)]


def test_coco_counts_a_malformed_image_as_read_and_rejected(store, tmp_path, coco_file):
    path, _ = _coco(tmp_path, coco_file)
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["images"].append("not an image")
    path.write_text(json.dumps(doc), encoding="utf-8")
    res = ingest(store, "coco", path, "c")
    assert (res.rows_in, res.samples_added, res.rows_rejected) == (3, 2, 1)


def test_laclip_counts_a_malformed_line_as_read_and_rejected(store, tmp_path, laclip_dir):
    lines = (laclip_dir / "meta_input_output_pairs.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    f = tmp_path / "pairs.jsonl"
    f.write_text(lines[0] + "\n{oops\n" + lines[1] + "\n", encoding="utf-8")
    res = ingest(store, "laclip", f, "lc", create=True)
    assert res.rows_in == res.samples_added + res.already_present + res.rows_rejected
    assert res.rows_rejected == 1


def test_laclip_adds_up_when_every_line_is_good(store, tmp_path, laclip_dir):
    lines = (laclip_dir / "meta_input_output_pairs.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    originals = {json.loads(line)["source_caption"] for line in lines}
    res = ingest(store, "laclip", f, "lc", create=True)
    assert (res.rows_in, res.samples_added, res.rows_rejected) == (len(originals), len(originals), 0)


def _collected(records: list[tuple[str, str, list[tuple[str, str]]]]) -> Collected:
    """A Collected of (row_ref, uid, [(variant, text), ...]) records."""
    out = Collected()
    for ref, uid, caps in records:
        assert out.row(ref, uid, ref)
        for variant, text in caps:
            out.caption(uid, ref, variant, text, "test", None)
    return out


UIDS = [f"{i:032x}" for i in range(1, 6)]


def test_a_plan_whose_counts_do_not_add_up_is_an_error(store):
    """A reader that says it read 3 records but hands over 2 rows and no reject loses one
    in silence: the ingest fails with one line and writes nothing."""
    from curate.ingest.core import AccountingError

    before = table_snapshot(store)
    plan = _collected([("r1", UIDS[0], [("raw", "one")]), ("r2", UIDS[1], [("raw", "two")])]).plan(
        "test", "t", {}, records_in=3)
    with pytest.raises(AccountingError) as e:
        run_ingest(store, plan)
    msg = str(e.value)
    assert "\n" not in msg and "read 3 rows" in msg and "2 added + 0 already present + 0 rejected = 2" in msg
    assert table_snapshot(store) == before


def test_reader_rejects_of_parts_and_of_whole_records(store):
    """With records_in, a reader reject whose row_ref is a row's (or a row's followed by a
    space) is of a part of that row; any other is of a whole record."""
    out = _collected([("f:line 1", UIDS[0], [("raw", "one")]), ("f:line 3", UIDS[1], [("raw", "three")])])
    out.reject("f:line 1 vertices[0]", "not a JSON object", "a part")
    out.reject("f:line 3", "missing key", "another part")
    out.reject("f:line 2", "malformed JSON", "a whole record")
    out.reject("f:line 10", "malformed JSON", "a whole record whose ref starts like line 1's")
    res = run_ingest(store, out.plan("test", "t", {}, records_in=4))
    assert (res.rows_in, res.samples_added, res.rows_rejected, res.rejected) == (4, 2, 2, 4)


def test_name_sql_agrees_with_is_name():
    """The SQL twin of curate.names.is_name, on the edge cases and 5,000 random strings."""
    from curate.ingest.core import name_sql

    rnd = random.Random(6)
    pool = list("aZ09_.-/ \\:é\t") + ["..", "\u0301", "\U0001F642"]
    words = ["", "a", "A", "0", "_a", ".a", "-a", "a b", "a/b", "..", ".", "a..b", "raw", "gbc_short", "x" * 100,
             "x" * 101, "é", "a\n", "LaCLIP-chatgpt.v1"]
    words += ["".join(rnd.choice(pool) for _ in range(rnd.randint(0, 8))) for _ in range(5_000)]
    con = duckdb.connect()
    con.execute("CREATE TABLE w AS SELECT unnest(?) AS v", [words])
    got = dict(con.execute(f"SELECT v, {name_sql('v')} FROM w").fetchall())
    assert all(got[w] == is_name(w) for w in words), [w for w in words if got[w] != is_name(w)][:5]
    assert con.execute(f"SELECT {name_sql('NULL::VARCHAR')}").fetchall() == [(False,)]


def test_a_long_caption_with_a_bad_variant_name_is_a_reject(store):
    """Variant names from the data (GBC's description labels) must be names: a caption of
    variant ``gbc_has space`` is rejected as ``bad variant name``; its sample keeps its
    other captions, and a sample with no other caption is rejected (no valid caption)."""
    out = _collected([("f:line 1", UIDS[0], [("gbc_has space", "a text"), ("gbc_short", "kept")]),
                      ("f:line 2", UIDS[1], [("../escape", "only caption")])])
    res = run_ingest(store, out.plan("test", "t", {}, records_in=2))
    assert (res.rows_in, res.samples_added, res.rows_rejected) == (2, 1, 1)
    assert store.con.execute("SELECT variant, text FROM captions").fetchall() == [("gbc_short", "kept")]
    rej = store.con.execute("SELECT row_ref, reason, detail FROM rejects ORDER BY 1, 2").fetchall()
    assert [(r[0], r[1]) for r in rej] == [("f:line 1", "bad variant name"), ("f:line 2", "bad variant name"),
                                           ("f:line 2", "no valid caption")]
    assert rej[0][2].startswith("variant gbc_has space is not a name")


def test_a_variant_column_with_a_bad_name_is_a_config_error(store):
    """A variant named by code or a flag is checked before anything is written."""
    before = table_snapshot(store)
    plan = Prepared(fmt="test", source="t", config={}, variants=[Variant("my variant", "_c")],
                    rows_sql="SELECT 'r' AS row_ref, 1::BIGINT AS row_ord, uuid() AS uid, 'http://a' AS url, "
                             "NULL AS image_shard, NULL AS image_key, NULL AS image_path, NULL AS sha256, "
                             "NULL AS width, NULL AS height, NULL::JSON AS extra, 'text' AS _c")
    with pytest.raises(ConfigError, match="caption variant name 'my variant' must be"):
        run_ingest(store, plan)
    assert table_snapshot(store) == before


@pytest.mark.parametrize("args", [
    ["table", "{csv}", "--variant", "my variant"],
    ["table", "{csv}", "--variant", "../../etc"],
    ["img2dataset", str(TEST_DATA / "img2dataset" / "webdataset"), "-o", "variant=a/b"],
])
def test_the_variant_flag_is_checked_before_the_store_is_opened(tmp_path, laion_file, args):
    f, _ = _csv(tmp_path, laion_file)
    store = tmp_path / "s"
    out = subprocess.run(CLI + ["ingest", *[a.format(csv=f) for a in args], "--store", str(store)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: caption variant name ") and "Traceback" not in out.stderr
    assert not store.exists()
