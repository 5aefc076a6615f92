"""Shared fixtures. Tests use real data from ``../shared/data`` (present beside every
checkout and in CI; ``$CURATE_SHARED_DATA`` points elsewhere) and, where that folder is
absent, the byte-identical copies bundled in ``examples/data``; stores are real DuckDB
files in a temporary directory.

How a data file is found (:func:`resolve_shared`, fixture ``shared_file``):

* ``../shared/data`` present: the file is taken from there, and a file missing from it
  is a test *failure* (CI always has the folder, so nothing there may vanish quietly).
* ``../shared/data`` absent: a folder listed in :data:`BUNDLED` is read from its copy
  in ``examples/data`` (``tests/test_data_fixtures.py`` proves the copies identical
  whenever both exist); anything else *skips* the test, naming the missing folder.
  ``CURATE_REQUIRE_SHARED_DATA=1`` turns those skips into failures.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from curate import Store

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("CURATE_SHARED_DATA") or REPO.parent / "shared" / "data")
EXAMPLES_DATA = REPO / "examples" / "data"
TEST_DATA = Path(__file__).resolve().parent / "data"

#: Folders of ``../shared/data`` whose every file is bundled, byte for byte, in the
#: ``examples/data`` folder named here (checked by ``tests/test_data_fixtures.py``).
#: Not bundled (too large): coco-captions-val2017 (3.8 MB; examples/data/coco holds only
#: a 1,000-image subset), nozeroshot-frequencies (7.3 MB), ner-gold (2.8 MB).
BUNDLED = {
    "laion400m-img2dataset-10k": "laion400m",
    "cc3m-val": "cc3m",
    "capsfusion-examples": "capsfusion",
    "gbc-wiki": "gbc",
    "laclip-rewrites": "laclip",
    "classnames": "classnames",
}


def shared_present() -> bool:
    return SHARED_DATA.is_dir()


def resolve_shared(rel: str) -> Path:
    """The path of ``rel`` (a file or folder under ``../shared/data``, e.g.
    ``"cc3m-val/Validation_GCC-1.1.0-Validation.tsv"``): from ``../shared/data`` when that
    folder exists (failing if ``rel`` is missing there), else from its bundled copy, else
    the test is skipped."""
    rel = rel.strip("/")
    if shared_present():
        path = SHARED_DATA / rel
        if not path.exists():
            pytest.fail(f"{path} is missing although {SHARED_DATA} exists; the shared data is incomplete")
        return path
    folder, _, rest = rel.partition("/")
    if folder in BUNDLED:
        path = EXAMPLES_DATA / BUNDLED[folder] / rest
        if not path.exists():
            pytest.fail(f"{SHARED_DATA} is absent and the bundled copy {path} is missing")
        return path
    _unavailable(f"../shared/data/{folder} (not bundled in examples/data)")


def _unavailable(what: str):
    reason = (f"needs {what}; {SHARED_DATA} is absent "
              "(clone ../shared beside the repo or set CURATE_SHARED_DATA)")
    if os.environ.get("CURATE_REQUIRE_SHARED_DATA", "") not in ("", "0"):
        pytest.fail(reason + "; CURATE_REQUIRE_SHARED_DATA is set")
    pytest.skip(reason)


# -- disk: a passed test's tmp_path is removed when the test ends ------------------------
# The suite writes about 2.7 GB of stores and inputs (a 360k-row ingest killed mid-way,
# large CSV/JSONL streams, manifests); kept until the session ends, and pytest keeping
# three sessions' folders, that filled a CI disk once. A failed test keeps its folder to
# look at (and pyproject's tmp_path_retention_policy = "failed" keeps only those).
@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_curate_report_{report.when}", report)


@pytest.fixture(autouse=True)
def _free_passed_tmp_path(request):
    # taken here, so tmp_path is torn down after this fixture, not before
    path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    report = getattr(request.node, "_curate_report_call", None)
    if path is not None and report is not None and report.passed:
        shutil.rmtree(path, ignore_errors=True)


def pytest_report_header(config):
    if shared_present():
        return f"curate test data: {SHARED_DATA}"
    return (f"curate test data: {SHARED_DATA} absent; bundled copies from {EXAMPLES_DATA}, "
            "tests needing anything else are skipped")


@pytest.fixture(scope="session")
def shared_file() -> Callable[[str], Path]:
    """``shared_file("folder/name")``: see :func:`resolve_shared` (skips when not available)."""
    return resolve_shared


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder itself; skips when it is absent. Prefer ``shared_file``
    (or the named fixtures below), which fall back to the bundled copies."""
    if not shared_present():
        _unavailable("../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def laion_file() -> Path:
    """Real LAION-400M alt-text: 10,000 rows (URL, TEXT), one URL twice."""
    return resolve_shared("laion400m-img2dataset-10k/test_10000.parquet")


@pytest.fixture(scope="session")
def cc3m_file() -> Path:
    """Real CC3M validation TSV: 15,833 rows, caption TAB url, no header."""
    return resolve_shared("cc3m-val/Validation_GCC-1.1.0-Validation.tsv")


@pytest.fixture(scope="session")
def capsfusion_file() -> Path:
    """Real CapsFusion example triples: a JSON array of 10,000 objects."""
    return resolve_shared("capsfusion-examples/example_data.json")


@pytest.fixture(scope="session")
def laclip_dir() -> Path:
    """LaCLIP's source captions and in-context rewrite pairs (48 pairs, 18 COCO groups)."""
    return resolve_shared("laclip-rewrites")


@pytest.fixture(scope="session")
def gbc_dir() -> Path:
    """GBC graphs for 19 Wikimedia images, with and without CLIP scores."""
    return resolve_shared("gbc-wiki")


@pytest.fixture(scope="session")
def classnames_dir() -> Path:
    """clip_benchmark and SLIP class-name lists and templates."""
    return resolve_shared("classnames")


@pytest.fixture(scope="session")
def coco_val2017_file() -> Path:
    """The full COCO val2017 captions (5,000 images, 25,014 captions); not bundled."""
    return resolve_shared("coco-captions-val2017/captions_val2017.json")


@pytest.fixture(scope="session")
def nozeroshot_dir() -> Path:
    """The No-Zero-Shot paper's published concept counts (783 JSON tables); not bundled."""
    return resolve_shared("nozeroshot-frequencies")


@pytest.fixture
def store(tmp_path: Path):
    """A fresh, empty store (``Store.init``: a real DuckDB catalog with its folders) at
    ``tmp_path / "store"``, closed after the test. ``with store as s:`` closes it at the end
    of the block instead, as ``with Store.init(...) as s:`` did (closing twice is harmless).
    ``Store`` has no in-memory mode (it always opens ``<path>/catalog.duckdb`` and keeps
    vectors, manifests and DuckDB's temp folder beside it), so there is no ``:memory:`` variant."""
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


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A real llama-server (``tests/genserver.py``) on 127.0.0.1 serving a tiny random
    llama named ``tiny``, written for this session: 4 slots, 8192 tokens of context
    shared between them. Skips when the binary is not built (``make llama-server``);
    with ``CURATE_REQUIRE_SYSTEM_PACKAGES=1`` (CI, where set-up builds it) that fails."""
    from tests.genserver import find_llama_server, serve, write_tiny_gguf

    if find_llama_server() is None:
        reason = "llama-server not built: run make llama-server"
        if os.environ.get("CURATE_REQUIRE_SYSTEM_PACKAGES") == "1":
            pytest.fail(reason + "; CI requires it (CURATE_REQUIRE_SYSTEM_PACKAGES=1)")
        pytest.skip(reason)
    model = write_tiny_gguf(tmp_path_factory.mktemp("llama-server") / "tiny.gguf", seed=0)
    with serve(model, parallel=4, ctx=8192) as server:
        yield server


@pytest.fixture(scope="session")
def vlm_server(tmp_path_factory):
    """A real llama-server serving a tiny random vision-language model (``tests/genvision.py``:
    the tiny llama plus a LLaVA-style projector, ``--mmproj``) as ``tiny``, so chat requests
    may carry ``image_url`` parts; 4 slots, 8192 tokens. Skips or fails as ``llama_server``."""
    from tests.genserver import find_llama_server, serve
    from tests.genvision import write_tiny_vlm

    if find_llama_server() is None:
        reason = "llama-server not built: run make llama-server"
        if os.environ.get("CURATE_REQUIRE_SYSTEM_PACKAGES") == "1":
            pytest.fail(reason + "; CI requires it (CURATE_REQUIRE_SYSTEM_PACKAGES=1)")
        pytest.skip(reason)
    model, mmproj = write_tiny_vlm(tmp_path_factory.mktemp("vlm-server"), seed=0)
    with serve(model, parallel=4, ctx=8192, extra_args=["--mmproj", str(mmproj)]) as server:
        yield server
