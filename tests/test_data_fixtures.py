"""The test-data fixtures: the copies in ``examples/data`` that stand in for
``../shared/data`` are byte-identical to it, and a file is found, skipped or failed on
as ``tests/conftest.py`` says."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests import conftest
from tests.conftest import BUNDLED, EXAMPLES_DATA, resolve_shared


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("folder", sorted(BUNDLED))
def test_bundled_copies_equal_the_shared_files(folder, shared_data):
    """Every file of the shared folder (its PROVENANCE.md aside, which a copy may annotate)
    is in the bundled folder with the same bytes, so falling back to it changes nothing."""
    shared = shared_data / folder
    bundled = EXAMPLES_DATA / BUNDLED[folder]
    files = sorted(p.relative_to(shared) for p in shared.rglob("*") if p.is_file() and p.name != "PROVENANCE.md")
    assert files, f"{shared} holds no data files"
    for rel in files:
        assert (bundled / rel).is_file(), f"{bundled / rel} is missing: {shared / rel} is not bundled"
        assert _sha256(bundled / rel) == _sha256(shared / rel), f"{bundled / rel} differs from {shared / rel}"
    assert (bundled / "PROVENANCE.md").is_file()


def test_absent_shared_data_falls_back_to_the_bundled_copy(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "absent")
    assert resolve_shared("cc3m-val/Validation_GCC-1.1.0-Validation.tsv") == (
        EXAMPLES_DATA / "cc3m" / "Validation_GCC-1.1.0-Validation.tsv")
    assert resolve_shared("gbc-wiki") == EXAMPLES_DATA / "gbc"
    assert (resolve_shared("gbc-wiki") / "wiki_gbc_graphs_with_clip.jsonl").is_file()


def test_absent_shared_data_skips_what_is_not_bundled(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "absent")
    monkeypatch.delenv("CURATE_REQUIRE_SHARED_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"needs \.\./shared/data/coco-captions-val2017 "):
        resolve_shared("coco-captions-val2017/captions_val2017.json")
    monkeypatch.setenv("CURATE_REQUIRE_SHARED_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="CURATE_REQUIRE_SHARED_DATA is set"):
        resolve_shared("nozeroshot-frequencies")


def test_a_file_missing_from_present_shared_data_fails(monkeypatch, tmp_path):
    (tmp_path / "data" / "cc3m-val").mkdir(parents=True)
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "data")
    with pytest.raises(pytest.fail.Exception, match="is missing although"):
        resolve_shared("cc3m-val/Validation_GCC-1.1.0-Validation.tsv")
    with pytest.raises(pytest.fail.Exception, match="is missing although"):
        resolve_shared("coco-captions-val2017/captions_val2017.json")  # present folder: no skip, bundled or not
    (tmp_path / "data" / "cc3m-val" / "x.tsv").write_text("a\tb\n")
    assert resolve_shared("cc3m-val/x.tsv") == tmp_path / "data" / "cc3m-val" / "x.tsv"
