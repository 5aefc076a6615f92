"""Policy predicates as polars expressions (curate.mix.expr).

The oracle: the same predicates select the same samples whether DuckDB runs the
policy's SQL (``run_policy``) or polars filters the pool frame (``attribute_frame``)
with ``policy.select_expr()``. The store holds 400 real CapsFusion records (raw,
synthetic and fused captions) with caption statistics and caption dedup from curate's
own stages; CLIP scores and concept hits are seeded stand-ins made in SQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate import Store
from curate.errors import ConfigError
from curate.mix import (
    OneVariant,
    Policy,
    Predicate,
    attribute_frame,
    col,
    keep_fraction,
    load_policy,
    policy_from_dict,
    run_policy,
)
from curate.registry import build_stage
from curate.runner import RunOptions, run_stage

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "data"
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def xstore(tmp_path_factory):
    from curate.dedup import dedup_captions
    from curate.ingest import ingest

    root = tmp_path_factory.mktemp("mixexpr")
    records = json.loads((EXAMPLES / "capsfusion" / "example_data.json").read_text(encoding="utf-8"))[:400]
    subset = root / "capsfusion400.json"
    subset.write_text(json.dumps(records), encoding="utf-8")
    s = Store.init(root / "store")
    ingest(s, "capsfusion", subset, "capsfusion")
    run_stage(s, build_stage("text.caption_stats.v1"), RunOptions())
    dedup_captions(s, variant=["raw"], threshold=0.5)
    s.execute("""CREATE TABLE clip_scores AS SELECT caption_id, uid, 'stand-in' AS model,
        round(0.15 + 0.25 * (md5_number(caption_id::VARCHAR) % 1000)::DOUBLE / 1000, 2) AS score FROM captions""")
    # a few missing scores: NULLs must fail a predicate in both engines
    s.execute("DELETE FROM clip_scores WHERE md5_number(caption_id::VARCHAR) % 17 = 0")
    s.execute("""CREATE TABLE caption_concepts AS SELECT caption_id, 'toy' AS vocabulary, 'phrase' AS mode,
        'ok' AS status, [['cat', 'dog', 'eel'][1 + (md5_number(caption_id::VARCHAR || 'c') % 3)::INT]] AS concepts,
        1 AS n_concepts, 1 AS run_id FROM captions WHERE md5_number(caption_id::VARCHAR) % 3 = 0""")
    s.execute("""CREATE VIEW concept_hits AS SELECT k.caption_id, c.uid, c.source, c.variant, k.vocabulary, k.mode,
        u.concept FROM caption_concepts k JOIN captions c USING (caption_id), unnest(k.concepts) AS u(concept)""")
    yield s
    s.close()


def sql_selected(store, policy) -> set[str]:
    """uids the policy's SQL selects (every CapsFusion sample has a raw caption, so
    choosing raw drops none)."""
    run_policy(store, policy)
    return {r[0] for r in store.execute("SELECT uid::VARCHAR FROM _mix_final").fetchall()}


def polars_selected(store, policy) -> set[str]:
    return set(attribute_frame(store, policy).filter(policy.select_expr())["uid"].to_list())


def test_expressions_build_the_same_policy_as_toml():
    toml = policy_from_dict({
        "policy": {"name": "p"},
        "select": [{"attribute": "words", "variant": "raw", "op": ">=", "value": 3},
                   {"attribute": "clip_score", "variant": "raw", "op": ">=", "fraction": 0.3},
                   {"attribute": "dedup_kept", "variant": "raw", "op": "=", "value": True},
                   {"attribute": "concept", "variant": "fused", "vocabulary": "toy", "op": "not_in",
                    "value": ["cat", "dog"]}],
        "choose": {"strategy": "variant", "variant": "raw"}})
    expr = Policy("p", choose=OneVariant("raw"),
                  select=(col("words", "raw") >= 3) & keep_fraction(col("clip_score", "raw"), 0.3)
                  & col("dedup_kept", "raw") & ~col("concept", "fused", vocabulary="toy").is_in(["cat", "dog"]))
    assert expr == toml
    assert expr.hash() == toml.hash()
    # and back: every predicate's expression reads back as itself
    assert Policy("p", choose=OneVariant("raw"), select=[p.to_expr() for p in toml.select]) == toml


def test_plain_pl_col_names_work_like_col():
    a = Policy("p", select=pl.col("clip_score[raw, model=ViT-B-32]") < 0.2)
    b = Policy("p", select=col("clip_score", "raw", model="ViT-B-32") < 0.2)
    assert a == b and a.select == (Predicate("clip_score", "<", 0.2, variant="raw", model="ViT-B-32"),)
    assert col("n_concepts", "raw", vocabulary="toy", mode="paper").meta.output_name() == \
        "n_concepts[raw, vocabulary=toy, mode=paper]"


@pytest.mark.parametrize("bad, says", [
    (pl.col("words[raw]") + 1 > 2, "left side must be an attribute column"),
    ((pl.col("words[raw]") > 1) | (pl.col("chars[raw]") > 1), "cannot read"),
    (pl.col("words[raw]") > pl.col("chars[raw]"), "right side must be a literal value or keep_fraction"),
    (pl.col("words[raw]") > pl.col("words[raw]").quantile(0.7), "right side must be a literal value"),
    (pl.col("wordz") > 1, "unknown attribute 'wordz'"),
    (pl.col("words[raw, model=m]") > 1, "takes no model"),
    (pl.col("source[raw]") == "x", "sample attribute; it takes no variant"),
    (pl.col("words[raw]") == "three", "words is number"),
    (pl.col("n_concepts[raw]") > 0, "needs vocabulary"),
    (pl.col("clip_score[raw, model=a, model=b]") > 0, "unknown or repeated option"),
    (~(pl.col("words[raw]") > 1), "~ applies to"),
])
def test_unreadable_expressions_are_config_errors_naming_the_part(bad, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace("[", r"\[")):
        Policy("p", select=bad)


def test_col_checks_the_attribute_at_once():
    with pytest.raises(ConfigError, match="unknown attribute"):
        col("clipscore", "raw")
    with pytest.raises(ConfigError, match="takes no vocabulary"):
        col("words", "raw", vocabulary="toy")


def test_keep_fraction_matches_the_sql_threshold_where_quantile_does_not(xstore):
    """The order statistic of ``fraction``: at n = 10 and f = 0.95, k = ceil(9.5) = 10
    values pass; polars' quantile(0.05, 'higher') puts the threshold one value higher
    and passes 9."""
    df = pl.DataFrame({"x": [float(i) for i in range(10)]})
    assert df.filter(keep_fraction("x", 0.95)).height == 10
    assert df.filter(pl.col("x") >= pl.col("x").quantile(0.05, interpolation="higher")).height == 9
    pol = Policy("p", choose=OneVariant("raw"), select=keep_fraction(col("chars", "raw"), 0.95))
    assert sql_selected(xstore, pol) == polars_selected(xstore, pol)


def test_frame_and_sql_agree_on_a_shipped_style_policy(xstore):
    pol = Policy("p", choose=OneVariant("raw"),
                 select=(col("words", "raw") >= 4) & keep_fraction(col("clip_score", "raw"), 0.3)
                 & col("dedup_kept", "raw") & (col("n_concepts", "fused", vocabulary="toy") == 0))
    frame = attribute_frame(xstore, pol)
    assert frame.height == 400 and frame["uid"].n_unique() == 400
    assert set(frame.columns) == {"uid", "source", "words[raw]", "clip_score[raw]", "dedup_kept[raw]",
                                  "n_concepts[fused, vocabulary=toy]"}
    assert frame["clip_score[raw]"].null_count() > 0  # the deleted scores
    assert frame["dedup_kept[raw]"].null_count() == 0  # default true
    got = sql_selected(xstore, pol)
    assert 0 < len(got) < 400
    assert got == polars_selected(xstore, pol)


def test_a_shipped_policy_file_reads_as_expressions_and_back():
    pol = load_policy(REPO / "pipelines" / "policies" / "datacomp_clip_top30.toml")
    assert Policy(pol.name, choose=pol.choose, select=pol.select_expr(), weight=pol.weight, budget=pol.budget,
                  output=pol.output, seed=pol.seed, sources=pol.sources, description=pol.description) == pol


def test_frame_has_one_row_per_caption_when_a_column_reads_several(xstore):
    """``words`` without a variant reads every caption (three per CapsFusion sample): the
    frame has one row per caption with its id, the caption's own value, the sample
    columns repeated, and its filter selects what the SQL selects."""
    pol = Policy("p", choose=OneVariant("raw"), select=(col("words") >= 12) & keep_fraction(col("clip_score", "raw"), 0.5))
    frame = attribute_frame(xstore, pol)
    want = dict(xstore.execute("SELECT c.caption_id::VARCHAR, s.words FROM captions c "
                               "JOIN caption_stats s USING (caption_id)").fetchall())
    assert frame.columns == ["uid", "source", "caption_id", "words", "clip_score[raw]"]
    assert frame.height == len(want) == 1200 and frame["caption_id"].n_unique() == 1200
    assert dict(zip(frame["caption_id"], frame["words"])) == want
    assert (frame.group_by("uid").agg(pl.col("clip_score[raw]").n_unique(), pl.len())
            .filter((pl.col("clip_score[raw]") > 1) | (pl.col("len") != 3)).height) == 0
    got = sql_selected(xstore, pol)
    assert 0 < len(got) < 400
    assert got == polars_selected(xstore, pol)


def test_frame_has_one_row_per_caption_of_a_variant_with_several(store):
    """COCO's images have five to seven human captions: caption_id[human] names the
    caption of each row, and the selection equals the SQL's."""
    from curate.ingest import ingest

    with store as s:
        ingest(s, "coco", EXAMPLES / "coco" / "captions_val2017_first1000.json", "coco")
        run_stage(s, build_stage("text.caption_stats.v1"), RunOptions())
        pol = Policy("p", choose=OneVariant("human"), select=col("words", "human") >= 14)
        frame = attribute_frame(s, pol)
        n = s.execute("SELECT count(*) FROM captions WHERE variant = 'human'").fetchall()[0][0]
        assert frame.columns == ["uid", "source", "caption_id[human]", "words[human]"]
        assert frame.height == n > 1000 and frame["uid"].n_unique() == 1000
        got = sql_selected(s, pol)
        assert 0 < len(got) < 1000
        assert got == polars_selected(s, pol)


