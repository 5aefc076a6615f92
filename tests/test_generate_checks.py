"""Output checks: every status on real-looking bad answers, and the false-positive rate on
real captions (CapsFusion's 10,000 triples and all 25,014 COCO val2017 captions)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from curate import ConfigError
from curate.generate.checks import STATUSES, check_output, clean_output, language_problem
from curate.generate.templates import load_template

#: Written for this test (not taken from any corpus): caption-like sentences an
#: English-prompted model might drift into.
NON_ENGLISH = {
    "de": [
        "Ein brauner Hund läuft über eine grüne Wiese neben einem alten Bauernhaus.",
        "Zwei Kinder spielen am Strand mit einem roten Ball und lachen.",
        "Das Bild zeigt eine belebte Straße in der Altstadt von München bei Nacht.",
        "Eine Frau mit einem blauen Hut sitzt auf einer Bank im Park.",
        "Auf dem Tisch stehen eine Tasse Kaffee und ein Teller mit Kuchen.",
        "Der Zug fährt durch eine verschneite Landschaft in den Alpen.",
    ],
    "fr": [
        "Un chat noir dort sur le rebord d'une fenêtre ensoleillée.",
        "Une femme marche dans la rue avec un parapluie rouge sous la pluie.",
        "L'image montre un vieux pont en pierre au-dessus d'une rivière calme.",
        "Deux hommes jouent aux échecs sur une table dans un café parisien.",
        "Le gâteau au chocolat est posé sur une assiette blanche avec des fraises.",
        "Des bateaux de pêche sont amarrés dans le port au coucher du soleil.",
    ],
    "es": [
        "Un perro blanco corre por la playa junto a las olas del mar.",
        "Una mujer sostiene una taza de café mientras lee un libro en el jardín.",
        "La imagen muestra una calle estrecha con casas de colores en el centro de la ciudad.",
        "Dos niños juegan al fútbol en un parque lleno de árboles.",
        "El coche rojo está aparcado frente a una tienda de flores.",
        "Hay una montaña cubierta de nieve detrás del lago azul.",
    ],
    "zh": [
        "一只棕色的狗在绿色的草地上奔跑。",
        "一位女士坐在公园的长椅上看书。",
        "夜晚的城市街道上有很多汽车和行人。",
        "桌子上放着一杯咖啡和一块蛋糕。",
        "两个孩子在海滩上玩红色的球。",
        "这张图片显示了一座雪山和一个蓝色的湖。",
    ],
    "ru": [
        "Коричневая собака бежит по зелёному лугу рядом со старым домом.",
        "Женщина в синей шляпе сидит на скамейке в парке.",
        "На столе стоят чашка кофе и тарелка с пирогом.",
        "Поезд едет через заснеженный лес зимой.",
        "Двое детей играют с красным мячом на пляже.",
        "На фотографии изображена оживлённая улица старого города ночью.",
    ],
}

#: Non-English LAION-2B alt-texts of the CapsFusion sample, each read by hand (Italian,
#: French, German, Spanish, Russian, Japanese; LAION-2B-en was language-filtered with CLD3,
#: which let them through). They are the ones some tuning of the language check flagged;
#: the check must flag nothing outside this list (no false positive), and most of it.
#: Short foreign product titles with a single function word ("Chaussure Nike Air Max 2017
#: SE pour Homme") are by design not flagged: one word is too little evidence.
LAION_2B_NOT_ENGLISH = {
    "Il Podcast di Memory Box Summer",  # it
    "Wallpaper di Eva Green su fondo scuro",  # it
    "Le Rose di Zucchero Filato - Location Grand hotel",  # it
    "Effort interne : contrainte sur une surface",  # fr
    "Lolywood - Perdu dans son Portable - Le Making-Of",  # fr
    "Hitman Absolution et Blood Money repérés sur PS4 et Xbox One",  # fr
    '"La Sale! Crew : un ""dirty mix"" en exclu"',  # fr
    "Chaussure Nike Air Max 2017 SE pour Homme",  # fr
    "ABC lexical de l'action commerciale (anglais)",  # fr
    "Outre Bixby, le Galaxy S8 et le S8+,... (Photo Brendan McDermid, archives REUTERS)",  # fr
    "Drapeau du Surinam conception de ondulation du drapeau 3D Le symbole national du Surinam, rendu 3D Couleurs "
    "nationales et l'Améri image libre de droits",  # fr
    "Hardwaretest: TomTom Bandit – der Outlaw unter den Action-Cams?",  # de
    "Watch Dogs - Screenshots der E3-Bloom-Mod",  # de
    "En Digital Podcast ⚡️ Startups y Marketing Digital",  # es
    "Georgetown, Carolina del Sur: Hampton Plantation House",  # es
    "Valle del Frances - Parc national Torres del Paine (Chili)",  # es/fr
    "Ideas para San Valentín: Love Collection de Swatch",  # es
    "Kate Middleton lució un brillante vestido de Missoni",  # es
    "prueba del peugeot rcz r de 270 cv en el jarama. Black Bedroom Furniture Sets. Home Design Ideas",  # es
    "Canal de youTube Willy Rex con numerosos tutoriales y gameplays",  # es
    "Табак CULTt C89 Blueberry Lime (Культ Голубика Лайм)",  # ru
    "Aクラス A45 4マチック 4WD",  # ja
    "★NIKE★Indy ロゴブラ★トレーニングにも最適!!★3色★",  # ja
}


@pytest.fixture(scope="module")
def fuse():
    return load_template("fuse-v1")


@pytest.fixture(scope="module")
def caption_prompt() -> list[str]:
    msgs = load_template("caption-v1").render(image=b"\xff\xd8\xff")
    return [msgs[0]["content"], msgs[1]["content"][1]["text"]]


@pytest.fixture(scope="module")
def capsfusion(capsfusion_file: Path) -> list[dict]:
    return json.loads(capsfusion_file.read_text("utf-8"))


def _texts(messages) -> list[str]:
    return [m["content"] for m in messages]


# --- real captions: the false-positive rate ------------------------------------------------


def test_capsfusion_fused_captions_are_ok_as_fuse_outputs(capsfusion, fuse):
    """Each real fused caption checked as the answer to fuse-v1 rendered with its own
    alt-text and synthetic caption (fused captions copy their alt-text: that is no prompt
    copy). Two are flagged, both rightly: CapsFus-LLaMA answered one pair in French and
    another with a question back ("Can you please provide more context ...?")."""
    flagged = {}
    for r in capsfusion:
        raw, syn, fused = r["laion_2b"], r["laion_coco"], r["capsfuion_official"]
        status, reason = check_output(fused, finish_reason="stop", prompt_texts=_texts(fuse.render(raw=raw, synthetic=syn)),
                                      inputs=[raw, syn])
        if status != "ok":
            flagged[fused[:40]] = status
    assert len(capsfusion) == 10_000
    assert flagged == {"Entrées légères et faciles à préparer, t": "wrong_language",
                       "Can you please provide more context or i": "refusal"}


def test_synthetic_captions_are_all_ok(capsfusion, caption_prompt):
    statuses = Counter(check_output(r["laion_coco"], finish_reason="stop", prompt_texts=caption_prompt, inputs=[])[0]
                       for r in capsfusion)
    assert statuses == {"ok": 10_000}


def test_raw_alt_text_flags_only_broken_bytes_and_foreign_text(capsfusion, caption_prompt):
    """LAION-2B alt-text as if it were an answer: flagged only for U+FFFD (mojibake in the
    crawl) and for the hand-checked non-English texts; no English alt-text is flagged."""
    by_status: dict[str, list[str]] = {}
    for r in capsfusion:
        status, _ = check_output(r["laion_2b"], finish_reason="stop", prompt_texts=caption_prompt, inputs=[])
        by_status.setdefault(status, []).append(r["laion_2b"])
    assert set(by_status) == {"ok", "bad_text", "wrong_language"}
    assert all("\ufffd" in t for t in by_status["bad_text"]) and len(by_status["bad_text"]) == 5
    assert not any("\ufffd" in t for t in by_status["ok"])
    flagged = set(by_status["wrong_language"])
    assert flagged <= LAION_2B_NOT_ENGLISH, flagged - LAION_2B_NOT_ENGLISH  # no false positive
    assert len(flagged) >= 0.75 * len(LAION_2B_NOT_ENGLISH)


def test_coco_captions_are_ok_except_the_annotators_own_refusals(coco_val2017_file, caption_prompt):
    """All 25,014 human COCO captions. The only flags are refusals, and each is a worker's
    note that there was no image ("I am unable to see an image above."): true positives."""
    anns = json.loads(coco_val2017_file.read_text("utf-8"))["annotations"]
    flagged = [(s, a["caption"]) for a in anns
               for s, _ in [check_output(a["caption"], finish_reason="stop", prompt_texts=caption_prompt, inputs=[])]
               if s != "ok"]
    assert len(anns) == 25_014
    assert flagged and {s for s, _ in flagged} == {"refusal"}
    assert all("image" in t.lower() and ("unable" in t or "no image" in t) for _, t in flagged)
    assert len(flagged) / len(anns) < 0.001


# --- language --------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", sorted(NON_ENGLISH))
def test_hand_written_non_english_is_flagged(lang, caption_prompt):
    for sentence in NON_ENGLISH[lang]:
        status, reason = check_output(sentence, finish_reason="stop", prompt_texts=caption_prompt, inputs=[])
        assert status == "wrong_language", (sentence, status, reason)
        if lang in ("zh", "ru"):
            assert "Latin script" in reason
        else:
            assert "non-English function words" in reason


def test_english_with_foreign_names_is_not_flagged():
    for text in ["Le Creuset Signature Round Dutch Oven in cerise red on a wooden table",
                 "Che Guevara Cover For iPhone SE/5/5s",
                 "A street sign for Calle de la Luna in Los Angeles at dusk",
                 "Tokyo skyline with the sign 東京タワー lit up at night over the bay"]:
        assert language_problem(text) is None, text


def test_language_none_skips_and_other_languages_are_refused():
    german = NON_ENGLISH["de"][0]
    assert check_output(german, finish_reason="stop", prompt_texts=[], inputs=[], language=None) == ("ok", None)
    with pytest.raises(ConfigError, match="only 'en'"):
        check_output("Ein Hund.", finish_reason="stop", prompt_texts=[], inputs=[], language="de")


# --- every status on real-looking bad answers -----------------------------------------------


@pytest.mark.parametrize("text", [None, "", "   \n ", '""', "...", "Caption:", "**Fused caption:**  "])
def test_empty(text):
    status, _ = check_output(text, finish_reason="stop", prompt_texts=[], inputs=[])
    assert status == "empty"


def test_empty_at_the_token_limit_is_truncated():
    """A reasoning model that spent max_tokens thinking returns no content: more tokens help."""
    assert check_output("", finish_reason="length", prompt_texts=[], inputs=[])[0] == "truncated"


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with identifying people in images.",
    "I’m sorry, I cannot see the image you are referring to.",
    "As an AI language model, I cannot view images.",
    "I cannot provide a caption for this image because it may contain explicit content.",
    "Unfortunately, I can't access the image you provided.",
    "I apologize, but there is no image attached to your message.",
    "Sorry, I can't describe this image.",
    "I'm unable to merge these captions because the alt-text is unrelated to the image.",
    "Caption: I'm sorry, but I cannot generate that.",
    '"As an AI, I do not have the ability to see pictures."',
    "There is no image provided, so I cannot write a caption.",
    "Could you please provide the image you would like me to describe?",
])
def test_refusal(text):
    status, reason = check_output(text, finish_reason="stop", prompt_texts=[], inputs=[])
    assert status == "refusal", (text, status, reason)


@pytest.mark.parametrize("text", [
    "Sorry I'm late I didn't want to come Long Sleeve Wide Neck Tee",
    "I'm sorry to see the tournament leave, a pink card with hearts",
    "I can't even T-shirt in black with white letters",
    "Sorry we're closed sign hanging on a glass door",
])
def test_slogans_that_sound_like_refusals_are_ok(text):
    status, _ = check_output(text, finish_reason="stop", prompt_texts=[], inputs=[])
    assert status == "ok"


def test_a_refusal_opening_copied_from_the_alt_text_is_not_a_refusal(fuse):
    raw, syn = "I can't help falling in love with you mug", "a white mug with red letters on it"
    out = "I can't help falling in love with you mug, a white mug with red letters."
    assert check_output(out, finish_reason="stop", prompt_texts=_texts(fuse.render(raw=raw, synthetic=syn)),
                        inputs=[raw, syn]) == ("ok", None)
    # without the alt-text saying so, the same opening reads as a refusal (a known limit)
    assert check_output(out, finish_reason="stop", prompt_texts=[], inputs=[syn])[0] == "refusal"


def test_truncated():
    text = "A group of people standing in front of the Eiffel Tower in Paris, France, on a sunny day with"
    assert check_output(text, finish_reason="length", prompt_texts=[], inputs=[])[0] == "truncated"
    assert check_output(text, finish_reason="stop", prompt_texts=[], inputs=[])[0] == "ok"
    # a cut-off refusal is a refusal: more tokens would not help
    assert check_output("I'm sorry, but I can't", finish_reason="length", prompt_texts=[], inputs=[])[0] == "refusal"


@pytest.mark.parametrize("text,where", [
    ("A cat sitting on a sof\ufffd in the living room", "U+FFFD"),
    ("Therapist\ufffds Choice\ufffd Stationary Therapy Table", "U+FFFD"),
    ("A dog\x00 running on the beach", "U+0000"),
    ("A red car parked\x1b[0m on the street", "U+001B"),
    ("A man riding a horse\x85 on a beach", "U+0085"),
    ("A bird on a branch \ud83d", "U+D83D"),
])
def test_bad_text(text, where):
    status, reason = check_output(text, finish_reason="stop", prompt_texts=[], inputs=[])
    assert status == "bad_text" and where in reason


def test_tabs_and_newlines_are_not_bad_text():
    assert check_output("A dog\ton a\nbeach.\r\n", finish_reason="stop", prompt_texts=[], inputs=[]) == ("ok", None)


def test_prompt_copy_of_the_instructions(fuse):
    raw, syn = "VW T-ROC alloy wheel production vehicle teaser", "The wheel on the Volkswagen SUV is shown."
    prompt = _texts(fuse.render(raw=raw, synthetic=syn))
    echo = ("Write one fluent English sentence about the image that joins the facts of the alt-text with the "
            "visual description of the machine caption.")
    status, reason = check_output(echo, finish_reason="stop", prompt_texts=prompt, inputs=[raw, syn])
    assert status == "prompt_copy" and "8 words in a row" in reason
    # the same check from the template's own wording, when the rendered prompt is not kept
    assert check_output(echo, finish_reason="stop", prompt_texts=fuse.instruction_texts(),
                        inputs=[raw, syn])[0] == "prompt_copy"
    # a fused caption that repeats its alt-text word for word is fine
    fused = f"{raw}: the wheel on the Volkswagen SUV is shown."
    assert check_output(fused, finish_reason="stop", prompt_texts=prompt, inputs=[raw, syn]) == ("ok", None)


def test_prompt_copy_of_an_in_context_example(laclip_dir):
    from curate.generate.templates import read_examples
    t = load_template("rewrite-v1")
    pairs = read_examples(laclip_dir / "meta_input_output_pairs.jsonl", strategy="chatgpt")[:3]
    caption = "a dog running along the beach at sunset"
    prompt = _texts(t.render(caption=caption, examples=pairs))
    copied = pairs[1][1]  # the model hands back an example's rewrite instead of its own
    assert len(copied.split()) >= 8
    assert check_output(copied, finish_reason="stop", prompt_texts=prompt, inputs=[caption])[0] == "prompt_copy"
    short = "Describe this image in a single sentence"  # 7 words: whole answer is the prompt
    cap = load_template("caption-v1").render(image=b"\xff\xd8\xff")
    cap_texts = [cap[0]["content"], cap[1]["content"][1]["text"]]
    status, reason = check_output(short, finish_reason="stop", prompt_texts=cap_texts, inputs=[])
    assert status == "prompt_copy" and "whole answer" in reason
    good = "A brown dog runs along the sandy beach as the sun sets."
    assert check_output(good, finish_reason="stop", prompt_texts=prompt, inputs=[caption]) == ("ok", None)


def test_copy_of_input_only_when_asked():
    caption = "white and red cheerful combination in the bedroom for girl"
    answer = "White and red cheerful combination in the bedroom, for girl."
    assert check_output(answer, finish_reason="stop", prompt_texts=[], inputs=[caption],
                        must_differ_from_inputs=True)[0] == "copy_of_input"
    assert check_output(answer, finish_reason="stop", prompt_texts=[], inputs=[caption]) == ("ok", None)
    rewrite = "A bright white-and-red colour scheme gives a girl's bedroom a cheerful look."
    assert check_output(rewrite, finish_reason="stop", prompt_texts=[], inputs=[caption],
                        must_differ_from_inputs=True) == ("ok", None)


def test_precedence_and_status_names():
    """Two faults at once: the earlier status in the documented order wins."""
    assert check_output("I'm sorry, but \ufffd", finish_reason="length", prompt_texts=[], inputs=[])[0] == "bad_text"
    assert check_output("Ein Hund läuft über eine grüne Wiese neben einem alten Haus und",
                        finish_reason="length", prompt_texts=[], inputs=[])[0] == "truncated"
    seen = {
        check_output(None, finish_reason=None, prompt_texts=[], inputs=[])[0],
        check_output("A dog\x00", finish_reason=None, prompt_texts=[], inputs=[])[0],
        check_output("I cannot do that.", finish_reason=None, prompt_texts=[], inputs=[])[0],
        check_output("A dog on a", finish_reason="length", prompt_texts=[], inputs=[])[0],
        check_output("one two three four five six seven eight", finish_reason=None,
                     prompt_texts=["say one two three four five six seven eight nine"], inputs=[])[0],
        check_output("a dog", finish_reason=None, prompt_texts=[], inputs=["A dog."], must_differ_from_inputs=True)[0],
        check_output(NON_ENGLISH["fr"][0], finish_reason=None, prompt_texts=[], inputs=[])[0],
        check_output("A dog on a beach.", finish_reason="stop", prompt_texts=[], inputs=[])[0],
    }
    assert seen == set(STATUSES)


def test_one_string_instead_of_a_list_is_refused():
    with pytest.raises(TypeError):
        check_output("A dog.", finish_reason="stop", prompt_texts="Describe the image.", inputs=[])


# --- clean_output ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw,clean", [
    ('  "A dog running on the beach."  ', "A dog running on the beach."),
    ("Caption: A dog running on the beach.", "A dog running on the beach."),
    ('Fused caption: "The VW T-ROC alloy wheel."', "The VW T-ROC alloy wheel."),
    ('"Caption: A dog."', "A dog."),
    ("**Rewritten caption:** A bright bedroom.", "A bright bedroom."),
    ("Here is the rewritten caption: A bright bedroom.", "A bright bedroom."),
    ('Here is a refined and merged sentence: "Paper top hats', '"Paper top hats'),  # real CapsFusion output, cut off
    ("Sure! Here's a fused caption: A red car.", "A red car."),
    ("A dog\n\n  on   a\tbeach.", "A dog on a beach."),
    ("“A man in a hat.”", "A man in a hat."),
    # not wrappers, not labels: unchanged
    ('"Stop" sign and a "Go" sign', '"Stop" sign and a "Go" sign'),
    ("The book 'Digging In' by Robert Benson", "The book 'Digging In' by Robert Benson"),
    ("Description of the living room with a sofa", "Description of the living room with a sofa"),
    ("The caption: a plaque under a painting", "The caption: a plaque under a painting"),
])
def test_clean_output(raw, clean):
    assert clean_output(raw) == clean


def test_clean_output_changes_few_real_captions(capsfusion):
    """Beyond whitespace, cleaning touches only wrapped or labelled answers: on the 30,000
    CapsFusion texts it changes 19, all fused captions (LLM answers in quotes or after
    "Here is a refined and merged sentence:"), never an alt-text or BLIP caption."""
    changed = Counter(k for r in capsfusion for k in ("laion_2b", "laion_coco", "capsfuion_official")
                      if clean_output(r[k]) != " ".join(r[k].split()))
    assert set(changed) == {"capsfuion_official"} and changed["capsfuion_official"] < 30
