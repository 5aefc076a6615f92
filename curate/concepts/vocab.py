"""Concept vocabularies: bundled lists (``curate/concepts/data/``, see its PROVENANCE.md)
and user files (TXT, CSV/TSV, JSON), stored in the ``concepts`` table.

A vocabulary is a list of concepts, each with aliases (synonyms that count for it). In
the table every (vocabulary, concept, alias) is one row and the concept is listed as an
alias of itself, so ``SELECT alias ... WHERE concept = c`` is the full set of strings
that count for ``c``.

Names are stored as written after Unicode NFC and whitespace collapsing (tabs and runs of
spaces become one space; ends are trimmed). Case, hyphens, digits and multi-word names
are kept as written: how a hyphen or a phrase matches a caption is the text matcher's
rule, not the vocabulary's. Two concepts are the same when their names are equal after
case folding (``concept_key``); duplicates are merged (aliases united, first spelling
kept) and reported. Bad input is handled as follows, and each case is in the
:class:`LoadReport`:

- empty lines and ``#`` comment lines (TXT) are skipped;
- a concept made only of function words (``a``, ``the``, ``on``, ``of and``: the
  :data:`FUNCTION_WORDS` list) is skipped: it would match nearly every caption;
- a generic noun (``background``, ``image``, ``photo``: :data:`GENERIC_WORDS`) is kept
  and flagged, because some benchmark sets use it as a class (Caltech-101 has
  ``background``);
- a missing, unreadable, non-UTF-8 or empty file is an :class:`~curate.errors.InputError`
  naming the file (and the line, where there is one).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pyarrow as pa

from .. import names
from ..errors import ConfigError, InputError, StoreError
from ..runs import record_run
from ..store import Store

DATA = Path(__file__).resolve().parent / "data"
#: the ``runs.stage`` of a vocabulary import (the pass concepts.vocabulary.v1; stored without ``.v1``)
STAGE = "concepts.vocabulary"

#: Words that never make a concept on their own (articles, pronouns, prepositions,
#: conjunctions, auxiliaries). A concept whose every word is one of these is skipped.
FUNCTION_WORDS = frozenset(["a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every", "all", "both", "either", "neither", "no", "not", "of", "in", "on", "at", "to", "for", "with", "by", "from", "into", "onto", "over", "under", "about", "above", "below", "between", "through", "and", "or", "but", "nor", "so", "if", "than", "then", "as", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "has", "have", "had", "i", "me", "my", "you", "your", "he", "him", "his", "she", "her", "it", "its", "we", "us", "our", "they", "them", "their", "there", "here", "what", "which", "who", "whom", "whose"])

#: Generic nouns that are kept but flagged: they match a large share of captions
#: ("on a white background") without naming a visual concept.
GENERIC_WORDS = frozenset(["background", "image", "images", "photo", "photos", "photograph", "picture", "pictures", "pic", "thing", "things", "object", "objects", "item", "items", "stuff", "view", "side", "top", "front", "other", "something", "illustration", "stock"])

#: The 17 zero-shot classification sets of the paper (its downstream names).
NOZEROSHOT_CLASSIFICATION = (
    "birdsnap", "caltech101", "caltech256", "cifar10", "cifar100", "country211", "cub", "dtd", "eurosat",
    "fgvcaircraft", "flowers102", "food101", "imagenet", "oxfordpets", "stanfordcars", "sun397", "ucf101",
)

_WS = re.compile(r"\s+")
_WORDS = re.compile(r"[\s\-]+")

CONCEPTS_DDL = """CREATE TABLE IF NOT EXISTS concepts (
    vocabulary VARCHAR NOT NULL,
    concept    VARCHAR NOT NULL,
    alias      VARCHAR NOT NULL,
    added_run  BIGINT
)"""


# -- names ---------------------------------------------------------------------------
def normalize_name(text: str) -> str:
    """NFC, whitespace runs to one space, trimmed. Case and punctuation are kept."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def concept_key(text: str) -> str:
    """Identity of a concept or alias within a vocabulary: the normal name, case-folded."""
    return normalize_name(text).casefold()


