"""Caption and concept lemmas for concept counting, fast.

The paper's counter (Udandarao et al. 2024) runs a full spaCy pipeline over every caption
to get lemmas, which costs about 300 captions/s on a CPU. Concepts are nouns, and what
matters for counting them is that a caption's "dogs" and a concept's "dog" meet. So the
default counter (:class:`NounLemmatizer`) lemmatises **every word as a noun** with the
noun rules, exceptions and index that spaCy's English rule lemmatizer ships with
(taken from the installed pipeline, ``en_core_web_sm`` by default). Results are cached per
word, so a caption costs one normalisation and one dictionary look-up per word. The
rule, exactly:

1. the text is normalised as in :func:`curate.knowledge.normalize.normalize_text`:
   accents stripped, lower-cased, possessive ``'s`` dropped, every run of characters
   that are not letters or digits becomes one space ("T-Shirts!" -> "t shirts");
2. each word becomes its noun lemma:
   - an irregular plural listed in spaCy's noun exceptions ("mice" -> "mouse");
   - else the first suffix rule ("s" -> "", "ies" -> "y", "ves" -> "f", "men" -> "man",
     ...) whose result is a known noun lemma ("dogs" -> "dog", "puppies" -> "puppy",
     "sunglasses" -> "sunglass", as spaCy does for a plural-tagged word; the bare "s"
     rule leaves "-ss", "-us" and "-is" words alone: "boss", "cactus", "iris");
   - else the word itself, if it is a known noun lemma ("glass", "news", "species");
   - else, for a word spaCy does not know, its regular plural ending removed
     ("sunglasses" -> "sunglass", "axolotls" -> "axolotl"; "-ss", "-us", "-is" and
     words of up to 3 letters stay);
   - else the word unchanged (verbs, numbers).

Concept names and aliases go through the same function, so matching is symmetric.

Two tagger-based counters sit beside it (both run spaCy's tagger over every caption):

* :class:`PosLemmatizer` (mode ``nouns``): the caption's NOUN and PROPN lemmas,
  normalised as above; a concept's words are lemmatised in context by the same tagger.
* :class:`PaperIndexer` (mode ``paper``): the text search of Udandarao et al. 2024 as
  their code runs it (``src/text_search_inverted_index_get_word_dictionaries.py`` and
  ``src/text_search_matches_inverted_index.py`` of bethgelab/frequency_determines_performance):
  a caption's index keys are ``re.sub('[^A-Za-z ]', '', token.lemma_)`` of its NOUN and
  PROPN tokens, case kept; a concept is lower-cased and split on runs of spaces and
  underscores, and each word is lemmatised *on its own* (``nlp(word)``), keeping the last
  token's lemma, so "golf-ball" is queried as "ball" (:func:`paper_query_words`).
  Dropping the words that no caption of the index has is the counting rule's part
  (:mod:`curate.stages.concepts`, view ``concept_paper_hits``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from .._optional import require
from ..errors import ConfigError
from ..knowledge.normalize import normalize_text


def _rule_tables(model: str) -> tuple[dict[str, list[str]], set[str], list[tuple[str, ...]]]:
    """(noun exceptions, noun index, noun rules) from a pipeline's rule lemmatizer."""
    from ..knowledge.ner import pipeline_components, resolve_model

    spacy = require("spacy", purpose="concept lemmatisation (spaCy's English lemma tables)")
    model = resolve_model(model)
    components = pipeline_components(model)
    if "lemmatizer" not in components:
        raise ConfigError(f"spaCy pipeline {model!r} has no 'lemmatizer' component (it has: {', '.join(components)}); "
                          "concept counting needs an English pipeline such as en_core_web_sm")
    nlp = spacy.load(model, exclude=[c for c in components if c != "lemmatizer"])
    lookups = nlp.get_pipe("lemmatizer").lookups
    try:
        exc = dict(lookups.get_table("lemma_exc")["noun"])
        index = set(lookups.get_table("lemma_index")["noun"])
        rules = [tuple(r) for r in lookups.get_table("lemma_rules")["noun"]]
    except (KeyError, ValueError) as e:
        raise ConfigError(f"spaCy pipeline {model!r} has no English noun lemma tables ({e})") from None
    return exc, index, rules


def _plain_singular(w: str) -> str:
    """An unknown word's plural ending, removed the regular way ("sunglasses" ->
    "sunglass", "axolotls" -> "axolotl", "ponies" -> "pony"); "-ss", "-us", "-is" and
    short words stay."""
    if len(w) <= 3 or not w.endswith("s") or w.endswith(("ss", "us", "is")):
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "xes", "zes", "ches", "shes")):
        return w[:-2]
    return w[:-1]


