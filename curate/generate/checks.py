"""Checks on a model's answer: a bad output becomes a status on its row, not a crash.

A generation stage calls :func:`check_output` on every answer and stores the status
beside it; only ``ok`` rows become captions, the rest are counted and kept for audit
(and some are retried: ``truncated`` with more tokens, ``refusal`` or ``prompt_copy``
with a stricter template). :func:`clean_output` is what the stage stores as the caption.

Statuses, in the order they are tested (the first that applies wins):

1. ``empty``: no answer, or nothing with a letter or digit once cleaned. Exception: an
   empty answer that stopped on the token limit (``finish_reason == "length"``, e.g. a
   reasoning model that spent its budget thinking) is ``truncated``: the fix is more
   tokens, not another prompt.
2. ``bad_text``: U+FFFD (bytes that were not valid UTF-8 somewhere upstream), a control
   character other than tab/newline/carriage return, or a lone surrogate. Tested on the
   raw answer, before cleaning, because the later checks read words and these characters
   make words unreliable.
3. ``refusal``: the cleaned answer opens with an English refusal, apology or assistant
   remark (:data:`REFUSAL_OPENINGS`). Before ``truncated``: a cut-off refusal is still a
   refusal, and more tokens would not help.
4. ``truncated``: ``finish_reason == "length"``.
5. ``prompt_copy``: the answer repeats a stretch of at least :data:`SHINGLE_WORDS` words of
   the prompt that is not part of an input (a fused caption may copy its alt-text; it
   must not copy the instructions or an in-context example), or the whole answer (5 words
   or more) is a stretch of the prompt found in no input.
6. ``copy_of_input``: only with ``must_differ_from_inputs=True`` (a rewrite must not hand
   back its caption): the answer equals an input, ignoring case, spacing and punctuation.
7. ``wrong_language``: the answer is not in ``language`` (only ``"en"`` is checked; None
   skips the test). Last because it is a heuristic; see :func:`language_problem`.

Everything but ``bad_text`` looks at ``clean_output(text)``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from ..errors import ConfigError

STATUSES = ("ok", "empty", "bad_text", "refusal", "truncated", "prompt_copy", "copy_of_input", "wrong_language")

#: Words in a row that count as copying the prompt.
SHINGLE_WORDS = 8
#: An answer this long or longer that is wholly a stretch of the prompt is a copy too.
MIN_WHOLE_COPY_WORDS = 5

#: Refusal, apology and assistant-meta openings, matched at the start of the cleaned
#: answer, case-insensitively, with ' or ’ as the apostrophe. Narrower than "starts with
#: sorry / I can't", because real captions do: LAION-2B has the T-shirt "Sorry I'm late I
#: didn't want to come" (BLIP captioned it "sorry. Im late..."), CapsFusion fused captions
#: open "I'm sorry to see the tournament leave" and shirts say "I can't even". So:
#:
#: * an apology counts when punctuation, "but" or an inability clause follows it (a bare
#:   "Sorry" only with a comma, "but" or such a clause);
#: * an inability ("I can't", "I'm unable to", "I won't") counts only before a verb of
#:   assisting (:data:`_VERBS`: help, describe, provide, see...);
#: * an opening that also occurs in an input is not a refusal: the answer quotes its
#:   alt-text.
#:
#: Measured in tests/test_generate_checks.py: on CapsFusion's 30,000 texts and COCO's 25,014
#: captions this flags only real refusals (12 COCO annotators' "I am unable to see an
#: image above." notes and one CapsFusion answer "Can you please provide more context...").
_APOLOGY = r"(?:i['’]?m sorry|i am sorry|i apologi[sz]e|my apologies|apologies)"
_VERBS = (r"(?:help|assist|provide|describe|see|view|access|generate|create|fulfil|fulfill|comply|identify|determine"
          r"|tell|write|caption|process|open|complete|merge|combine|fuse|rewrite|answer|perform|analy[sz]e|interpret"
          r"|display|make out|recogni[sz]e|support|produce|offer|give|do that|do this|continue)\b")
_INABILITY = (r"(?:i can(?:not|['’]?t| not)|i['’]?m (?:not able|unable) to|i am (?:not able|unable) to"
              r"|i (?:won['’]?t|will not))(?:\s+(?:actually|currently|really|directly|physically|be able to))?\s+" + _VERBS)
REFUSAL_OPENINGS = (
    _APOLOGY + r"\s*[,.!;:]", r"(?:i['’]?m |i am )?sorry\s*(?:,|but\b)", r"(?:i['’]?m |i am )?sorry\s+" + _INABILITY,
    _APOLOGY + r"\s+but\b", _APOLOGY + r"\s+" + _INABILITY,
    r"i apologi[sz]e for (?:the|any) (?:confusion|inconvenience|misunderstanding)\b",
    _INABILITY,
    r"as an ai\b", r"as a(?:n ai)? (?:language model|large language model|text-based|assistant)\b",
    r"i['’]?m (?:an ai|a language model|just an ai)\b", r"i am (?:an ai|a language model)\b",
    r"unfortunately,? (?:i|there is no|the image)\b", r"i['’]?m afraid\b",
    r"there (?:is|appears to be) no image\b", r"no image (?:was|is|has been) (?:provided|attached|shown)\b",
    r"(?:(?:could|can|would) you (?:please )?|please )(?:provide|upload|share|clarify|attach|send)\b",
    r"i (?:do not|don['’]?t) (?:have (?:the ability|access|enough)|see (?:an?|any|the) (?:image|picture|photo))\b",
    r"i need (?:more|an image|the image)\b",
    r"i['’]?d be happy to help\b", r"(?:sure|certainly|of course)[,!.]? (?:i can|i['’]?d|i will|i['’]?ll)\b",
)
_REFUSAL_RE = re.compile(r"^(?:" + "|".join(REFUSAL_OPENINGS) + r")", re.IGNORECASE)

_BAD_CHARS_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ud800-\udfff]")

# --- clean_output -------------------------------------------------------------------------

_LABEL_WORDS = (r"(?:(?:fused|final|new|merged|combined|rewritten|enriched|visual|image|short|detailed|one-sentence)\s+)?"
                r"(?:caption|description|rewrite|sentence|answer|output|response)")
_LEADING_LABEL_RE = re.compile(
    r"^(?:\*\*|__)?(?:(?:sure|certainly|okay|ok)[,!.]?\s+)?"
    r"(?:(?:here\s+is|here['’]s)\s+(?:the|a|an|my|your)\s+(?:\w+[\s-]+){0,3}?)?"
    + _LABEL_WORDS + r"(?:\s*\d+)?\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*",
    re.IGNORECASE)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“", "`": "`"}


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
        inner = text[1:-1]
        # Only a quote that wraps the whole answer: '"A" sign on a "B" door' keeps its quotes.
        if text[0] not in inner and _QUOTES[text[0]] not in inner:
            return inner.strip()
    return text


def clean_output(text: str | None) -> str:
    """The answer as a caption: whitespace collapsed to single spaces and trimmed, one
    leading label such as ``Caption:``, ``Fused caption:`` or ``Here is the rewritten
    caption:`` removed, and quotes that wrap the whole answer removed (label then quotes,
    or quotes then label). Conservative on purpose: nothing inside the sentence changes,
    and a quote that is not a wrapper stays."""
    if not text:
        return ""
    out = " ".join(text.split())
    for _ in range(2):
        before = out
        out = _unquote(out)
        m = _LEADING_LABEL_RE.match(out)
        if m:  # a label and nothing else leaves nothing: the answer held no caption
            out = out[m.end():]
        if out == before:
            break
    return out.strip()


# --- language -----------------------------------------------------------------------------

#: English function words (articles, prepositions, pronouns, auxiliaries, conjunctions).
ENGLISH_FUNCTION_WORDS = frozenset("""
a an the this that these those of in on at by for with from to into onto over under above below near
behind beside between through across along around about against among up down out off
and or but nor so yet as than while if when where which who whom whose what how
is are was were be been being am has have had do does did will would can could should may might must
it its he she they them their his her him we our you your i my me there here not no
""".split())

#: Function words of languages an English-prompted model drifts into (German, French,
#: Spanish, Italian, Portuguese, Dutch), minus every word that is also English or common
#: in English captions ("die", "am", "an", "also", "son", "me", "no", "as", "is", "in"...).
FOREIGN_FUNCTION_WORDS = frozenset("""
der das und ist mit ein eine einem einen einer eines des dem den von zu auf für nicht sich auch im bei aus wie
oder sind wird werden über unter nach vor durch zum zur vom ihr ihre sein seine wir sie es dass einer zwischen neben
le la les des du un une et est dans sur avec pour au aux ce cette ces qui que sont pas ne se sa ses leur leurs
nous vous il ils elle elles où très
de el los las y del al con por para su sus como más está están una unos unas es entre sobre muy
il gli di è che della delle dello dei degli nel nella nei sul sulla alla alle sono uno
os um uma da dos das em na nos nas é são pela pelo muito
het een en op voor zijn niet aan bij naar ook dit deze wordt
""".split()) - ENGLISH_FUNCTION_WORDS - frozenset("die am an also so was in man will hat son me no as is on of to".split())
# Also left out, as English words in captions: per, par, hay, van, met, lo, e, o, com (".com").

#: French and Italian elided articles and pronouns: "d'une", "l'eau", "qu'il", "dell'arte".
_ELISIONS = ("l'", "d'", "qu'", "n'", "c'", "j'", "s'", "dell'", "all'", "un'", "nell'", "sull'")

#: Thresholds of :func:`language_problem`, measured in tests/test_generate_checks.py.
MIN_LATIN_SHARE = 0.5
MIN_WORDS_FOR_WORD_TEST = 6
MAX_ENGLISH_SHARE = 0.15
MIN_FOREIGN_SHARE = 0.2
MIN_FOREIGN_WORDS = 2

#: A word: a run of letters and digits, with an inner apostrophe ("don't", "l'eau").
_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")


def _is_latin(ch: str) -> bool:
    o = ord(ch)
    if o < 0x250 or 0x1E00 <= o <= 0x1EFF:  # ASCII, Latin-1, Latin Extended-A/B and Additional
        return True
    return unicodedata.name(ch, "").startswith("LATIN")


def language_problem(text: str, language: str = "en") -> str | None:
    """Why ``text`` does not look like ``language`` (None when it does). English only:

    * **script**: under :data:`MIN_LATIN_SHARE` of the letters are Latin (Chinese,
      Russian, Arabic...). Any length.
    * **words**, for :data:`MIN_WORDS_FOR_WORD_TEST` words or more: under
      :data:`MAX_ENGLISH_SHARE` of the words are English function words *and* at least
      :data:`MIN_FOREIGN_WORDS` words, :data:`MIN_FOREIGN_SHARE` of them, are German,
      French, Spanish, Italian, Portuguese or Dutch function words (lower case, or
      capitalised first word). Both, because the English share alone flags keyword
      alt-text ("VW T-ROC alloy wheel production vehicle teaser" has none), which a fused
      caption may legitimately copy.

    No model (no spaCy, no fastText). Measured on the English captions of CapsFusion's
    sample (10,000 BLIP and 10,000 fused) and COCO val2017 (25,014): the lowest Latin
    share is 0.76 (a fused caption quoting a Russian product name), and of the 533 with
    6+ words and an English share under 0.15, the highest foreign share is 0.04; the
    hand-written German, French and Spanish test sentences have foreign shares of 0.27 or
    more and English shares of 0.10 or less. Not detected: short Latin-script text in
    another language ("Das Haus"), a foreign title with one function word ("Chaussure
    Nike Air Max 2017 SE pour Homme"), languages outside the list above (Polish,
    Turkish...) unless their script differs, and mostly-Latin text with a little Cyrillic
    or CJK."""
    if language != "en":
        raise ConfigError(f"the language check knows only 'en' (got {language!r}); pass language=None to skip it")
    letters = [c for c in text if c.isalpha()]
    if letters:
        latin = sum(1 for c in letters if _is_latin(c))
        share = latin / len(letters)
        if share < MIN_LATIN_SHARE:
            return f"only {share:.0%} of the letters are Latin script"
    words = _WORD_RE.findall(text)
    if len(words) >= MIN_WORDS_FOR_WORD_TEST:
        folded = [w.casefold().replace("’", "'") for w in words]
        en = sum(1 for w in folded if w in ENGLISH_FUNCTION_WORDS) / len(words)
        # A foreign function word counts only in lower case (or capitalised as the first
        # word): "SE" in "iPhone SE" and "Che" in "Che Guevara" are not Spanish or Italian.
        n_fx = sum(1 for i, (w, f) in enumerate(zip(words, folded))
                   if (f in FOREIGN_FUNCTION_WORDS or f.startswith(_ELISIONS))
                   and (w.islower() or (i == 0 and w[:1].isupper() and w[1:].islower())))
        fx = n_fx / len(words)
        if en < MAX_ENGLISH_SHARE and n_fx >= MIN_FOREIGN_WORDS and fx >= MIN_FOREIGN_SHARE:
            return f"{fx:.0%} of the words are non-English function words, {en:.0%} English ones"
    return None


# --- prompt copies ------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\w+")


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.casefold())


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def prompt_copy_problem(text: str, prompt_texts: Sequence[str], inputs: Sequence[str],
                        shingle_words: int = SHINGLE_WORDS) -> str | None:
    """Why ``text`` copies the prompt (None when it does not). Words are ``\\w+`` runs,
    case-folded, so punctuation and spacing do not hide a copy. ``prompt_texts`` may be the
    rendered message texts (inputs included) or the template's
    :meth:`~curate.generate.templates.Template.instruction_texts`: a stretch that occurs
    in an input is exempt either way."""
    out = _tokens(text)
    if len(out) < MIN_WHOLE_COPY_WORDS:
        return None
    prompts = [_tokens(p) for p in prompt_texts]
    ins = [_tokens(i) for i in inputs]
    n = min(shingle_words, len(out))
    exempt: set[tuple[str, ...]] = set()
    for toks in ins:
        exempt |= _ngrams(toks, n)
    copied: set[tuple[str, ...]] = set()
    for toks in prompts:
        copied |= _ngrams(toks, n)
    copied -= exempt
    for i in range(len(out) - n + 1):
        gram = tuple(out[i:i + n])
        if gram in copied:
            what = "the whole answer is" if n == len(out) else f"{n} words in a row are"
            return f"{what} copied from the prompt: {' '.join(gram)!r}"
    return None


def _norm(text: str) -> str:
    return " ".join(_tokens(text))


# --- the check ----------------------------------------------------------------------------


def check_output(text: str | None, *, finish_reason: str | None, prompt_texts: Sequence[str],
                 inputs: Sequence[str], language: str | None = "en",
                 must_differ_from_inputs: bool = False) -> tuple[str, str | None]:
    """``(status, reason)`` of one model answer: ``("ok", None)``, or the first status of the
    module docstring's list that applies with a short reason for the audit table.
    ``prompt_texts`` are the prompt's texts (see :func:`prompt_copy_problem`), ``inputs``
    the captions the prompt showed (alt-text, synthetic caption, caption to rewrite)."""
    if isinstance(prompt_texts, str) or isinstance(inputs, str):
        raise TypeError("prompt_texts and inputs are sequences of strings, not one string")
    if language not in (None, "en"):
        raise ConfigError(f"the language check knows only 'en' (got {language!r}); pass language=None to skip it")
    cleaned = clean_output(text)
    if not any(c.isalnum() for c in cleaned):
        if finish_reason == "length":
            return "truncated", "the token limit was reached before any text"
        return "empty", "no answer" if not text else "no letters or digits"
    assert text is not None
    bad = _BAD_CHARS_RE.search(text)
    if bad:
        ch = bad.group()
        what = "U+FFFD (undecodable bytes)" if ch == "\ufffd" else f"control character U+{ord(ch):04X}"
        return "bad_text", f"{what} at character {bad.start()}"
    m = _REFUSAL_RE.match(cleaned)
    if m and not any(m.group().casefold() in given.casefold() for given in inputs):
        return "refusal", f"opens with {m.group()!r}"
    if finish_reason == "length":
        return "truncated", "finish_reason is 'length' (the token limit)"
    copy = prompt_copy_problem(cleaned, prompt_texts, inputs)
    if copy:
        return "prompt_copy", copy
    if must_differ_from_inputs:
        mine = _norm(cleaned)
        for i, given in enumerate(inputs):
            if mine == _norm(given):
                return "copy_of_input", f"the answer equals input {i}"
    if language is not None:
        problem = language_problem(cleaned, language)
        if problem:
            return "wrong_language", problem
    return "ok", None