def is_function_words(name: str) -> bool:
    words = [w for w in _WORDS.split(name.casefold()) if w]
    return bool(words) and all(w in FUNCTION_WORDS for w in words)


def is_generic(name: str) -> bool:
    return name.casefold() in GENERIC_WORDS


# -- data model ----------------------------------------------------------------------
@dataclass(frozen=True)
class Concept:
    name: str
    aliases: tuple[str, ...]  # the name itself first, then the other aliases in input order


@dataclass
class LoadReport:
    """What reading a vocabulary skipped, merged and flagged (positions are 1-based)."""

    source: str
    entries: int = 0
    empty: int = 0
    duplicates: list[str] = field(default_factory=list)   # "name (lines 3, 9)"
    function_words: list[str] = field(default_factory=list)
    generic: list[str] = field(default_factory=list)
    shared_aliases: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        out = []
        if self.empty:
            out.append(f"{self.empty:,} empty or comment lines skipped")
        if self.duplicates:
            out.append(f"{len(self.duplicates):,} duplicate concepts merged: {_few(self.duplicates)}")
        if self.function_words:
            out.append(f"{len(self.function_words):,} function-word concepts skipped: {_few(self.function_words)}")
        if self.generic:
            out.append(f"{len(self.generic):,} generic concepts kept (they match many captions): {_few(self.generic)}")
        if self.shared_aliases:
            out.append(f"{len(self.shared_aliases):,} aliases shared by several concepts (each counts for all): "
                       f"{_few(self.shared_aliases)}")
        return out


@dataclass
class Vocabulary:
    source: str
    concepts: list[Concept]
    report: LoadReport

    def rows(self) -> list[tuple[str, str]]:
        """(concept, alias) pairs, the concept itself included."""
        return [(c.name, a) for c in self.concepts for a in c.aliases]


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) if "(" not in x else x for x in items[:n])
    return shown + (f", ... ({len(items) - n:,} more)" if len(items) > n else "")


# -- building ------------------------------------------------------------------------
def build(raw: Iterable[tuple[str, list[str], str]], source: str, report: LoadReport | None = None) -> Vocabulary:
    """Turn (concept, aliases, position) entries into a :class:`Vocabulary` with the
    bad-input rules of this module applied. ``position`` is e.g. ``"line 4"``."""
    report = report or LoadReport(source)
    merged: dict[str, tuple[str, dict[str, str], list[str]]] = {}
    for concept, aliases, where in raw:
        report.entries += 1
        name = normalize_name(concept)
        if not name:
            if any(normalize_name(a) for a in aliases):
                raise InputError(f"{source}: {where}: aliases without a concept name")
            report.empty += 1
            continue
        if is_function_words(name):
            report.function_words.append(name)
            continue
        key = concept_key(name)
        if key not in merged:
            merged[key] = (name, {key: name}, [where])
            if is_generic(name):
                report.generic.append(name)
        else:
            merged[key][2].append(where)
        known = merged[key][1]
        for a in aliases:
            a = normalize_name(a)
            if a and concept_key(a) not in known:
                known[concept_key(a)] = a
    concepts = []
    owner: dict[str, list[str]] = {}
    for name, alias_map, wheres in merged.values():
        if len(wheres) > 1:
            report.duplicates.append(f"{name!r} ({', '.join(wheres)})")
        concepts.append(Concept(name, tuple(alias_map.values())))
        for k in alias_map:
            owner.setdefault(k, []).append(name)
    report.shared_aliases = [f"{k!r} ({', '.join(v)})" for k, v in owner.items() if len(v) > 1]
    return Vocabulary(source, concepts, report)


# -- readers -------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputError(f"vocabulary file {path} does not exist")
    if not path.is_file():
        raise InputError(f"vocabulary source {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read vocabulary file {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line} is not UTF-8 (byte {e.start}); save the file as UTF-8") from None


