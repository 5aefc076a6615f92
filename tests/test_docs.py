"""The docs (README.md plus docs/*.md, read as one text) document what the code offers;
the README stays short; every relative link resolves; the shipped pipelines validate.

Coverage is checked across all the pages together, so a fact has one home: the README
links to it instead of repeating it.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from curate import registry
from curate.cli import cli
from curate.ingest import FORMATS
from curate.pipeline import load_pipeline
from curate.sqlfiles import named_queries

REPO = Path(__file__).resolve().parent.parent
README_PATH = REPO / "README.md"
CLI_PATH = REPO / "docs" / "cli.md"
PAGES = [README_PATH, *sorted((REPO / "docs").glob("*.md"))]
DOCS = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
ARCH = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")

#: the README is the front page, not the manual (it was 41 KB and only grew)
README_MAX_BYTES = 12_000


def _commands(group: click.Group, prefix: tuple[str, ...] = ("curate",)):
    """(path, command) for every command and subcommand, groups included, recursively."""
    for name, cmd in sorted(group.commands.items()):
        path = (*prefix, name)
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)


COMMANDS = {" ".join(path): cmd for path, cmd in _commands(cli)}
LEAVES = sorted(name for name, cmd in COMMANDS.items() if not isinstance(cmd, click.Group))


def _named(text: str, name: str) -> bool:
    """``name`` occurs as a whole token: `curate concepts image` is not `image-count`,
    `concepts.text_counts` is not `concepts.text_counts_total`."""
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", text) is not None


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_cli_command_and_subcommand_is_documented(command):
    assert _named(DOCS, command), f"{command!r} is in neither README.md nor docs/*.md"


def _cli_table_commands() -> list[str]:
    """The command each row of docs/cli.md's command table names: the words of its first
    cell up to the first argument, option or placeholder."""
    found = []
    for line in CLI_PATH.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| `(curate [^`]*)` \|", line)
        if m:
            words = []
            for w in m.group(1).split():
                if not re.fullmatch(r"[a-z][a-z0-9-]*", w):
                    break
                words.append(w)
            found.append(" ".join(words))
    return found


@pytest.mark.parametrize("command", LEAVES)
def test_every_leaf_command_has_a_row_in_the_cli_page(command):
    assert command in _cli_table_commands(), f"docs/cli.md has no row for {command!r}"


def test_every_row_of_the_cli_page_is_a_real_command():
    rows = _cli_table_commands()
    assert rows, "docs/cli.md has no command table"
    assert not [r for r in rows if r not in COMMANDS], "docs/cli.md names commands the CLI lacks"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_ingest_format_is_documented(fmt):
    assert f"| `{fmt}` |" in DOCS


@pytest.mark.parametrize("qualname", sorted(q.qualname for q in named_queries().values()))
def test_every_named_query_is_documented(qualname):
    domain = qualname.split(".")[0]
    assert _named(DOCS, qualname) or f"`{domain}.*`" in DOCS, qualname


@pytest.mark.parametrize("stage", sorted(registry.STAGES))
def test_every_registered_stage_is_documented(stage):
    assert f"`{stage}`" in DOCS


# A registry of whole-corpus passes (dedup, similarity) may not exist yet; once it does,
# every pass it names must be documented too (docs/pipelines.md lists them).
@pytest.mark.parametrize("name", sorted(getattr(registry, "PASSES", {})))
def test_every_registered_pass_is_documented(name):
    assert f"`{name}`" in DOCS


def test_the_readme_stays_short():
    size = len(README_PATH.read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size:,} bytes; move detail into docs/"


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8")))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    slugs: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug, n = _slug(heading), 1
        while slug in slugs:
            slug, n = f"{_slug(heading)}-{n}", n + 1
        slugs.add(slug)
    return slugs


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):      # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(link)
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(link)
    assert not broken, f"{page.name}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_repository_path_named_in_code_exists(page):
    """`curate/ids.py`, `tests/test_ingest_kill.py`, `benchmarks/RESULTS.md`: a fact's
    source must still be there (templates such as `sql/<domain>/` are skipped)."""
    text = page.read_text(encoding="utf-8")
    named = re.findall(r"`((?:curate|tests|benchmarks|sql|pipelines|examples|docs|\.ci)/[\w./-]*)`", text)
    missing = sorted({p for p in named if not (REPO / p).exists()})
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


def test_every_docs_page_is_in_the_index():
    index = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    for page in sorted((REPO / "docs").glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not list {page.name}"


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


def test_the_mixing_attribute_table_is_the_declared_catalogue():
    """docs/mixing.md's attribute table is generated from the stages' and passes'
    declarations; regenerate it with `python -m curate.mix.attributes --write-docs`."""
    from curate.mix.attributes import markdown_table

    text = (REPO / "docs" / "mixing.md").read_text(encoding="utf-8")
    start, end = "<!-- attributes:start -->\n", "<!-- attributes:end -->"
    assert start in text and end in text
    assert text.split(start, 1)[1].split(end, 1)[0].strip() == markdown_table().strip()
