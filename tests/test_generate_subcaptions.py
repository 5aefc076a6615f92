"""Sub-captions: sentence splitting and prefixes on real long captions (GBC's LLaVA
descriptions, CapsFusion's fused captions), offsets that reproduce the text, and the
batched path checked against one call per caption."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from curate import ConfigError
from curate.generate.subcaptions import (
    Subcaption,
    prefixes,
    sentence_spans,
    split_sentences,
    subcaptions,
    subcaptions_batch,
)

pytest.importorskip("spacy")


@pytest.fixture(scope="module")
def gbc_texts(gbc_dir: Path) -> list[str]:
    """GBC's free-text descriptions: per image the short and detailed caption, and every
    region's ``detail``/``short`` description (LLaVA prose; the ``hardcode``, ``relation``
    and ``composition`` ones are templated fragments)."""
    out = []
    for line in (gbc_dir / "wiki_gbc_graphs.jsonl").read_text("utf-8").splitlines():
        g = json.loads(line)
        out += [g["short_caption"], g["detail_caption"]]
        out += [d["text"] for v in g["vertices"] for d in v["descs"] if d["label"] in ("detail", "short")]
    return out


@pytest.fixture(scope="module")
def gbc_all(gbc_dir: Path) -> list[str]:
    out = []
    for line in (gbc_dir / "wiki_gbc_graphs.jsonl").read_text("utf-8").splitlines():
        g = json.loads(line)
        out += [g["short_caption"], g["detail_caption"]] + [d["text"] for v in g["vertices"] for d in v["descs"]]
    return out


@pytest.fixture(scope="module")
def fused(capsfusion_file: Path) -> list[str]:
    return [r["capsfuion_official"] for r in json.loads(capsfusion_file.read_text("utf-8"))]


def _non_space(s: str) -> str:
    return re.sub(r"\s+", "", s)


# --- sentences ------------------------------------------------------------------------------------


def test_gbc_sentences_cover_the_text_and_look_like_sentences(gbc_texts):
    """Every sentence of GBC's LLaVA prose starts with a capital and ends with terminal
    punctuation, the spans are in order and disjoint, and together they hold every
    non-space character of the text."""
    n_multi = 0
    for text in gbc_texts:
        spans = sentence_spans(text)
        assert spans and all(s < e for s, e in spans)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        assert _non_space("".join(text[s:e] for s, e in spans)) == _non_space(text)
        sents = split_sentences(text)
        assert sents == [text[s:e] for s, e in spans]
        for s in sents:
            assert s == s.strip() and s[0].isupper() and s[-1] in ".!?", (s, text)
        n_multi += len(sents) > 1
    assert n_multi >= 100  # most of these descriptions have several sentences


def test_capsfusion_sentences_cover_the_text(fused):
    multi = 0
    for text in fused:
        spans = sentence_spans(text)
        assert _non_space("".join(text[s:e] for s, e in spans)) == _non_space(text)
        multi += len(spans) > 1
    assert 1000 < multi < 2000  # about one fused caption in eight has more than one sentence


@pytest.mark.parametrize("text,expected", [
    ("Dr. Smith walks a dog. It is sunny.", ["Dr. Smith walks a dog.", "It is sunny."]),
    ("A van from the U.S. Postal Service, e.g. a mail truck. It is white.",
     ["A van from the U.S. Postal Service, e.g. a mail truck.", "It is white."]),
    ("A bottle of Chanel No. 5 on a shelf. It is gold.", ["A bottle of Chanel No. 5 on a shelf.", "It is gold."]),
    ("A room with a t.v. and a sofa. The walls are blue.", ["A room with a t.v. and a sofa.", "The walls are blue."]),
    ("A sign. (It is red.) A pole.", ["A sign.", "(It is red.)", "A pole."]),
    ('He said no. "Stop here." Then left.', ["He said no.", '"Stop here."', "Then left."]),
    ("Tot nachos (also known as totchos!), are good. Yes.", ["Tot nachos (also known as totchos!), are good.", "Yes."]),
    ("Stampin' Up! offers punches. They are round.", ["Stampin' Up! offers punches.", "They are round."]),
    ("Bedroom ideas. #teen #decor", ["Bedroom ideas.", "#teen #decor"]),
    ("Objects:\n- a red car\n- a tree\n\nA street.", ["Objects:", "- a red car", "- a tree", "A street."]),
    # documented limits
    ("He moved to the U.S. Then he left.", ["He moved to the U.S. Then he left."]),
    ("A dog A cat", ["A dog A cat"]),
    ("Fruit, bread, etc. A table.", ["Fruit, bread, etc.", "A table."]),
])
def test_sentence_rules(text, expected):
    assert split_sentences(text) == expected


def test_blank_text():
    assert split_sentences("") == [] and split_sentences("  \n ") == []
    assert subcaptions("") == [] and subcaptions(None) == []


# --- prefixes -------------------------------------------------------------------------------------


def test_prefixes_in_words():
    text = "A man, in a red shirt - walking a dog"
    assert prefixes(text, [1, 2, 3, 7, 8, 9, 10, 50]) == [
        "A", "A man", "A man, in", "A man, in a red shirt", "A man, in a red shirt - walking", "A man, in a red shirt - walking a"]
    # budget 6 and 7 cut at the same place (the dangling dash is trimmed): given once
    assert prefixes(text, [6, 7]) == ["A man, in a red shirt"]
    assert prefixes(text, [10]) == [] and prefixes(text, [9]) != []  # 10 words: a 10-word budget is the whole text
    assert prefixes("   ", [1]) == []


def test_prefixes_in_chars():
    text = "A dog runs on the beach"
    assert prefixes(text, [1, 5, 10, 12, 13, 23, 40], unit="chars") == ["A", "A dog", "A dog runs", "A dog runs on"]
    assert prefixes("Extraordinary dog", [5], unit="chars") == []  # no whole word fits


def test_prefixes_of_real_long_captions(gbc_texts):
    budgets = [5, 10, 20, 40, 80]
    for text in gbc_texts:
        words = text.split()
        got = prefixes(text, budgets)
        assert len(got) == sum(b < len(words) for b in budgets)
        for p, b in zip(got, budgets):
            assert text.startswith(p) and p != text.strip()
            # the first b words, less a dangling comma/dash/bracket
            assert " ".join(words[:b]).startswith(p) and len(p.split()) in (b, b - 1)
            assert (p[-1] not in ",;:-(" and text[len(p)].isspace()) or text[len(p)] in ",;:-("


@pytest.mark.parametrize("budgets,unit", [([0], "words"), ([-1], "words"), ([2.5], "words"), ([True], "words"),
                                          (5, "words"), ([3], "tokens")])
def test_bad_budgets(budgets, unit):
    with pytest.raises(ConfigError):
        prefixes("a b c d e f", budgets, unit=unit)


# --- subcaptions ----------------------------------------------------------------------------------


def test_subcaptions_of_a_gbc_description(gbc_dir):
    g = json.loads((gbc_dir / "wiki_gbc_graphs.jsonl").read_text("utf-8").splitlines()[0])
    text = g["detail_caption"]
    subs = subcaptions(text, prefix_words=(10, 20, 1000))
    sents = split_sentences(text)
    assert [s.text for s in subs if s.kind == "sentence"] == sents and len(sents) >= 3
    assert [s.index for s in subs if s.kind == "sentence"] == list(range(len(sents)))
    pre = [s for s in subs if s.kind == "prefix"]
    assert [(p.index, len(p.text.split())) for p in pre] == [(0, 10), (1, 20)]  # 1000 words is the whole text
    for s in subs:
        assert isinstance(s, Subcaption) and text[s.start:s.end] == s.text and s.text != text


def test_offsets_reproduce_the_text_on_real_captions(gbc_all, fused):
    for text in gbc_all + fused[:3000]:
        for s in subcaptions(text, prefix_words=(8, 16, 32), min_words=1, max_per_caption=100):
            assert text[s.start:s.end] == s.text
            assert s.text == s.text.strip() and s.text.strip() != text.strip()


def test_never_the_parent_and_no_repeats():
    one = "A brown dog runs along the sandy beach."
    assert subcaptions(one) == []  # its only sentence is the caption itself
    assert subcaptions(one, prefix_words=(3,)) == [Subcaption("A brown dog", "prefix", 0, 0, 11)]
    two = "A brown dog runs. A brown dog runs! The sea is calm."
    got = subcaptions(two)
    assert [s.text for s in got] == ["A brown dog runs.", "The sea is calm."]  # the repeat (case, final mark aside) goes
    assert [s.index for s in got] == [0, 2]  # indices count every sentence of the parent
    # a prefix equal to a sentence is not given twice
    assert [s.kind for s in subcaptions(two, prefix_words=(4,))] == ["sentence", "sentence"]


def test_min_words_and_max_per_caption(fused):
    text = "A dog. It runs fast on the sand. The sky is blue and clear today. Birds fly."
    assert [s.text for s in subcaptions(text)] == ["It runs fast on the sand.", "The sky is blue and clear today."]
    assert [s.text for s in subcaptions(text, min_words=1)][:2] == ["A dog.", "It runs fast on the sand."]
    assert len(subcaptions(text, min_words=1, max_per_caption=2)) == 2
    long = max(fused, key=lambda t: len(split_sentences(t)))
    assert len(subcaptions(long, prefix_words=tuple(range(2, 60, 2)), min_words=1)) == 16
    for bad in ({"min_words": 0}, {"max_per_caption": 0}, {"min_words": 2.0}):
        with pytest.raises(ConfigError):
            subcaptions(text, **bad)


def test_prefixes_only_needs_no_sentences():
    text = "A dog runs. It is fast and happy today."
    got = subcaptions(text, sentences=False, prefix_words=(3, 5))
    assert [(s.kind, s.text) for s in got] == [("prefix", "A dog runs."), ("prefix", "A dog runs. It is")]


# --- batch oracle ---------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {}, {"prefix_words": (5, 10, 20, 40)}, {"min_words": 1, "max_per_caption": 4, "prefix_words": (3,)},
    {"sentences": False, "prefix_words": (4, 8)},
])
def test_batch_equals_one_call_per_caption(gbc_all, fused, options):
    texts = gbc_all + fused + [None, "", "   ", "One.", "A b c. D e f."]
    batch = subcaptions_batch(texts, batch_size=257, **options)
    assert len(batch) == len(texts)
    assert batch == [subcaptions(t, **options) for t in texts]
    assert sum(map(len, batch)) > 0


def test_one_sentence_shortcut_equals_the_sentencizer(gbc_all, fused, capsfusion_file):
    """Captions without inner terminal punctuation skip spaCy; for every real caption that
    takes the shortcut, the full path (sentencizer and repairs) gives the same span."""
    from curate.generate.subcaptions import _nlp, _one_sentence, _spans_of_doc

    raw = [r["laion_2b"] for r in json.loads(capsfusion_file.read_text("utf-8"))]
    nlp = _nlp()
    taken = 0
    for text in gbc_all + fused + raw + ["A dog.)", 'A dog."  ', "A dog!?", "  A dog  ", "A dog...", "A dog\n"]:
        one = _one_sentence(text)
        if one is not None:
            taken += 1
            assert [one] == _spans_of_doc(text, nlp(text)), text
    assert taken > 10_000  # most real captions take it