def _split_aliases(text: str) -> list[str]:
    return [p.strip() for p in text.split("|")]


def parse_txt(text: str, source: str, report: LoadReport) -> Iterator[tuple[str, list[str], str]]:
    """One concept per line; ``concept|alias1|alias2`` adds aliases; ``#`` starts a comment line."""
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            report.empty += 1
            continue
        parts = _split_aliases(s)
        yield parts[0], parts[1:], f"line {i}"


def parse_table(text: str, source: str, report: LoadReport, delimiter: str) -> Iterator[tuple[str, list[str], str]]:
    """CSV/TSV with a header row: a ``concept`` column and an optional ``aliases`` column
    (several aliases separated by ``|``). Other columns are ignored."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    cols = [h.strip().lower() for h in header]
    if "concept" not in cols:
        raise InputError(f"{source}: the header row has no 'concept' column (found {', '.join(cols) or 'nothing'}); "
                         f"the first row must name the columns concept[{delimiter}aliases]")
    ci = cols.index("concept")
    ai = next((cols.index(c) for c in ("aliases", "alias", "synonyms") if c in cols), None)
    for i, row in enumerate(reader, 2):
        if not any(cell.strip() for cell in row):
            report.empty += 1
            continue
        concept = row[ci] if ci < len(row) else ""
        aliases = _split_aliases(row[ai]) if ai is not None and ai < len(row) else []
        if not concept.strip():
            if any(a for a in aliases):
                raise InputError(f"{source}: line {i}: aliases without a concept name")
            report.empty += 1
            continue
        yield concept, aliases, f"line {i}"


def parse_json(text: str, source: str, report: LoadReport) -> Iterator[tuple[str, list[str], str]]:
    """A list of concept names (an item may also be a list ``[concept, alias, ...]``), or an
    object ``{concept: [aliases]}`` (a single alias may be a string, none may be null)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{source}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None

    def strings(value: object, where: str) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise InputError(f"{source}: {where}: aliases must be a string or a list of strings, got {type(value).__name__}")

    if isinstance(doc, list):
        for i, item in enumerate(doc, 1):
            where = f"item {i}"
            if isinstance(item, str):
                if not item.strip():
                    report.empty += 1
                    continue
                yield item, [], where
            elif isinstance(item, list) and item and all(isinstance(v, str) for v in item):
                yield item[0], item[1:], where
            else:
                raise InputError(f"{source}: {where}: expected a concept name (string), got {json.dumps(item)[:60]}")
    elif isinstance(doc, dict):
        for concept, aliases in doc.items():
            if not concept.strip():
                report.empty += 1
                continue
            yield concept, strings(aliases, f"key {concept!r}"), f"key {concept!r}"
    else:
        raise InputError(f"{source}: expected a JSON list of concepts or an object concept -> aliases, "
                         f"got {type(doc).__name__}")


def read_file(path: str | Path) -> Vocabulary:
    """Read a user vocabulary file; the format comes from the suffix (.txt/.csv/.tsv/.json,
    anything else is read as TXT)."""
    path = Path(path)
    text = _read_text(path)
    source = str(path)
    report = LoadReport(source)
    suffix = path.suffix.lower()
    if suffix == ".json":
        raw = list(parse_json(text, source, report))
    elif suffix in (".csv", ".tsv"):
        raw = list(parse_table(text, source, report, "," if suffix == ".csv" else "\t"))
    else:
        raw = list(parse_txt(text, source, report))
    vocab = build(raw, source, report)
    if not vocab.concepts:
        why = f"{report.entries:,} entries, all function words" if report.entries else "the file is empty"
        raise InputError(f"{source}: no concepts ({why})")
    return vocab


# -- bundled -------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _classnames() -> dict[str, list[str]]:
    names: dict[str, list[str]] = json.loads((DATA / "classnames.json").read_text(encoding="utf-8"))
    return names


