"""Store directories, migrations, the Python API and named queries."""

from __future__ import annotations

import shutil
import uuid

import duckdb
import polars as pl
import pyarrow as pa
import pytest

import curate.sqlfiles as sqlfiles
import curate.store as store_mod
from curate import QueryError, Store, StoreError
from curate.ids import caption_id, md5_uuid, sample_uid
from curate.ingest import ingest


def test_init_creates_layout_and_schema(tmp_path):
    s = Store.init(tmp_path / "st")
    assert (tmp_path / "st" / "catalog.duckdb").is_file()
    for folder in ("vectors", "indexes", "manifests", "reports"):
        assert (tmp_path / "st" / folder).is_dir()
    assert {"samples", "captions", "runs", "rejects", "downloads", "schema_migrations"} <= set(s.tables())
    assert s.schema_version == len(store_mod.migrations())
    s.close()


def test_open_missing_store_says_how_to_create(tmp_path):
    with pytest.raises(StoreError, match="curate init"):
        Store.open(tmp_path / "nope")


def test_default_store_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_STORE", str(tmp_path / "envstore"))
    with Store.init() as s:
        assert s.path == tmp_path / "envstore"


def test_store_from_an_earlier_version_upgrades(tmp_path, monkeypatch):
    # A store made with only the migrations of an earlier curate...
    old_sql = tmp_path / "old_sql"
    shutil.copytree(sqlfiles.sql_root(), old_sql)
    new_sql = tmp_path / "new_sql"
    shutil.copytree(sqlfiles.sql_root(), new_sql)
    n = len(store_mod.migrations())
    (new_sql / "schema" / f"{n + 1:03d}_add_note.sql").write_text(
        "ALTER TABLE samples ADD COLUMN note VARCHAR;\nCREATE TABLE notes (uid UUID, note VARCHAR);\n")
    monkeypatch.setattr(store_mod, "sql_root", lambda: old_sql)
    with Store.init(tmp_path / "st") as s:
        s.con.execute("INSERT INTO samples (uid, source, url, run_id) VALUES (uuid(), 'x', 'http://a', 1)")
        assert s.schema_version == n
    # ...opens with a newer curate, which applies only the new migration and keeps the data.
    monkeypatch.setattr(store_mod, "sql_root", lambda: new_sql)
    with Store.open(tmp_path / "st") as s:
        assert s.schema_version == n + 1
        assert "note" in s.columns("samples") and s.has_table("notes")
        assert s.count("samples") == 1
    # ...and the older curate refuses it rather than guessing.
    monkeypatch.setattr(store_mod, "sql_root", lambda: old_sql)
    with pytest.raises(StoreError, match=f"migrations \\[{n + 1}\\].*upgrade curate"):
        Store.open(tmp_path / "st")


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    bad_sql = tmp_path / "sql"
    shutil.copytree(sqlfiles.sql_root(), bad_sql)
    n = len(store_mod.migrations())
    with Store.init(tmp_path / "st"):
        pass
    (bad_sql / "schema" / f"{n + 1:03d}_broken.sql").write_text("CREATE TABLE half (a INT);\nNOT SQL AT ALL;\n")
    monkeypatch.setattr(store_mod, "sql_root", lambda: bad_sql)
    with pytest.raises(StoreError, match="broken.sql failed"):
        Store.open(tmp_path / "st")
    con = duckdb.connect(str(tmp_path / "st" / "catalog.duckdb"))
    assert con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0] == n
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'half'").fetchall()[0][0] == 0


def test_python_api_returns_polars_arrow_and_connection(store, laion_file):
    ingest(store, "table", laion_file, "laion", preset="laion")
    df = store.df("SELECT variant, count(*) AS n FROM captions GROUP BY variant")
    assert isinstance(df, pl.DataFrame) and df.to_dicts() == [{"variant": "raw", "n": 9_999}]
    lf = store.lazy("SELECT uid, url FROM samples")
    assert isinstance(lf, pl.LazyFrame) and lf.select(pl.len()).collect().item() == 9_999
    t = store.arrow("SELECT count(*) AS n FROM samples WHERE url LIKE $p", {"p": "https://%"})
    assert isinstance(t, pa.Table) and 0 < t.column("n")[0].as_py() < 9_999
    assert isinstance(store.con, duckdb.DuckDBPyConnection)
    with pytest.raises(QueryError, match="no_such_table"):
        store.df("SELECT * FROM no_such_table")