class NounLemmatizer:
    """Every word lemmatised as a noun with spaCy's English rule tables (see module doc)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._exc, self._index, self._rules = _rule_tables(model)
        self._cache: dict[str, str] = {}

    def word(self, w: str) -> str:
        got = self._cache.get(w)
        if got is None:
            got = self._cache[w] = self._lemma(w)
        return got

    def _lemma(self, w: str) -> str:
        forms = self._exc.get(w)
        if forms:
            return forms[0]
        if not w.isalpha():
            return w
        for old, new in self._rules:
            if w.endswith(old) and not (old == "s" and w.endswith(("ss", "us", "is"))):
                form = w[: len(w) - len(old)] + new
                if form and form in self._index:
                    return form
        return w if w in self._index else _plain_singular(w)

    def lemmas(self, text: str) -> str:
        """The caption as space-separated noun lemmas ("Two Dogs' toys" -> "two dog toy")."""
        get = self._cache.get
        out = []
        for w in normalize_text(text).split():
            lem = get(w)
            out.append(lem if lem is not None else self.word(w))
        return " ".join(out)

    def many(self, texts: Iterable[str]) -> list[str]:
        return [self.lemmas(t) for t in texts]


class PosLemmatizer:
    """Mode ``nouns``: tag every caption, keep the (normalised) lemmas of NOUN and PROPN
    tokens; concept words are lemmatised in context by the same tagger."""

    def __init__(self, model: str, batch_size: int = 256) -> None:
        from ..knowledge.ner import pipeline_components, use_numpy_gemm

        spacy = require("spacy", purpose="concept lemmatisation (spaCy tagger)")
        components = pipeline_components(model)
        keep = {"tok2vec", "tagger", "attribute_ruler", "lemmatizer"}
        missing = {"tagger", "lemmatizer"} - set(components)
        if missing:
            raise ConfigError(f"spaCy pipeline {model!r} lacks {', '.join(sorted(missing))}, needed by mode 'nouns'")
        use_numpy_gemm(True)
        self.nlp = spacy.load(model, exclude=[c for c in components if c not in keep])
        self.batch_size = batch_size

    def noun_lemma_sets(self, texts: list[str]) -> list[set[str]]:
        from threadpoolctl import threadpool_limits

        out = []
        with threadpool_limits(1, user_api="blas"):
            for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
                out.append({w for t in doc if t.pos_ in ("NOUN", "PROPN") for w in normalize_text(t.lemma_).split()})
        return out

    def concept_words(self, concept: str) -> list[str]:
        """A concept's words: lower-cased, ``_`` read as a space, lemmatised in context by
        the same tagger and normalised (so "golf-ball" -> ["golf", "ball"])."""
        doc = self.nlp(concept.replace("_", " ").lower())
        return list(dict.fromkeys(w for t in doc for w in normalize_text(t.lemma_).split()))


_NOT_LETTERS = re.compile(r"[^A-Za-z ]")
_QUERY_SPLIT = re.compile(r"[_\s]+")


def paper_query_terms(concept: str) -> list[str]:
    """The paper's query split: lower-cased, split on runs of spaces and underscores."""
    return [t for t in _QUERY_SPLIT.split(concept.lower()) if t]


def paper_query_words(nlp: Any, concept: str, cache: dict[str, str] | None = None) -> list[str]:
    """A concept's query words as the paper's code makes them: each term of
    :func:`paper_query_terms` is lemmatised alone by ``nlp`` and keeps the lemma of its
    last token (``{term: token.lemma_ for token in nlp(term)}``), so "golf-ball" ->
    ["ball"] and "dog sled" -> ["dog", "sle"] (en_core_web_sm tags a lone "sled" as a verb).
    Repeated words are kept once. The lemma is not stripped of non-letters, so "737-300"
    -> ["300"], a word no index key can equal."""
    out: list[str] = []
    for term in paper_query_terms(concept):
        lemma = cache.get(term) if cache is not None else None
        if lemma is None:
            lemmas = [t.lemma_ for t in nlp(term)]
            lemma = lemmas[-1] if lemmas else term
            if cache is not None:
                cache[term] = lemma
        if lemma and lemma not in out:
            out.append(lemma)
    return out


def paper_key(lemma: str) -> str:
    """An index key: the lemma with every character but ASCII letters and spaces removed."""
    return _NOT_LETTERS.sub("", lemma)


class PaperIndexer:
    """The paper's caption index and query words, with one spaCy pipeline (tagger,
    attribute ruler and lemmatizer; the parser and NER do not change a POS tag)."""

    def __init__(self, model: str, batch_size: int = 256) -> None:
        from ..knowledge.ner import pipeline_components, resolve_model, use_numpy_gemm

        spacy = require("spacy", purpose="concept counting in mode 'paper' (spaCy tagger)")
        model = resolve_model(model)
        components = pipeline_components(model)
        missing = {"tagger", "lemmatizer"} - set(components)
        if missing:
            raise ConfigError(f"spaCy pipeline {model!r} lacks {', '.join(sorted(missing))}, needed by mode 'paper'")
        keep = {"tok2vec", "tagger", "attribute_ruler", "lemmatizer"}
        use_numpy_gemm(True)
        self.nlp = spacy.load(model, exclude=[c for c in components if c not in keep])
        self.batch_size = batch_size
        self._terms: dict[str, str] = {}

    def keys(self, texts: list[str]) -> list[set[str]]:
        """Each caption's index keys (:func:`paper_key` of its NOUN and PROPN lemmas; an
        empty key, from a token of digits or signs, is left out)."""
        from threadpoolctl import threadpool_limits

        out = []
        with threadpool_limits(1, user_api="blas"):
            for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
                keys = {paper_key(t.lemma_) for t in doc if t.pos_ in ("NOUN", "PROPN")}
                keys.discard("")
                out.append(keys)
        return out

    def query_words(self, concept: str) -> list[str]:
        return paper_query_words(self.nlp, concept, self._terms)


@lru_cache(maxsize=4)
def noun_lemmatizer(model: str) -> NounLemmatizer:
    return NounLemmatizer(model)