NUMERIC = [("words", "raw"), ("chars", "synthetic"), ("clip_score", "raw"), ("clip_score", "fused"),
           ("n_concepts", "raw")]


@st.composite
def predicates(draw):
    attr, variant = draw(st.sampled_from(NUMERIC + [("dedup_kept", "raw"), ("source", None)]))
    vocab = "toy" if attr == "n_concepts" else None
    if attr == "dedup_kept":
        return Predicate(attr, draw(st.sampled_from(["=", "!="])), draw(st.booleans()), variant=variant)
    if attr == "source":
        return Predicate(attr, draw(st.sampled_from(["in", "not_in"])),
                         tuple(draw(st.lists(st.sampled_from(["capsfusion", "laion"]), min_size=1, max_size=2))))
    op = draw(st.sampled_from(["<", "<=", ">", ">=", "=", "!="]))
    if op not in ("=", "!=") and draw(st.booleans()):
        return Predicate(attr, op, fraction=draw(st.sampled_from([0.05, 0.1, 0.3, 0.5, 0.77, 0.95, 1.0])),
                         variant=variant, vocabulary=vocab)
    value = {"words": st.integers(0, 30), "chars": st.integers(0, 200),
             "clip_score": st.sampled_from([0.15, 0.2, 0.25, 0.3, 0.33, 0.4]),
             "n_concepts": st.integers(0, 2)}[attr]
    return Predicate(attr, op, draw(value), variant=variant, vocabulary=vocab)


@SETTINGS
@given(preds=st.lists(predicates(), min_size=1, max_size=3))
def test_sql_and_polars_select_the_same_samples(xstore, preds):
    pol = Policy("p", choose=OneVariant("raw"), select=tuple(preds))
    assert Predicate.from_expr(pol.select_expr()) == pol.select
    assert sql_selected(xstore, pol) == polars_selected(xstore, pol)
