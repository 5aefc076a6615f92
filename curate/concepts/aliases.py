"""Aliases applied at count time: a synonym list from WordNet or a user's TSV file.

``curate concepts count --aliases SOURCE`` adds the aliases of ``SOURCE`` to the
vocabulary's own for that count (the stored vocabulary is not changed; the aliases'
content is part of the stage's configuration hash). Every hit records the alias that
made it, so the counts are reported per alias (``curate sql -q concepts.alias_counts``).

Sources:

* ``wordnet`` (or ``wordnet:DIR``): the other lemmas of the concept's **first noun
  sense** in Princeton WordNet 3.0 (its most frequent sense), read from the database
  files ``index.noun`` and ``data.noun`` in ``DIR``, else ``$CURATE_WORDNET_DIR``, else
  ``/usr/share/wordnet`` (Debian's ``wordnet-base`` package). Only the first sense is
  used, because later senses are other meanings ("dog" sense 3 is "frank, hotdog,
  wiener"), and capitalised lemmas are left out for a lower-case concept, because a
  first sense may be a person ("crane" sense 1 is the poet Hart Crane). A concept is
  looked up lower-cased with spaces as ``_`` (hyphens kept, then read as ``_``); then, for
  a plural, under its singular (WordNet's ``noun.exc``, else without a final ``s``).
* a **TSV file**: ``concept<TAB>alias`` on each line (more tab-separated aliases may
  follow); an optional header ``concept<TAB>alias``; ``#`` comment lines and empty lines
  are skipped. A line without a tab, or with an empty concept or alias, is an
  :class:`~curate.errors.InputError` naming the line.

A pair whose concept is not in the vocabulary is not applied and is reported, as is an
alias the vocabulary already has for that concept (or the concept's own name).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, InputError
from .vocab import _few, _read_text, concept_key, normalize_name

WORDNET_DIRS = ("/usr/share/wordnet",)


@dataclass
class AliasSet:
    """The aliases of one source applied to one vocabulary."""

    source: str
    rows: list[tuple[str, str]]                               # (concept as in the vocabulary, alias)
    pairs: int = 0                                            # pairs read from the source
    unknown: list[str] = field(default_factory=list)          # concepts not in the vocabulary
    known: list[str] = field(default_factory=list)            # aliases the vocabulary already has
    not_found: list[str] = field(default_factory=list)        # wordnet: concepts with no noun entry

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.rows), ensure_ascii=False).encode()).hexdigest()[:16]

    def notes(self) -> list[str]:
        n_concepts = len({c for c, _ in self.rows})
        out = [f"aliases from {self.source}: {len(self.rows):,} applied to {n_concepts:,} concepts"
               + (f" ({self.pairs:,} pairs read)" if self.pairs != len(self.rows) else "")]
        if self.unknown:
            out.append(f"{len(self.unknown):,} pairs name a concept not in the vocabulary (not applied): "
                       f"{_few(self.unknown)}")
        if self.known:
            out.append(f"{len(self.known):,} aliases the vocabulary already has (not added again): {_few(self.known)}")
        if self.not_found:
            out.append(f"{len(self.not_found):,} concepts have no WordNet noun entry: {_few(self.not_found)}")
        return out


# -- WordNet ---------------------------------------------------------------------------
def wordnet_dir(given: str | None = None) -> Path:
    """The folder with WordNet's ``index.noun`` and ``data.noun``."""
    cands = [given] if given else [os.environ.get("CURATE_WORDNET_DIR") or "", *WORDNET_DIRS]
    for c in cands:
        if c and (Path(c) / "index.noun").is_file() and (Path(c) / "data.noun").is_file():
            return Path(c)
    where = given or ", ".join(c for c in cands if c)
    raise ConfigError(f"no WordNet database (index.noun, data.noun) in {where}; install Debian's wordnet-base "
                      "(apt-get install wordnet-base) or point CURATE_WORDNET_DIR (or --aliases wordnet:DIR) at a "
                      "folder with the WordNet 3.0 database files")