@lru_cache(maxsize=1)
def _nozeroshot_rows() -> tuple[tuple[str, tuple[str, ...]], ...]:
    lines = (DATA / "nozeroshot.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return tuple((c, tuple(d.split(","))) for c, d in (ln.split("\t") for ln in lines if ln))


def bundled_vocabularies() -> dict[str, str]:
    """Bundled vocabulary name → one-line description (source and what it holds)."""
    out = {name: f"class names of {name} ({'clip_benchmark 1.6.2' if i < 17 else 'SLIP labels.json'})"
           for i, name in enumerate(_classnames())}
    out["nozeroshot"] = "all concepts of Udandarao et al. 2024 (search_counts keys, 25 downstream sets)"
    out["nozeroshot_classification"] = "the paper's concepts of its 17 zero-shot classification sets"
    out["letitwag"] = "the 290 Let It Wag! long-tail concepts"
    return out


def nozeroshot_downstream() -> dict[str, tuple[str, ...]]:
    """Paper concept → the downstream datasets it belongs to (the paper's names)."""
    return dict(_nozeroshot_rows())


def read_bundled(name: str) -> Vocabulary:
    source = f"bundled:{name}"
    raw: list[tuple[str, list[str], str]]
    if name in _classnames():
        raw = [(c, [], f"item {i}") for i, c in enumerate(_classnames()[name], 1)]
    elif name == "nozeroshot":
        raw = [(c, [], f"row {i}") for i, (c, _) in enumerate(_nozeroshot_rows(), 2)]
    elif name == "nozeroshot_classification":
        cls = set(NOZEROSHOT_CLASSIFICATION)
        raw = [(c, [], f"row {i}") for i, (c, ds) in enumerate(_nozeroshot_rows(), 2) if cls.intersection(ds)]
    elif name == "letitwag":
        lines = (DATA / "letitwag.txt").read_text(encoding="utf-8").splitlines()
        raw = [(c, [], f"line {i}") for i, c in enumerate(lines, 1) if c.strip()]
    else:
        raise ConfigError(f"unknown bundled vocabulary {name!r}; bundled: {', '.join(bundled_vocabularies())}")
    return build(raw, source)


def read_source(source: str | Path) -> Vocabulary:
    """A bundled name, or a path to a TXT/CSV/TSV/JSON file (a path wins if both exist)."""
    p = Path(source)
    if p.exists() or isinstance(source, Path):
        return read_file(p)
    if str(source) in bundled_vocabularies():
        return read_bundled(str(source))
    if p.suffix or "/" in str(source):
        raise InputError(f"vocabulary file {source} does not exist")
    raise ConfigError(f"{source!r} is neither a bundled vocabulary nor a file; bundled: "
                      f"{', '.join(bundled_vocabularies())}")


# -- the store table -----------------------------------------------------------------
def ensure_table(store: Store) -> None:
    store.con.execute(CONCEPTS_DDL)


def check_name(name: str) -> str:
    return names.check_name("vocabulary", name, lower=True, max_len=64)


@dataclass
class AddResult:
    name: str
    status: str  # added | unchanged | replaced
    concepts: int
    aliases: int  # rows beyond the concepts themselves
    report: LoadReport
    run_id: int | None = None

    def summary(self) -> str:
        head = {"added": "added", "unchanged": "unchanged (same content already stored)",
                "replaced": "replaced"}[self.status]
        line = (f"vocabulary {self.name!r} from {self.report.source}: {head}; {self.concepts:,} concepts, "
                f"{self.aliases:,} extra aliases" + (f", run {self.run_id}" if self.run_id else ""))
        return "\n".join([line] + [f"  {n}" for n in self.report.notes()])


def add_vocabulary(store: Store, name: str, source: str | Path, *, replace: bool = False) -> AddResult:
    """Store vocabulary ``name`` read from ``source`` (a bundled name or a file path).

    Adding the same content again is a no-op (``status == "unchanged"``, no run). Different
    content under an existing name is a :class:`ConfigError` unless ``replace=True``, which
    swaps the rows in one transaction."""
    check_name(name)
    if store.read_only:
        raise StoreError(f"store {store.path} is open read-only")
    vocab = read_source(source)
    rows = vocab.rows()
    ensure_table(store)
    con = store.con
    have = con.execute("SELECT concept, alias FROM concepts WHERE vocabulary = ?", [name]).fetchall()
    extra = len(rows) - len(vocab.concepts)
    if have and set(have) == set(rows):
        return AddResult(name, "unchanged", len(vocab.concepts), extra, vocab.report)
    if have and not replace:
        n = len({c for c, _ in have})
        raise ConfigError(f"vocabulary {name!r} already exists with different content ({n:,} concepts stored, "
                          f"{len(vocab.concepts):,} in {vocab.source}); pass --replace to replace it")
    config = {"vocabulary": name, "source": vocab.source, "replace": replace}
    digest = hashlib.sha256(json.dumps(sorted(rows)).encode()).hexdigest()[:16]
    con.begin()
    try:
        run_id = record_run(con, "concepts", STAGE, config, digest, rows_in=vocab.report.entries, rows_out=len(rows),
                            message="; ".join(vocab.report.notes()) or None)
        con.execute("DELETE FROM concepts WHERE vocabulary = ?", [name])
        table = pa.table({"vocabulary": pa.array([name] * len(rows), pa.string()),
                          "concept": pa.array([c for c, _ in rows], pa.string()),
                          "alias": pa.array([a for _, a in rows], pa.string()),
                          "added_run": pa.array([run_id] * len(rows), pa.int64())})
        con.register("_curate_concepts_in", table)
        try:
            con.execute("INSERT INTO concepts SELECT vocabulary, concept, alias, added_run FROM _curate_concepts_in")
        finally:
            con.unregister("_curate_concepts_in")
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return AddResult(name, "replaced" if have else "added", len(vocab.concepts), extra, vocab.report, run_id)


def vocabulary_names(store: Store) -> list[str]:
    """Names of the vocabularies stored in ``concepts`` (sorted)."""
    if not store.has_table("concepts"):
        return []
    return [r[0] for r in store.con.execute("SELECT DISTINCT vocabulary FROM concepts ORDER BY 1").fetchall()]


def load_vocabulary(store: Store, name: str) -> list[tuple[str, tuple[str, ...]]]:
    """(concept, aliases) of a stored vocabulary, sorted by concept; each alias tuple starts
    with the concept itself, the other aliases follow sorted."""
    rows = []
    if store.has_table("concepts"):
        rows = store.con.execute(
            "SELECT concept, list(alias ORDER BY alias = concept DESC, alias) FROM concepts "
            "WHERE vocabulary = ? GROUP BY concept ORDER BY concept", [name]).fetchall()
    if not rows:
        names = vocabulary_names(store)
        hint = (f"; add it with `curate concepts vocab add {name} {name}`" if name in bundled_vocabularies() else "")
        raise ConfigError(f"no vocabulary {name!r} in store {store.path} (stored: {', '.join(names) or 'none'}){hint}")
    return [(c, tuple(a)) for c, a in rows]


def vocabulary_entries(store: Store | None, name: str) -> list[tuple[str, tuple[str, ...]]]:
    """A stored vocabulary, else a bundled one read from the package (nothing is written)."""
    if store is not None and name in vocabulary_names(store):
        return load_vocabulary(store, name)
    if name in bundled_vocabularies():
        return [(c.name, c.aliases) for c in read_bundled(name).concepts]
    stored = vocabulary_names(store) if store is not None else []
    raise ConfigError(f"unknown vocabulary {name!r}: not stored ({', '.join(stored) or 'none stored'}) and not "
                      f"bundled ({', '.join(bundled_vocabularies())})")
