"""Normalised entity matching: the rules behind knowledge retention and entity support.

**Normalisation** (``normalize_text``; the SQL macro ``curate_norm`` in
``sql/schema/002_knowledge.sql`` is its twin and they are tested equal on real captions):

1. strip accents: decompose (NFD), drop combining marks (Unicode categories Mn, Mc,
   Me), recompose (NFC): "Brûlée" -> "Brulee". Compatibility forms (ligatures,
   full-width letters) are left as they are, as DuckDB's ``strip_accents`` does;
2. lower-case (``str.lower``; DuckDB ``lower``);
3. drop possessives: an apostrophe (``'`` or ``’``) followed by ``s`` at the end of a
   word is removed ("Obama's" -> "obama");
4. every run of characters that are neither letters nor digits (punctuation, spaces,
   symbols, emoji, the remaining apostrophes) becomes one space; leading and trailing
   spaces go.

An **entity's** normal form (``normalize_entity``) is that of its text, minus a leading
"the " ("The Beatles" -> "beatles").

**Matching.** Write ``⟨x⟩`` for ``" " + x + " "``. A phrase *p* occurs in a normal form *t*
when ``⟨p⟩`` is a substring of ``⟨t⟩``: whole words in order, so "paris" occurs in
"paris hilton" but "pari" does not occur in "paris".

* A raw caption's knowledge entity *R* is **kept strictly** by another caption *V* of
  the same sample when *R* occurs in *V*'s normalised text, and **kept leniently** also
  when some knowledge entity *E* that spaCy found in *V* occurs in *R* (a partial name:
  "Obama" keeps "Barack Obama", but "Acura" also keeps "Acura RDX"). Reports give both.
* A knowledge entity *E* of a caption *V* is **supported** by a reference caption *S*
  (the raw or the synthetic caption of the same sample) when *E* occurs in *S*'s
  normalised text, or some knowledge entity of *S* occurs in *E* ("Barack Obama" in *V*
  is supported by "Obama" in *S*), or by a cheap cause (:func:`support_cause`: an
  abbreviation in *S*, a hashtag or run-together form in *S*, an escaped apostrophe).
  Its **support** is ``raw``, ``synthetic`` (the synthetic caption only) or ``none``
  (unsupported; formerly called hallucinated, but mostly not inventions: see
  ``docs/knowledge.md``).

Both rules compare normalised word sequences only; they do not resolve aliases ("USA"
vs "United States") or pronouns.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_POSSESSIVE = re.compile(r"['’]s([\W_]|\Z)")  # consumes the next character, as the SQL twin does
_NON_ALNUM = re.compile(r"[\W_]+")
_MARKS = frozenset(("Mn", "Mc", "Me"))


def strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(ch for ch in decomposed if unicodedata.category(ch) not in _MARKS))


def normalize_text(text: str) -> str:
    """The normal form of a caption or entity text (steps 1-4 above)."""
    t = strip_accents(text).lower()
    t = _POSSESSIVE.sub(r"\1", t)
    return _NON_ALNUM.sub(" ", t).strip()


def normalize_entity(text: str) -> str:
    """The normal form of an entity: ``normalize_text`` minus a leading "the "."""
    t = normalize_text(text)
    return t[4:] if t.startswith("the ") and len(t) > 4 else t


def occurs(phrase: str, normal_text: str) -> bool:
    """Whether the normalised ``phrase`` occurs as whole words in ``normal_text``."""
    return bool(phrase) and f" {phrase} " in f" {normal_text} "


def kept(raw_entity: str, variant_text: str, variant_entities: Iterable[str]) -> bool:
    """Whether a raw knowledge entity (normalised) is kept by a caption (its normalised
    text and normalised knowledge entities)."""
    return occurs(raw_entity, variant_text) or any(occurs(e, raw_entity) for e in variant_entities)


def supported(entity: str, ref_text: str, ref_entities: Iterable[str]) -> bool:
    """Whether an entity (normalised) is supported by a reference caption's normalised
    text or entities by the text or partial rule (the cheap causes aside)."""
    return occurs(entity, ref_text) or any(occurs(r, entity) for r in ref_entities)


def kept_strict(raw_entity: str, variant_text: str) -> bool:
    """Strict retention: the whole raw entity occurs in the caption's normalised text."""
    return occurs(raw_entity, variant_text)


CAUSES = ("text", "partial", "abbreviation", "hashtag", "escaped unicode")
_ESCAPE = re.compile(r"u00[0-9a-fA-F]{2}")
_LETTER_WORDS = re.compile(r"[a-z ]+")


def unescape(text: str) -> str:
    """A JSON escape that lost its backslash (``u0027``) read as an apostrophe."""
    return _ESCAPE.sub("'", text)


def support_cause(entity: str, ref_text: str, ref_entities: Iterable[str]) -> str | None:
    """Why a reference caption (its original text and its normalised knowledge entities)
    supports an entity (normalised), trying the causes in order, or None. The Python twin
    of ``knowledge.unsupported``; ``docs/knowledge.md`` states the rule."""
    ntext = normalize_text(ref_text)
    ents = list(ref_entities)
    if occurs(entity, ntext):
        return "text"
    if any(occurs(r, entity) for r in ents):
        return "partial"
    words = entity.split(" ")
    if len(words) > 1 and _LETTER_WORDS.fullmatch(entity):
        initials = "".join(w[0] for w in words).upper()
        if re.search(rf"(^|[^A-Za-z0-9]){initials}([^A-Za-z0-9]|$)", ref_text):
            return "abbreviation"
    if len(words) > 1 and occurs(entity.replace(" ", ""), ntext):
        return "hashtag"
    unescaped_text = normalize_text(unescape(ref_text))
    if unescaped_text != ntext and occurs(entity, unescaped_text):
        return "escaped unicode"
    unescaped = normalize_text(_ESCAPE.sub("'", entity))
    if unescaped != entity and (occurs(unescaped, ntext) or any(occurs(r, unescaped) for r in ents)):
        return "escaped unicode"
    return None


def support(entity: str, raw_refs: Iterable[tuple[str, Iterable[str]]],
            synthetic_refs: Iterable[tuple[str, Iterable[str]]]) -> tuple[str, str | None]:
    """(support, cause) of an entity given its sample's reference captions, each as
    (original text, normalised knowledge entities): ``raw`` when a raw caption supports
    it, ``synthetic`` when only a synthetic one does, else ``none``; the cause is the
    earliest in :data:`CAUSES` among the supporting captions of that kind."""
    for kind, refs in (("raw", raw_refs), ("synthetic", synthetic_refs)):
        causes = [c for t, e in refs if (c := support_cause(entity, t, e)) is not None]
        if causes:
            return kind, min(causes, key=CAUSES.index)
    return "none", None