def test_ids_python_twins_equal_sql(store):
    row = store.con.execute(
        "SELECT md5_number('laion' || chr(31) || 'http://x/a.jpg')::UUID::VARCHAR, "
        "md5_number('abc')::UUID::VARCHAR").fetchall()[0]
    assert row[0] == str(sample_uid("laion", url="http://x/a.jpg"))
    assert row[1] == str(md5_uuid("abc"))
    hexid = "0123456789abcdef0123456789abcdef"
    assert sample_uid("datacomp", source_id=hexid) == uuid.UUID(hexid)
    u = sample_uid("laion", url="http://x/a.jpg")
    assert caption_id(u, "raw", "a cat") != caption_id(u, "raw", "a dog")


def test_stored_ids_follow_the_documented_rule(store, laion_file):
    ingest(store, "table", laion_file, "laion", preset="laion")
    rows = store.con.execute(
        "SELECT s.uid::VARCHAR, s.url, c.caption_id::VARCHAR, c.text FROM samples s JOIN captions c USING (uid) LIMIT 50"
    ).fetchall()
    for uid, url, cid, text in rows:
        assert uid == str(sample_uid("laion", url=url))
        assert cid == str(caption_id(uid, "raw", text))


def test_named_queries_all_run(store, laion_file):
    ingest(store, "table", laion_file, "laion", preset="laion")
    from curate.runner import run_stage
    from curate.stages.caption_stats import CaptionStats

    run_stage(store, CaptionStats())
    sample_params = {"variant": "raw", "max_words": 2}
    for q in sqlfiles.named_queries().values():
        if q.domain not in ("captions", "store", "checks"):  # the others need their stage's tables and are
            continue                                          # run in that stage's test file
        rel = store.query(q.qualname, **{p: sample_params[p] for p in q.params})
        rows = rel.fetchall()
        if q.domain == "checks":
            assert rows == [], q.qualname
    assert store.query("captions.missing_variant", variant="raw").fetchall() == []
    assert store.query("captions.missing_variant", variant="fused").fetchall()[0][1] == 9_999
    with pytest.raises(QueryError, match="needs parameter"):
        store.query("captions.exact_duplicates")
    with pytest.raises(QueryError, match="unknown named query"):
        store.query("captions.nope")


def test_every_named_query_is_documented():
    for q in sqlfiles.named_queries().values():
        assert q.doc, f"{q.qualname} has no documenting comment"