class WordNet:
    """First-sense noun lemmas from the WordNet 3.0 database files (no library needed)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.first: dict[str, int] = {}
        with open(folder / "index.noun", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):
                    continue  # the licence header
                parts = line.split()
                p_cnt = int(parts[3])
                offsets = parts[4 + p_cnt + 2:]
                if offsets:
                    self.first[parts[0]] = int(offsets[0])
        self.exc: dict[str, str] = {}
        exc = folder / "noun.exc"
        if exc.is_file():
            for line in exc.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    self.exc.setdefault(parts[0], parts[1])
        self._data = open(folder / "data.noun", "rb")

    def close(self) -> None:
        self._data.close()

    def lookup(self, concept: str) -> str | None:
        hyphen = "_".join(concept.lower().split())
        key = "_".join(concept.lower().replace("-", " ").split())
        for cand in (hyphen, key, self.exc.get(key), key[:-1] if key.endswith("s") else None):
            if cand and cand in self.first:
                return cand
        return None

    def synonyms(self, concept: str) -> list[str] | None:
        """The other lemmas of the concept's first noun sense (None: no noun entry)."""
        key = self.lookup(concept)
        if key is None:
            return None
        self._data.seek(self.first[key])
        fields = self._data.readline().decode("utf-8", errors="replace").split()
        n = int(fields[3], 16)
        words = [fields[4 + 2 * i].replace("_", " ") for i in range(n)]
        lower = concept == concept.lower()
        own = {concept_key(concept), concept_key(key.replace("_", " "))}
        out = []
        for w in words:
            if concept_key(w) in own or (lower and w != w.lower()):
                continue
            if w not in out:
                out.append(w)
        return out


# -- TSV -------------------------------------------------------------------------------
def read_tsv(path: Path) -> list[tuple[str, str, str]]:
    """(concept, alias, "line N") from a ``concept<TAB>alias`` file."""
    if not path.is_file():
        raise InputError(f"alias file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    text = _read_text(path)
    out: list[tuple[str, str, str]] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = [normalize_name(c) for c in line.split("\t")]
        if i == 1 and [c.lower() for c in cells[:2]] == ["concept", "alias"]:
            continue
        if len(cells) < 2:
            raise InputError(f"{path}: line {i}: expected concept<TAB>alias, found no tab")
        if not cells[0] or not all(cells[1:]):
            raise InputError(f"{path}: line {i}: empty concept or alias")
        out.extend((cells[0], a, f"line {i}") for a in cells[1:])
    if not out:
        raise InputError(f"{path}: no concept<TAB>alias pairs")
    return out


# -- applying --------------------------------------------------------------------------
def load_aliases(source: str, entries: list[tuple[str, tuple[str, ...]]]) -> AliasSet:
    """The pairs of ``source`` (``wordnet``, ``wordnet:DIR`` or a TSV path) applied to a
    vocabulary's ``entries`` (concept, aliases)."""
    by_key = {concept_key(c): (c, {concept_key(a) for a in aliases}) for c, aliases in entries}
    aset = AliasSet(source, [])
    seen: set[tuple[str, str]] = set()

    def add(concept: str, alias: str) -> None:
        aset.pairs += 1
        hit = by_key.get(concept_key(concept))
        if hit is None:
            aset.unknown.append(f"{concept}\t{alias}")
            return
        name, have = hit
        if concept_key(alias) in have:
            aset.known.append(f"{name}: {alias}")
            return
        if (name, concept_key(alias)) not in seen:
            seen.add((name, concept_key(alias)))
            aset.rows.append((name, alias))

    if source == "wordnet" or source.startswith("wordnet:"):
        wn = WordNet(wordnet_dir(source.partition(":")[2] or None))
        try:
            for concept, _ in entries:
                syn = wn.synonyms(concept)
                if syn is None:
                    aset.not_found.append(concept)
                for alias in syn or ():
                    add(concept, alias)
        finally:
            wn.close()
    else:
        path = Path(source)
        if path.suffix.lower() not in (".tsv", ".txt"):
            raise InputError(f"alias source {source!r}: expected 'wordnet', 'wordnet:DIR' or a .tsv file "
                             "(concept<TAB>alias per line)")
        for concept, alias, _ in read_tsv(path):
            add(concept, alias)
    aset.rows.sort()
    return aset
