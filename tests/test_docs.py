"""The README documents what the code offers, and the shipped pipelines validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.cli import cli
from curate.ingest import FORMATS
from curate.pipeline import load_pipeline
from curate.sqlfiles import named_queries

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
ARCH = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_cli_command_is_in_the_readme(command):
    assert f"curate {command}" in README


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_ingest_format_is_in_the_readme(fmt):
    assert f"| `{fmt}` |" in README


def test_every_named_query_domain_is_in_the_readme():
    for q in named_queries().values():
        assert q.qualname in README or f"`{q.domain}.*`" in README, q.qualname


def test_every_module_and_sql_folder_is_in_architecture():
    for py in sorted((REPO / "curate").rglob("*.py")):
        rel = py.relative_to(REPO / "curate").as_posix()
        if rel.endswith("__init__.py") and not py.read_text(encoding="utf-8").strip():
            continue
        assert f"`{rel}`" in ARCH, rel
    for folder in sorted(p for p in (REPO / "sql").iterdir() if p.is_dir()):
        assert f"`{folder.name}/`" in ARCH, folder.name


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_pipelines_validate(path):
    pipe = load_pipeline(path)
    assert pipe.stages or pipe.ingests