def test_catalog_opens_in_the_duckdb_cli(store, cc3m_file):
    """The store is an ordinary DuckDB file: the `duckdb` CLI from PyPI (1.x) reads it."""
    import subprocess
    import sys
    from pathlib import Path

    ingest(store, "table", cc3m_file, "cc3m", preset="cc3m")
    path = store.path / "catalog.duckdb"
    store.close()
    cli = Path(sys.executable).parent / "duckdb"
    out = subprocess.run([str(cli), "-readonly", "-csv", str(path), "-c",
                          "SELECT source, variant, count(*) AS n FROM captions GROUP BY ALL"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == ["source,variant,n", "cc3m,raw,15833"]


def test_missing_extra_names_the_install_command(monkeypatch):
    from curate import MissingExtraError, _optional

    monkeypatch.setitem(_optional.KNOWN, "curate_no_such_module", ("no-such-package", "index"))
    with pytest.raises(MissingExtraError, match=r"FAISS dedup needs .*pip install 'curate\[index\]'"):
        _optional.require("curate_no_such_module", purpose="FAISS dedup")
    with pytest.raises(MissingExtraError, match=r"pip install 'other_missing_mod'"):
        _optional.require("other_missing_mod", purpose="x")
    assert _optional.require("json", purpose="parsing").dumps([1]) == "[1]"


# -- named queries that include others ----------------------------------------------------
def test_a_named_query_includes_another_with_its_parameters_and_defaults(tmp_path):
    from curate.errors import QueryError
    from curate.sqlfiles import _expand, parse_file

    f = tmp_path / "t.sql"
    f.write_text(
        "-- name: base\n-- rows of x above a floor\n-- defaults: floor=2\nSELECT x FROM range(10) t(x) WHERE x >= $floor\n\n"
        "-- name: top\n-- the base rows below a cap\nSELECT count(*) AS n FROM {{t.base}} b WHERE x < $cap\n\n"
        "-- name: own\n-- its own default wins\n-- defaults: cap=4\nSELECT n FROM {{t.top}}\n", encoding="utf-8")
    qs = {q.qualname: q for q in parse_file(f, "t")}
    top = _expand(qs, "t.top", ())
    assert set(top.params) == {"floor", "cap"} and dict(top.defaults) == {"floor": "2"}
    assert "{{" not in top.sql and "range(10)" in top.sql
    own = _expand(qs, "t.own", ())
    assert dict(own.defaults) == {"floor": "2", "cap": "4"}
    import duckdb

    con = duckdb.connect()
    assert con.execute(own.sql, {"floor": 2, "cap": 4}).fetchall() == [(2,)]  # x in {2, 3}
    assert con.execute(top.sql, {"floor": 0, "cap": 7}).fetchall() == [(7,)]

    f.write_text("-- name: a\n-- loops\nSELECT * FROM {{t.b}}\n\n-- name: b\n-- loops\nSELECT * FROM {{t.a}}\n\n"
                 "-- name: c\n-- missing\nSELECT * FROM {{t.nope}}\n", encoding="utf-8")
    qs = {q.qualname: q for q in parse_file(f, "t")}
    with pytest.raises(QueryError, match=r"includes itself \(t\.a -> t\.b -> t\.a\)"):
        _expand(qs, "t.a", ())
    with pytest.raises(QueryError, match="includes unknown named query 't.nope'"):
        _expand(qs, "t.c", ())


def test_knowledge_reports_and_mixing_share_one_rule():
    """knowledge.retention/lost and mix.caption_retention all expand knowledge.kept; the
    support reports and mix.caption_hallucinations expand knowledge.unsupported."""
    from curate.sqlfiles import get_query

    kept = get_query("knowledge.kept").sql
    unsupported = get_query("knowledge.unsupported").sql
    for name in ("knowledge.caption_retention", "knowledge.retention", "knowledge.lost", "mix.caption_retention"):
        assert kept in get_query(name).sql, name
    for name in ("knowledge.caption_hallucinations", "knowledge.support", "knowledge.unsupported_spans",
                 "mix.caption_hallucinations"):
        assert unsupported in get_query(name).sql, name


def test_memory_limit_and_threads_from_the_environment(tmp_path, monkeypatch):
    """CURATE_MEMORY_LIMIT and CURATE_THREADS bound DuckDB for every command; an explicit
    argument wins; a value DuckDB refuses is a one-line StoreError naming the variable."""
    monkeypatch.setenv("CURATE_MEMORY_LIMIT", "512MB")
    monkeypatch.setenv("CURATE_THREADS", "1")
    with Store.open(tmp_path / "s", create=True) as s:
        limit, threads = s.con.execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchall()[0]
    assert (limit, threads) == ("488.2 MiB", 1)
    with Store.open(tmp_path / "s", memory_limit="1GB", threads=2) as s:
        assert s.con.execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchall()[0] == (
            "953.6 MiB", 2)
    monkeypatch.setenv("CURATE_MEMORY_LIMIT", "lots")
    with pytest.raises(StoreError) as e:
        Store.open(tmp_path / "s")
    assert "memory_limit='lots'" in str(e.value) and "CURATE_MEMORY_LIMIT" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.delenv("CURATE_MEMORY_LIMIT")
    monkeypatch.setenv("CURATE_THREADS", "two")
    with pytest.raises(StoreError, match="CURATE_THREADS must be a whole number from 1 to 4096"):
        Store.open(tmp_path / "s")


# -- a full disk (issue 17) --------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs mounted on a fresh folder (needs root); skipped, with the reason, where
    mounting is refused."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a 20 MB tmpfs to fill: {(out.stderr or out.stdout).strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def _digest(store_dir) -> dict[str, object]:
    with Store.open(store_dir, read_only=True) as s:
        return {"samples": s.con.execute("SELECT source, count(*) FROM samples GROUP BY 1 ORDER BY 1").fetchall(),
                "captions": s.count("captions"), "rejects": s.count("rejects"),
                "runs": s.con.execute("SELECT run_id, stage, status FROM runs ORDER BY 1").fetchall()}


def test_an_ingest_on_a_full_disk_names_the_cause_and_changes_nothing(small_disk, cc3m_file):
    """CC3M ingested under new source names until the 20 MB disk is full. The ingest that
    does not fit, and the next one, each fail with exit 4 and one line naming "No space
    left on device" (before: "cannot rollback - no transaction is active", which hid it),
    and the store holds exactly what it held before."""
    import subprocess
    import sys

    store = small_disk / "s"
    Store.init(store).close()

    def ingest_cli(source: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "curate.cli", "ingest", "table", str(cc3m_file), "--preset",
                               "cc3m", "--source", source, "--store", str(store)],
                              capture_output=True, text=True, timeout=300)

    failed = []
    for i in range(12):
        before = _digest(store)
        out = ingest_cli(f"cc{i}")
        if out.returncode == 0:
            assert "read 15,833 rows: 15,833 added" in out.stdout
            continue
        failed.append(out)
        assert _digest(store) == before, f"ingest cc{i} changed the store"
        if len(failed) == 2:
            break
    assert len(failed) == 2, "the disk never filled"
    assert before["samples"], "nothing fit on the disk at all"
    for out in failed:
        assert out.returncode == 4, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith("error: ingest table failed, nothing was written: no space left on the device")
        assert "No space left on device" in lines[0] and "rollback" not in lines[0] and "Traceback" not in out.stderr
