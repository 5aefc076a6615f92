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
:class:`PosLemmatizer` is the paper's way, for comparison: a tagger, and the lemmas of
NOUN and PROPN tokens only.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

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
    """The paper's way: tag every caption, keep the lemmas of NOUN and PROPN tokens."""

    def __init__(self, model: str, batch_size: int = 256) -> None:
        from ..knowledge.ner import pipeline_components, use_numpy_gemm

        spacy = require("spacy", purpose="concept lemmatisation (spaCy tagger)")
        components = pipeline_components(model)
        keep = {"tok2vec", "tagger", "attribute_ruler", "lemmatizer"}
        missing = {"tagger", "lemmatizer"} - set(components)
        if missing:
            raise ConfigError(f"spaCy pipeline {model!r} lacks {', '.join(sorted(missing))}, needed by mode 'paper'")
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
        """A concept's words as the paper queries them: lower-cased, split on spaces and
        underscores, each word lemmatised (here by the same tagger, in context)."""
        doc = self.nlp(concept.replace("_", " ").lower())
        return list(dict.fromkeys(w for t in doc for w in normalize_text(t.lemma_).split()))


@lru_cache(maxsize=4)
def noun_lemmatizer(model: str) -> NounLemmatizer:
    return NounLemmatizer(model)

