"""One uid, whatever textual form it comes in (issue 16 item 3).

The store prints dashed UUIDs, ``curate mix`` writes 32 hex digits, other tools wrap
them in braces or ``urn:uuid:``. A uid column holding any of these is the uid itself, so
re-ingesting the store's own uids finds its samples instead of hashing them into new
ones. ``curate check`` catches what slipped through before: two samples of one source
with the same url.
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from curate.ids import md5_uuid, sample_uid, uid_from_id_sql
from curate.store import CATALOG, Store

CLI = [sys.executable, "-m", "curate.cli"]


def _forms(u: uuid.UUID, rnd: random.Random) -> list[str]:
    """Every textual form of ``u`` that is the uid itself, in lower, upper and mixed case."""
    bare, dashed = u.hex, str(u)
    out = [bare, dashed, "{" + bare + "}", "{" + dashed + "}", "urn:uuid:" + dashed, "urn:uuid:" + bare]
    mixed = ["".join(ch.upper() if rnd.random() < 0.5 else ch for ch in s) for s in out]
    return out + [s.upper() for s in out] + mixed


def _not_forms(u: uuid.UUID) -> list[str]:
    """Near misses, which are ids to hash, not uids."""
    bare, dashed = u.hex, str(u)
    return [bare[:-1], bare + "0", bare[:-1] + "g", dashed.replace("-", "", 1), bare[:4] + "-" + bare[4:],
            "{" + bare, bare + "}", "{" + bare + "}}", " " + bare, bare + " ", "urn:uuid:{" + dashed + "}",
            "uuid:" + dashed, "urn:" + dashed, "urn:uuid:", "{}", "", "0", "k1", dashed + "-"]


def test_python_and_sql_agree_on_every_form_and_near_miss():
    """The oracle: ``sample_uid`` (Python) and ``uid_from_id_sql`` (DuckDB) give the same uid
    for 300 random uuids in 18 forms each and 19 near misses each; the forms are the
    uuid itself, the near misses are hashed with the source like any other id."""
    from curate.ids import parse_uid

    rnd = random.Random(16)
    uids = [uuid.UUID(int=rnd.getrandbits(128)) for _ in range(300)]
    cases: list[tuple[str, uuid.UUID | None]] = []
    for u in uids:
        cases += [(s, u) for s in _forms(u, rnd)] + [(s, None) for s in _not_forms(u)]
    con = duckdb.connect()
    con.execute("CREATE TABLE ids AS SELECT unnest(?) AS id", [[s for s, _ in cases]])
    got = dict(con.execute(f"SELECT id, {uid_from_id_sql('id')} FROM ids", {"source": "src"}).fetchall())
    for text, expected in cases:
        py = sample_uid("src", source_id=text)
        assert got[text] == py, text
        if expected is not None:
            assert py == expected == parse_uid(text), text
        else:
            assert parse_uid(text) is None, text
            assert py == md5_uuid(f"src\x1fid\x1f{text}"), text


def _run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_reingesting_the_stores_own_dashed_uids_adds_nothing(tmp_path, laion_file):
    """200 LAION rows under DataComp-style 32-hex uids; the store's uids exported as it
    prints them (dashed) and in braces, upper case, go back in with --uid-col: every row is
    already present, no sample is added, and ``curate check`` passes. (Before, the dashed
    uid was hashed as a foreign id: 200 new samples with the same urls, which check accepted.)"""
    rows = pq.read_table(laion_file).slice(0, 200).to_pylist()
    rnd = random.Random(3)
    src = _write_csv(tmp_path / "dc.csv", [{"uid": uuid.UUID(int=rnd.getrandbits(128)).hex, "url": r["URL"],
                                           "text": r["TEXT"] or "no text"} for r in rows])
    store = tmp_path / "s"
    first = _run("ingest", "table", src, "--preset", "datacomp", "--source", "dc", "--store", store)
    assert first.returncode == 0, first.stderr
    with Store.open(store, read_only=True) as s:
        exported = s.con.execute("SELECT uid::VARCHAR, url, c.text FROM samples JOIN captions c USING (uid) "
                                 "ORDER BY url").fetchall()
    assert len(exported) == 200 and all(len(u) == 36 and u.count("-") == 4 for u, _, _ in exported)
    again = _write_csv(tmp_path / "again.csv", [
        {"uid": u if i % 2 else "{" + u.upper() + "}", "url": url, "text": text}
        for i, (u, url, text) in enumerate(exported)])
    res = _run("ingest", "table", again, "--uid-col", "uid", "--caption-col", "text", "--source", "dc",
               "--store", store)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    with Store.open(store, read_only=True) as s:
        assert s.count("samples") == 200
        assert s.count("captions") == 200  # the same texts: the same caption ids
    assert "read 200 rows: 200 added, 0 already present, 0 rejected" in first.stdout
    assert "read 200 rows: 0 added, 200 already present, 0 rejected" in res.stdout
    check = _run("check", "--store", store)
    assert check.returncode == 0, check.stdout + check.stderr


def test_check_finds_a_second_sample_of_a_url_in_one_source(tmp_path, laion_file):
    """A source's rows keyed by url, then the same urls keyed by an id column (a new uid
    for every row): each url now has two samples in the source. ``curate check`` fails,
    counts them and shows one, on one line each; other sources may share a url."""
    rows = pq.read_table(laion_file).slice(0, 50).to_pylist()
    by_url = _write_csv(tmp_path / "urls.csv", [{"url": r["URL"], "caption": r["TEXT"] or "x"} for r in rows])
    by_id = _write_csv(tmp_path / "ids.csv", [{"id": f"row-{i}", "url": r["URL"], "caption": r["TEXT"] or "x"}
                                              for i, r in enumerate(rows)])
    store = tmp_path / "s"
    assert _run("ingest", "table", by_url, "--source", "web", "--store", store).returncode == 0
    assert _run("ingest", "table", by_url, "--source", "other", "--store", store).returncode == 0
    assert _run("check", "--store", store).returncode == 0  # one url in two sources is fine
    assert _run("ingest", "table", by_id, "--uid-col", "id", "--source", "web", "--store", store).returncode == 0
    res = _run("check", "--store", store)
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    i = lines.index("FAIL checks.duplicate_urls (50 rows)")
    example = lines[i + 1]
    assert example.startswith("     e.g. source=web, url=http") and "samples=2" in example, example
    assert "ok   checks.duplicate_uids" in lines
    assert res.stderr.strip() == "error: 1 invariant(s) violated"
    con = duckdb.connect(str(store / CATALOG), read_only=True)
    n = con.execute("SELECT count(*) FROM (SELECT url FROM samples WHERE source = 'web' GROUP BY url "
                    "HAVING count(DISTINCT uid) > 1)").fetchall()[0][0]
    assert n == 50


@pytest.mark.parametrize("form", [str.upper, lambda u: "{" + u + "}", lambda u: "urn:uuid:" + u])
def test_a_uid_form_is_the_same_sample_through_the_api(store, tmp_path, form):
    """Ingesting one row by its dashed uid and again by another form of it: one sample."""
    from curate.ingest import ingest

    u = str(uuid.UUID(int=12345678901234567890))
    a = _write_csv(tmp_path / "a.csv", [{"uid": u, "url": "http://a/1.jpg", "caption": "one"}])
    b = _write_csv(tmp_path / "b.csv", [{"uid": form(u), "url": "http://a/1.jpg", "caption": "one"}])
    ingest(store, "table", a, "s", uid_col="uid")
    res = ingest(store, "table", b, "s", uid_col="uid")
    assert store.con.execute("SELECT uid::VARCHAR FROM samples").fetchall() == [(u,)]
    assert (res.samples_added, res.already_present, res.rows_rejected) == (0, 1, 0)
