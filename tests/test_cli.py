"""Golden end-to-end tests of the command line, called in-process (``main(argv) -> exit
code``) on real LAION, CC3M and LaCLIP files. Expected values are computed from the
input files with pyarrow, never copied from curate's own output."""

from __future__ import annotations

import collections
import csv
import io
import json
import os
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from curate import __version__
from curate.cli import main
from curate.sqlfiles import named_queries
from curate.stages.caption_stats import CaptionStats
from curate.store import CATALOG, Store, migrations

from .conftest import table_snapshot

LAION_URLS = 9_999  # 10,000 rows, one URL twice


@pytest.fixture(scope="session")
def laion_rows(laion_file: Path) -> list[dict]:
    """The LAION rows ingest keeps: the first row of every URL, in input order."""
    seen: set[str] = set()
    kept = []
    for row in pq.read_table(laion_file, columns=["URL", "TEXT"]).to_pylist():
        if row["URL"] not in seen:
            seen.add(row["URL"])
            kept.append(row)
    assert len(kept) == LAION_URLS
    return kept


def curate(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    """The stderr of an expected failure: exactly one ``error: ...`` line, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def counts(store_dir: Path) -> dict[str, int]:
    with Store.open(store_dir, read_only=True) as s:
        return s.summary()


@pytest.fixture(scope="module")
def laion_store(tmp_path_factory, laion_file) -> Path:
    """A store holding the LAION file, shared by the read-only tests of this module."""
    path = tmp_path_factory.mktemp("cli") / "laion-store"
    assert main(["ingest", "table", str(laion_file), "--preset", "laion", "--source", "laion",
                 "--store", str(path)]) == 0
    return path


# -- init, info, --store ---------------------------------------------------------------

def test_init_then_info_on_an_empty_store(tmp_path, capsys):
    store = tmp_path / "s"
    rc, out, _ = curate(capsys, "init", "--store", store)
    assert rc == 0 and (store / CATALOG).is_file()
    assert f"store ready at {store} (schema version {len(migrations())}," in out
    assert "samples" in out and "captions" in out
    rc, out, _ = curate(capsys, "info", "--store", store)
    assert rc == 0
    rows = dict(line.split() for line in out.splitlines()[1:])
    assert rows["samples"] == rows["captions"] == rows["runs"] == "0"
    assert rows["schema_migrations"] == str(len(migrations()))


def test_init_takes_the_store_as_an_argument_too(tmp_path, capsys):
    rc, _, _ = curate(capsys, "init", tmp_path / "positional")
    assert rc == 0 and (tmp_path / "positional" / CATALOG).is_file()


def test_info_on_a_missing_store_fails_and_creates_nothing(tmp_path, capsys):
    rc, _, err = curate(capsys, "info", "--store", tmp_path / "nowhere")
    line = one_error_line(err)
    assert rc == 4 and "no store at" in line and "curate init" in line
    assert not (tmp_path / "nowhere").exists()


def test_store_defaults_to_the_CURATE_STORE_variable(tmp_path, monkeypatch, capsys, laion_file):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CURATE_STORE", str(tmp_path / "from-env"))
    assert curate(capsys, "init")[0] == 0
    assert (tmp_path / "from-env" / CATALOG).is_file()
    assert not (tmp_path / "curate-store").exists()
    rc, out, _ = curate(capsys, "ingest", "table", laion_file, "--preset", "laion")
    assert rc == 0 and f"{LAION_URLS:,} added" in out
    rc, out, _ = curate(capsys, "info")
    assert rc == 0 and f"store {tmp_path / 'from-env'}" in out
    # --store still wins over the variable
    rc, _, err = curate(capsys, "info", "--store", tmp_path / "other")
    assert rc == 4 and "other" in err


def test_store_defaults_to_curate_store_in_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CURATE_STORE", raising=False)
    assert curate(capsys, "init")[0] == 0
    assert (tmp_path / "curate-store" / CATALOG).is_file()


# -- ingest ----------------------------------------------------------------------------

def test_ingest_table_prints_the_counts(tmp_path, capsys, laion_file):
    store = tmp_path / "s"
    rc, out, err = curate(capsys, "ingest", "table", laion_file, "--preset", "laion", "--source", "laion",
                          "--store", store)
    assert rc == 0, err
    assert out.startswith("ingest table into source 'laion': read 10,000 rows: 9,999 added, 0 already present, "
                          "1 rejected; 9,999 captions added (raw: 9,999); 1 rejects recorded (duplicate id: 1)")
    assert counts(store)["samples"] == LAION_URLS
    rc, out, _ = curate(capsys, "ingest", "table", laion_file, "--preset", "laion", "--source", "laion",
                        "--store", store)
    assert rc == 0 and "read 10,000 rows: 0 added, 9,999 already present, 1 rejected; 0 captions added" in out


def test_ingest_cc3m_preset(tmp_path, capsys, cc3m_file):
    rc, out, err = curate(capsys, "ingest", "table", cc3m_file, "--preset", "cc3m", "--store", tmp_path / "s")
    assert rc == 0, err
    # the source defaults to the file name
    assert "into source 'Validation_GCC-1.1.0-Validation': read 15,833 rows: 15,833 added" in out
    assert counts(tmp_path / "s")["captions"] == 15_833


def test_ingest_option_reaches_the_format(tmp_path, capsys, laion_file, laion_rows):
    """-o max_caption_chars=30 arrives as the integer 30: longer captions are rejected."""
    short = sum(len(r["TEXT"]) <= 30 for r in laion_rows)
    long = LAION_URLS - short
    assert 0 < short < LAION_URLS
    store = tmp_path / "s"
    rc, out, err = curate(capsys, "ingest", "table", laion_file, "--preset", "laion", "-o", "max_caption_chars=30",
                          "--store", store)
    assert rc == 0, err
    assert f"{short:,} added, 0 already present, {long + 1:,} rejected; {short:,} captions added" in out
    assert f"caption too long: {long:,}" in out
    with Store.open(store, read_only=True) as s:
        assert s.execute("SELECT max(length(text)) FROM captions").fetchall()[0][0] <= 30


def test_ingest_option_of_another_format(tmp_path, capsys, laclip_dir):
    pairs = laclip_dir / "meta_input_output_pairs.jsonl"
    store = tmp_path / "s"
    rc, out, err = curate(capsys, "ingest", "laclip", pairs, "--source", "lc", "--store", store)
    # every record rejected, nothing added: a failure a script sees (issue 16), rejects kept
    assert rc == 3 and "read 48 rows: 0 added, 0 already present, 48 rejected" in out
    assert "original not in store: 48" in out
    line = one_error_line(err)
    assert line.startswith(f"error: nothing was added from {pairs}: every one of its 48 records was rejected")
    assert line.endswith("or pass -o create=true to make a sample of each original")  # the way out, named
    rc, out, _ = curate(capsys, "ingest", "laclip", pairs, "--source", "lc", "-o", "create=true", "--store", store)
    assert rc == 0 and "46 added, 0 already present, 0 rejected; 94 captions added (raw: 46, rewrite: 48)" in out


@pytest.mark.parametrize("argv, code, message", [
    (["ingest", "parquet", "{laion}"], 2, "unknown ingest format 'parquet'; valid formats: table, img2dataset"),
    (["ingest", "capsfusion", "{laion}", "--url-col", "url"], 2,
     "--url-col apply to the table format only; use -o KEY=VALUE for capsfusion options"),
    (["ingest", "coco", "{laion}", "--preset", "laion", "--no-header"], 2, "--preset, --header apply to the table"),
    (["ingest", "table", "{laion}", "-o", "max_caption_chars"], 2, "--option 'max_caption_chars' should be KEY=VALUE"),
    (["ingest", "table", "{laion}", "-o", "maxchars=3"], 2,
     "ingest format 'table' has no option(s) maxchars; valid options: caption_col"),
    (["ingest", "table", "{laion}", "--preset", "laoin"], 2, "unknown preset 'laoin'; choose one of laion"),
    (["ingest", "table", "{missing}", "--preset", "laion"], 3, "does not exist"),
    (["ingest", "table", "{laion}", "--url-col", "link"], 3,
     "column 'link' (the url column) is missing; the input has URL, TEXT"),
])
def test_ingest_errors_are_one_line(tmp_path, capsys, laion_file, argv, code, message):
    store = tmp_path / "s"
    Store.init(store).close()
    argv = [a.format(laion=laion_file, missing=tmp_path / "missing.parquet") for a in argv]
    rc, out, err = curate(capsys, *argv, "--store", store)
    line = one_error_line(err)
    assert rc == code and message in line, line
    assert out == ""
    assert counts(store)["samples"] == 0 and counts(store)["runs"] == 0


def test_failed_ingest_does_not_create_a_store(tmp_path, capsys, laion_file):
    rc, _, err = curate(capsys, "ingest", "table", tmp_path / "typo.parquet", "--store", tmp_path / "a")
    assert rc == 3 and "does not exist" in one_error_line(err)
    rc, _, err = curate(capsys, "ingest", "table", laion_file, "-o", "bogus=1", "--store", tmp_path / "b")
    assert rc == 2 and "no option(s) bogus" in one_error_line(err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- sql -------------------------------------------------------------------------------

def test_sql_table_format(laion_store, capsys):
    rc, out, err = curate(capsys, "sql", "SELECT source, count(*) AS n, count(DISTINCT url) AS urls "
                                         "FROM samples GROUP BY source", "--store", laion_store)
    assert rc == 0, err
    header = next(line for line in out.splitlines() if "source" in line)
    assert "n" in header and "urls" in header
    row = next(line for line in out.splitlines() if "laion" in line)
    assert row.count(str(LAION_URLS)) == 2
    assert err == ""


def test_sql_table_format_says_when_rows_are_cut(laion_store, capsys):
    rc, out, err = curate(capsys, "sql", "SELECT url FROM samples", "--max-rows", "5", "--store", laion_store)
    assert rc == 0
    assert "(9,999 rows; showing at most 5, use --max-rows or --out)" in err
    assert sum("http" in line for line in out.splitlines()) <= 5


def test_sql_csv_format(laion_store, capsys, laion_rows):
    rc, out, err = curate(capsys, "sql", "SELECT s.url, c.text FROM samples s JOIN captions c USING (uid) "
                                         "ORDER BY s.url LIMIT 200", "--format", "csv", "--store", laion_store)
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    expected = sorted((r["URL"], r["TEXT"]) for r in laion_rows)[:200]
    assert [(r["url"], r["text"]) for r in rows] == expected


def test_sql_json_format(laion_store, capsys, laion_rows):
    rc, out, err = curate(capsys, "sql", "SELECT count(*) AS n, count(DISTINCT url) AS urls, "
                                         "max(length(text)) AS longest FROM samples JOIN captions USING (uid)",
                          "-f", "json", "--store", laion_store)
    assert rc == 0, err
    assert json.loads(out) == [{"n": LAION_URLS, "urls": LAION_URLS,
                                "longest": max(len(r["TEXT"]) for r in laion_rows)}]


def test_sql_json_numbers_stay_numbers(laion_store, capsys, laion_rows):
    texts = collections.Counter(r["TEXT"] for r in laion_rows)
    rc, out, err = curate(capsys, "sql", "-q", "captions.duplicate_summary", "-f", "json", "--store", laion_store)
    assert rc == 0, err
    assert json.loads(out) == [{
        "variant": "raw", "captions": LAION_URLS, "distinct_texts": len(texts),
        "duplicated_texts": sum(n > 1 for n in texts.values()),
        "rows_in_duplicate_groups": sum(n for n in texts.values() if n > 1),
        "duplicate_rate": round(1 - len(texts) / LAION_URLS, 4)}]


def test_sql_json_format_writes_uuids_and_lists(laion_store, capsys):
    rc, out, _ = curate(capsys, "sql", "SELECT uid, [1, 2] AS xs FROM samples ORDER BY uid LIMIT 2", "-f", "json",
                        "--store", laion_store)
    assert rc == 0
    got = json.loads(out)
    assert [len(r["uid"]) for r in got] == [36, 36] and got[0]["xs"] == [1, 2]


def test_sql_parquet_out(laion_store, capsys, tmp_path, laion_rows):
    out_file = tmp_path / "deep" / "urls.parquet"
    rc, out, err = curate(capsys, "sql", "SELECT uid::VARCHAR AS uid, url FROM samples", "--format", "parquet",
                          "--out", out_file, "--store", laion_store)
    assert rc == 0 and out == "" and f"rows to {out_file}" in err
    table = pq.read_table(out_file)
    assert table.column_names == ["uid", "url"]
    assert sorted(table.column("url").to_pylist()) == sorted(r["URL"] for r in laion_rows)


def test_sql_parquet_needs_out(laion_store, capsys):
    rc, _, err = curate(capsys, "sql", "SELECT 1", "--format", "parquet", "--store", laion_store)
    assert rc == 2 and "--format parquet needs --out FILE" in one_error_line(err)


def test_sql_out_format_from_suffix(laion_store, capsys, tmp_path):
    out_file = tmp_path / "sources.csv"
    rc, out, err = curate(capsys, "sql", "SELECT source, count(*) AS n FROM samples GROUP BY source",
                          "--out", out_file, "--store", laion_store)
    assert rc == 0 and out == ""
    assert list(csv.DictReader(out_file.open(encoding="utf-8"))) == [{"source": "laion", "n": str(LAION_URLS)}]
    json_file = tmp_path / "sources.json"
    assert curate(capsys, "sql", "SELECT count(*) AS n FROM samples", "--out", json_file,
                  "--store", laion_store)[0] == 0
    assert json.loads(json_file.read_text("utf-8")) == [{"n": LAION_URLS}]
    rc, _, err = curate(capsys, "sql", "SELECT 1", "--out", tmp_path / "result.txt", "--store", laion_store)
    assert rc == 2 and "cannot tell the output format of result.txt; pass --format" in one_error_line(err)
    assert not (tmp_path / "result.txt").exists()


def test_named_query_counts(laion_store, capsys):
    rc, out, err = curate(capsys, "sql", "--query", "captions.counts", "-f", "json", "--store", laion_store)
    assert rc == 0, err
    assert json.loads(out) == [{"source": "laion", "variant": "raw", "samples": LAION_URLS, "captions": LAION_URLS,
                                "samples_with_variant": LAION_URLS, "coverage": 1.0}]


def test_named_query_with_a_parameter(laion_store, capsys, laion_rows):
    texts = collections.Counter(r["TEXT"] for r in laion_rows)
    expected = sorted((-n, t) for t, n in texts.items() if n > 1)[:100]
    assert expected and expected[0] == (-10, "Patent Drawing")
    rc, out, err = curate(capsys, "sql", "--query", "captions.exact_duplicates", "--param", "variant=raw",
                          "-f", "json", "--store", laion_store)
    assert rc == 0, err
    got = json.loads(out)
    assert [(-r["n"], r["text"]) for r in got] == expected
    assert all(r["samples"] == r["n"] and r["sources"] == ["laion"] for r in got)
    rc, out, _ = curate(capsys, "sql", "-q", "captions.exact_duplicates", "-p", "variant=raw", "--store", laion_store)
    assert rc == 0 and "Patent Drawing" in out


def test_named_query_missing_parameter(laion_store, capsys):
    rc, out, err = curate(capsys, "sql", "--query", "captions.exact_duplicates", "--store", laion_store)
    line = one_error_line(err)
    assert rc == 6 and out == ""
    assert "captions.exact_duplicates needs parameter(s) variant (--param NAME=VALUE)" in line
    rc, _, err = curate(capsys, "sql", "-q", "captions.counts", "-p", "variant=raw", "--store", laion_store)
    assert rc == 6 and "takes no parameters; got unknown variant" in one_error_line(err)


def test_unknown_named_query(laion_store, capsys):
    rc, _, err = curate(capsys, "sql", "--query", "captions.nope", "--store", laion_store)
    assert rc == 6 and "unknown named query 'captions.nope'; `curate sql --list`" in one_error_line(err)
    rc, _, err = curate(capsys, "sql", "--query", "counts", "--store", laion_store)
    assert rc == 6 and "did you mean captions.counts?" in one_error_line(err)


def test_sql_needs_exactly_one_of_query_and_named(laion_store, capsys):
    for argv in (["sql"], ["sql", "SELECT 1", "-q", "captions.counts"]):
        rc, _, err = curate(capsys, *argv, "--store", laion_store)
        assert rc == 2 and "give either a QUERY or --query DOMAIN.NAME" in one_error_line(err)


def test_sql_list_shows_every_named_query_with_its_doc(capsys):
    rc, out, _ = curate(capsys, "sql", "--list")
    assert rc == 0
    lines = out.splitlines()
    queries = named_queries()
    assert len(queries) >= 10
    for q in queries.values():
        head = next(i for i, line in enumerate(lines) if line.split(" ")[0] == q.qualname)
        for p in q.params:
            assert f"--param {p}=..." in lines[head]
        doc = q.doc.splitlines()
        assert doc, f"{q.qualname} has no documentation"
        assert lines[head + 1: head + 1 + len(doc)] == [f"    {d}" for d in doc]
    assert "captions.exact_duplicates --param variant=..." in lines


def test_sql_syntax_error_is_one_line(laion_store, capsys):
    rc, out, err = curate(capsys, "sql", "SELEC url FROM samples", "--store", laion_store)
    line = one_error_line(err)
    assert rc == 6 and out == ""
    assert "syntax error" in line.lower() and "SELEC" in line


def test_sql_unknown_table_is_one_line(laion_store, capsys):
    rc, _, err = curate(capsys, "sql", "SELECT * FROM sample", "--store", laion_store)
    line = one_error_line(err)
    assert rc == 6 and "sample" in line


def test_sql_is_read_only(laion_store, capsys):
    rc, _, err = curate(capsys, "sql", "DELETE FROM samples", "--store", laion_store)
    line = one_error_line(err)
    assert rc == 6 and "read-only" in line
    assert counts(laion_store)["samples"] == LAION_URLS


def test_sql_on_a_missing_store_does_not_create_it(tmp_path, capsys):
    rc, _, err = curate(capsys, "sql", "SELECT 1", "--store", tmp_path / "nowhere")
    assert rc == 4 and "no store at" in one_error_line(err)
    assert not (tmp_path / "nowhere").exists()


def test_sql_runtime_error_is_one_line(laion_store, capsys):
    rc, out, err = curate(capsys, "sql", "SELECT CAST(text AS INTEGER) FROM captions", "--store", laion_store)
    line = one_error_line(err)
    assert rc == 6 and "Conversion Error" in line and out == ""


def test_sql_csv_to_stdout_with_a_list_column(laion_store, capsys, tmp_path):
    argv = ["sql", "-q", "captions.exact_duplicates", "-p", "variant=raw", "--store", laion_store]
    assert curate(capsys, *argv, "--out", tmp_path / "dups.csv")[0] == 0
    from_file = list(csv.DictReader((tmp_path / "dups.csv").open(encoding="utf-8")))
    assert from_file[0]["text"] == "Patent Drawing"
    rc, out, err = curate(capsys, *argv, "--format", "csv")
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["text"], r["n"]) for r in rows] == [(r["text"], r["n"]) for r in from_file]


# -- run, stages, check ----------------------------------------------------------------

def write_pipeline(folder: Path, laion_file: Path) -> Path:
    """A pipeline beside a link to the LAION file, named by a relative path."""
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "laion.parquet").symlink_to(laion_file)
    (folder / "pipelines").mkdir()
    p = folder / "pipelines" / "laion.toml"
    p.write_text("""
[pipeline]
name = "laion-stats"
description = "LAION then caption statistics"

[[ingest]]
format = "table"
path = "../data/laion.parquet"
source = "laion"
preset = "laion"

[[stage]]
name = "text.caption_stats.v1"
batch_size = 4000
""", encoding="utf-8")
    return p


def test_run_print_config_resolves_and_does_no_work(tmp_path, capsys, laion_file, monkeypatch):
    pipeline = write_pipeline(tmp_path / "project", laion_file)
    monkeypatch.chdir(tmp_path)  # not the pipeline's folder
    store = tmp_path / "store"
    rc, out, err = curate(capsys, "run", pipeline, "--print-config", "--store", store)
    assert rc == 0, err
    cfg = json.loads(out)
    assert cfg["pipeline"] == {"name": "laion-stats", "description": "LAION then caption statistics"}
    [step] = cfg["ingest"]
    # the path is joined to the pipeline's folder (not normalised: ".../pipelines/../data/...")
    assert Path(os.path.normpath(step["path"])) == tmp_path / "project" / "data" / "laion.parquet"
    assert (step["format"], step["source"], step["preset"]) == ("table", "laion", "laion")
    [stage] = cfg["stage"]
    assert stage == {"name": "text.caption_stats.v1", "config_hash": CaptionStats().config_hash(),
                     "batch_size": 4000, "workers": 1, "limit": None, "executor": "local", "config": {}}
    assert not store.exists()


def test_run_print_config_leaves_an_existing_store_alone(tmp_path, capsys, laion_file, laion_store):
    pipeline = write_pipeline(tmp_path, laion_file)
    with Store.open(laion_store, read_only=True) as s:
        before = table_snapshot(s)
    assert curate(capsys, "run", pipeline, "--print-config", "--store", laion_store)[0] == 0
    with Store.open(laion_store, read_only=True) as s:
        assert table_snapshot(s) == before


def test_run_ingests_and_scores_then_a_second_run_adds_nothing(tmp_path, capsys, laion_file, laion_rows,
                                                               monkeypatch):
    pipeline = write_pipeline(tmp_path / "project", laion_file)
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    rc, out, err = curate(capsys, "run", pipeline, "--store", store, "--no-progress")
    assert rc == 0, err
    ingest_line, stage_line = out.strip().splitlines()
    assert "9,999 added, 0 already present, 1 rejected; 9,999 captions added" in ingest_line
    assert stage_line.startswith("text.caption_stats.v1: 9,999 rows in, 9,999 rows out (9,999 were pending)")
    with Store.open(store, read_only=True) as s:
        words = dict(s.execute("SELECT c.text, st.words FROM captions c JOIN caption_stats st "
                               "USING (caption_id)").fetchall())
        first = s.summary()
    assert words == {r["TEXT"]: len(r["TEXT"].split()) for r in laion_rows}

    rc, out, err = curate(capsys, "run", pipeline, "--store", store, "--no-progress")
    assert rc == 0, err
    ingest_line, stage_line = out.strip().splitlines()
    assert "0 added, 9,999 already present, 1 rejected; 0 captions added" in ingest_line
    assert stage_line.startswith("text.caption_stats.v1: 0 rows in, 0 rows out (0 were pending)")
    second = counts(store)
    for table in ("samples", "captions", "caption_stats"):
        assert second[table] == first[table]
    assert second["runs"] == first["runs"] + 2


def test_run_of_a_missing_pipeline_file(tmp_path, capsys):
    rc, _, err = curate(capsys, "run", tmp_path / "nope.toml", "--store", tmp_path / "s")
    assert rc == 2 and "pipeline file" in one_error_line(err) and "does not exist" in err
    assert not (tmp_path / "s").exists()


def test_stages_lists_the_registry(capsys):
    rc, out, _ = curate(capsys, "stages")
    assert rc == 0
    line = next(line for line in out.splitlines() if line.startswith("text.caption_stats.v1 "))
    assert "captions.caption_id -> caption_stats(words, chars)" in line
    assert "Caption statistics: word and character counts per caption." in line


def test_check_passes_then_fails_on_a_duplicate_sample(tmp_path, capsys, laion_file):
    store = tmp_path / "s"
    assert curate(capsys, "ingest", "table", laion_file, "--preset", "laion", "--store", store)[0] == 0
    rc, out, err = curate(capsys, "check", "--store", store)
    assert rc == 0 and err == ""
    checks = [q.qualname for q in named_queries().values() if q.domain == "checks"]
    assert out.splitlines() == [f"ok   {c}" for c in checks]

    con = duckdb.connect(str(store / CATALOG))
    uid = con.execute("SELECT uid FROM samples ORDER BY url LIMIT 1").fetchall()[0][0]
    con.execute("INSERT INTO samples SELECT * FROM samples WHERE uid = ?", [uid])
    con.close()

    rc, out, err = curate(capsys, "check", "--store", store)
    assert rc == 1
    assert "FAIL checks.duplicate_uids (1 rows)" in out.splitlines()
    assert "ok   checks.orphan_captions" in out.splitlines()
    assert one_error_line(err) == "error: 1 invariant(s) violated"


# -- version, help ---------------------------------------------------------------------

def test_version(capsys):
    rc, out, _ = curate(capsys, "--version")
    assert rc == 0 and out.strip() == f"curate, version {__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["sql", "--help"], ["run", "--help"], ["ingest", "--help"]])
def test_help(capsys, argv):
    rc, out, _ = curate(capsys, *argv)
    assert rc == 0 and "Usage: curate" in out


def test_ingest_help_lists_every_registered_format(capsys):
    """The formats in `curate ingest --help` come from the registry, so none goes missing."""
    from curate.cli.core import format_description
    from curate.ingest import FORMATS

    rc, out, _ = curate(capsys, "ingest", "--help")
    assert rc == 0
    for fmt in FORMATS:
        assert fmt in out
    section = out.split("\nFormats:\n", 1)[1].split("\n\n", 1)[0]
    listed = [line.split()[0] for line in section.splitlines() if not line.startswith("   ")]
    assert listed == list(FORMATS)
    for fmt in FORMATS:
        description = format_description(fmt)
        assert description and not description.startswith("(reader not importable")
        assert description.split()[0] in section


def test_usage_error_exits_2(capsys, tmp_path):
    """Usage errors are click's: several lines ending in ``Error: ...`` (not the one-line ``error:``)."""
    rc, out, err = curate(capsys, "sql", "SELECT 1", "--format", "xml", "--store", tmp_path)
    assert rc == 2 and out == "" and "Traceback" not in err
    assert "Error: Invalid value for '--format' / '-f': 'xml' is not one of 'table', 'csv', 'json', 'parquet'" in err


def test_capsfusion_mean_words_per_variant_through_curate_sql(tmp_path, capsys):
    """The foundation's 'done when': the CapsFusion example ingests as 10,000 samples and
    30,000 captions, and `curate sql -q captions.lengths` reports each variant's mean
    words, equal to str.split() over the file in Python. Before the caption statistics
    stage runs, the query says which table is missing and where it comes from."""
    example = Path(__file__).resolve().parent.parent / "examples" / "data" / "capsfusion" / "example_data.json"
    s = str(tmp_path / "s")
    assert curate(capsys, "ingest", "capsfusion", str(example), "--store", s)[0] == 0
    code, out, err = curate(capsys, "sql", "-q", "captions.lengths", "--store", s)
    assert code != 0
    assert one_error_line(err).startswith("error: named query captions.lengths reads table caption_stats, which this "
                                          "store does not have yet; Caption length per source and variant")
    assert "text.caption_stats.v1" in err
    with Store.open(Path(s)) as st:
        from curate.runner import RunOptions, run_stage

        run_stage(st, CaptionStats(), RunOptions())
    code, out, err = curate(capsys, "sql", "-q", "captions.lengths", "--format", "json", "--store", s)
    assert code == 0, err
    rows = {r["variant"]: r for r in json.loads(out)}
    records = json.loads(example.read_text(encoding="utf-8"))
    for key, variant in (("laion_2b", "raw"), ("laion_coco", "synthetic"), ("capsfuion_official", "fused")):
        words = [len(r[key].split()) for r in records]
        chars = [len(r[key]) for r in records]
        assert rows[variant]["captions"] == 10_000
        assert rows[variant]["mean_words"] == round(sum(words) / len(words), 2)
        assert rows[variant]["max_words"] == max(words)
        assert rows[variant]["mean_chars"] == round(sum(chars) / len(chars), 1)
        assert rows[variant]["max_chars"] == max(chars)
    assert (rows["synthetic"]["mean_words"], rows["fused"]["mean_words"]) == (8.96, 22.75)  # PROVENANCE.md


def test_an_ingest_whose_every_record_is_rejected_fails_and_keeps_the_rejects(capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("url,caption\nhttp://a.example/1.jpg,\nhttp://a.example/2.jpg,   \n", encoding="utf-8")
    store = tmp_path / "store"
    rc, out, err = curate(capsys, "ingest", "table", bad, "--source", "bad", "--store", store)
    assert rc == 3, (out, err)
    assert "read 2 rows: 0 added, 0 already present, 2 rejected; 0 captions added" in out
    assert one_error_line(err) == (f"error: nothing was added from {bad}: every one of its 2 records was rejected "
                                   "(4 rejects); see `curate sql --query store.rejects`")
    with Store.open(store, read_only=True) as s:
        assert s.count("samples") == 0
        # each record: its caption's reason, and the record's own (no valid caption)
        assert sorted(s.execute("SELECT reason FROM rejects").fetchall()) == [
            ("empty caption",), ("no valid caption",), ("no valid caption",), ("null caption",)]
    # one good record among the bad is a success
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("url,caption\nhttp://b.example/1.jpg,\nhttp://b.example/2.jpg,a red car\n", encoding="utf-8")
    rc, out, err = curate(capsys, "ingest", "table", mixed, "--source", "mixed", "--store", store)
    assert rc == 0 and "read 2 rows: 1 added, 0 already present, 1 rejected; 1 captions added" in out, (out, err)
