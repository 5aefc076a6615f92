"""Shared fixtures. Tests use real data from ``../shared/data`` (present beside every
checkout and in CI) or the small copies in ``examples/data``; stores are real DuckDB
files in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from curate import Store

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))
EXAMPLES_DATA = REPO / "examples" / "data"
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}; clone with ../shared beside the repo "
                    "or set CURATE_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def laion_file(shared_data: Path) -> Path:
    """Real LAION-400M alt-text: 10,000 rows (URL, TEXT), one URL twice."""
    return shared_data / "laion400m-img2dataset-10k" / "test_10000.parquet"


@pytest.fixture(scope="session")
def cc3m_file(shared_data: Path) -> Path:
    """Real CC3M validation TSV: 15,833 rows, caption TAB url, no header."""
    return shared_data / "cc3m-val" / "Validation_GCC-1.1.0-Validation.tsv"


@pytest.fixture
def store(tmp_path: Path):
    s = Store.init(tmp_path / "store")
    yield s
    s.close()


def table_snapshot(store: Store) -> dict[str, list]:
    """Every row of every table, sorted: compare before/after to prove nothing changed."""
    out = {}
    for t in store.tables():
        rows = store.con.execute(f'SELECT * FROM "{t}"').fetchall()
        out[t] = sorted(rows, key=repr)
    return out
