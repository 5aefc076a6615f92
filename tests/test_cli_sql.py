"""`curate sql` on results whose column names repeat (``SELECT 1 AS a, 2 AS a``), in every
output format; through ``curate.cli.main`` in-process, on a real store."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from curate import Store
from tests.test_cli import curate as cli

QUERY = "SELECT 1 AS a, 2 AS a, 3 AS a_1, 4 AS A, 'x' AS b"
#: the first of a name keeps it; a repeat takes the first name_<k> the result does not
#: already have (a_1 is the query's own, so the second a is a_2); DuckDB's names are
#: case-insensitive, so A repeats a
NAMES = ["a", "a_2", "a_1", "A_3", "b"]
NOTE = "note: repeated column names renamed: a -> a_2, A -> A_3"


@pytest.fixture()
def store(tmp_path):
    with Store.init(tmp_path / "s"):
        pass
    return tmp_path / "s"


def test_repeated_names_in_the_table_format(store, capsys):
    """Before: polars raised DuplicateError and the command ended in a traceback."""
    rc, out, err = cli(capsys, "sql", "SELECT 1 AS a, 2 AS a", "--store", store)
    assert rc == 0, err
    header = [c.strip() for c in out.splitlines()[1].strip("│").split("┆")]
    values = [c.strip() for c in out.splitlines()[3].strip("│").split("┆")]
    assert (header, values) == (["a", "a_1"], ["1", "2"])
    assert err.strip() == "note: repeated column names renamed: a -> a_1"
    rc, out, err = cli(capsys, "sql", QUERY, "--store", store)
    assert rc == 0 and [c.strip() for c in out.splitlines()[1].strip("│").split("┆")] == NAMES
    assert err.strip() == NOTE


def test_repeated_names_in_csv_json_and_parquet(store, capsys, tmp_path):
    rc, out, err = cli(capsys, "sql", QUERY, "-f", "csv", "--store", store)
    assert rc == 0 and out.splitlines() == [",".join(NAMES), "1,2,3,4,x"] and err.strip() == NOTE
    rc, out, err = cli(capsys, "sql", QUERY, "-f", "json", "--store", store)
    assert rc == 0 and json.loads(out) == [dict(zip(NAMES, [1, 2, 3, 4, "x"]))]
    for fmt in ("parquet", "csv", "json"):
        path = tmp_path / f"out.{fmt}"
        rc, _, err = cli(capsys, "sql", QUERY, "--out", path, "--store", store)
        assert rc == 0, err
        assert err.splitlines() == [NOTE, f"wrote 1 rows to {path}"]
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == [dict(zip(NAMES, [1, 2, 3, 4, "x"]))]
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == ",".join(NAMES)
    assert json.loads((tmp_path / "out.json").read_text()) == [dict(zip(NAMES, [1, 2, 3, 4, "x"]))]


def test_unique_names_are_left_alone(store, capsys):
    rc, out, err = cli(capsys, "sql", "SELECT 1 AS a, 2 AS b", "-f", "csv", "--store", store)
    assert rc == 0 and out.splitlines() == ["a,b", "1,2"] and err == ""
