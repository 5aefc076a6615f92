"""Property tests of mixing policies (hypothesis): budgets are never exceeded,
proportions land within the largest-remainder rounding, a threshold never admits a row
below it, a seed gives the same selection, weights are positive and finite.

The store is synthetic and built in SQL: 3 sources, raw and synthetic captions, a
``clip_scores`` table and concept hits. The CLIP scores are stand-ins (a seeded function
of caption_id) written to the table contract; the properties do not depend on their values.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate import Store
from curate.mix import Budget, MetaCLIPWeight, OneVariant, Policy, Predicate, Ratio, TemperatureWeight, run_policy
from curate.mix.compile import largest_remainder

N = 2000
SOURCES = ("a", "b", "c")
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pstore(tmp_path_factory):
    s = Store.init(tmp_path_factory.mktemp("mixprop") / "store")
    s.execute(f"""
        INSERT INTO samples (uid, source, url, run_id)
        SELECT md5_number('s' || i)::UUID, ['a', 'b', 'b', 'c', 'c', 'c'][1 + i % 6], 'http://x/' || i, 1
        FROM range({N}) r(i)""")
    s.execute("""
        INSERT INTO captions (caption_id, uid, variant, text, source, run_id)
        SELECT md5_number(uid::VARCHAR || v)::UUID, uid, v, 'caption ' || v || ' ' || uid::VARCHAR, source, 1
        FROM samples, (VALUES ('raw'), ('synthetic')) t(v)
        WHERE v = 'raw' OR hash(uid) % 4 <> 0""")
    s.execute("""
        CREATE TABLE clip_scores AS SELECT caption_id, uid, 'stand-in' AS model,
            (md5_number(caption_id::VARCHAR) % 1000)::DOUBLE / 1000 AS score FROM captions""")
    s.execute("""
        CREATE TABLE caption_concepts AS SELECT caption_id, 'toy' AS vocabulary, 'phrase' AS mode, 'ok' AS status,
            [['cat', 'dog', 'eel', 'fox', 'gnu', 'yak'][1 + least(5, floor(-ln(((md5_number(caption_id::VARCHAR) % 1000) + 1) / 1001.0))::INT)]]
            AS concepts, 1 AS n_concepts, 1 AS run_id
        FROM captions WHERE md5_number(caption_id::VARCHAR) % 5 <> 0""")
    s.execute("""
        CREATE VIEW concept_hits AS SELECT k.caption_id, c.uid, c.source, c.variant, k.vocabulary, k.mode, u.concept
        FROM caption_concepts k JOIN captions c USING (caption_id), unnest(k.concepts) AS u(concept)""")
    yield s
    s.close()


def final(store) -> list[tuple]:
    return store.execute("SELECT uid, caption_id, variant, source, weight FROM _mix_final ORDER BY key, uid").fetchall()


shares = st.lists(st.integers(0, 10), min_size=3, max_size=3).filter(lambda xs: sum(xs) > 0).map(
    lambda xs: {g: x / sum(xs) for g, x in zip(SOURCES, xs)})


def _normalised(p: dict[str, float]) -> dict[str, float]:
    # make the shares sum to exactly 1 in floating point, as validation requires
    keys = list(p)
    out = {k: p[k] for k in keys[:-1]}
    out[keys[-1]] = 1.0 - sum(out.values())
    return out


@SETTINGS
@given(samples=st.integers(0, 2500), seed=st.integers(0, 2**31), props=shares)
def test_budget_never_exceeded_and_proportions_within_rounding(pstore, samples, seed, props):
    props = _normalised(props)
    pol = Policy("p", choose=OneVariant("raw"), budget=Budget(samples=samples, by="source", proportions=props),
                 seed=seed)
    res = run_policy(pstore, pol)
    rows = final(pstore)
    assert len(rows) <= samples
    groups = res.counts["budget"]["groups"]
    assert sum(g["quota"] for g in groups.values()) == samples
    for name, g in groups.items():
        assert g["taken"] == min(g["quota"], g["available"])
        assert abs(g["quota"] - samples * props[name]) < 1  # largest remainder: floor or ceil of N*p
    by_source = {}
    for r in rows:
        by_source[r[3]] = by_source.get(r[3], 0) + 1
    assert by_source == {k: v["taken"] for k, v in groups.items() if v["taken"]}


@SETTINGS
@given(fraction=st.floats(0.01, 1.0), seed=st.integers(0, 1000), op=st.sampled_from([">=", "<="]))
def test_fraction_threshold_never_admits_a_row_beyond_it(pstore, fraction, seed, op):
    pol = Policy("p", choose=OneVariant("raw"),
                 select=(Predicate("clip_score", op=op, fraction=fraction, variant="raw"),), seed=seed)
    res = run_policy(pstore, pol)
    thr = res.thresholds[0]["threshold"]
    worst = pstore.execute("SELECT min(s.score), max(s.score), count(*) FROM _mix_final f "
                           "JOIN clip_scores s USING (caption_id)").fetchall()[0]
    if op == ">=":
        assert worst[0] >= thr
    else:
        assert worst[1] <= thr
    assert worst[2] >= math.ceil(N * fraction - 1e-9)  # at least the fraction (ties admitted)
    beyond = pstore.execute(
        f"SELECT count(*) FROM clip_scores s JOIN captions c USING (caption_id) WHERE c.variant = 'raw' "
        f"AND s.score {'>' if op == '>=' else '<'} {thr!r}").fetchall()[0][0]
    assert beyond < math.ceil(N * fraction - 1e-9)  # strictly better values are fewer than the quota


@SETTINGS
@given(value=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_value_threshold_never_admits_a_row_below_it(pstore, value, seed):
    pol = Policy("p", choose=OneVariant("synthetic"),
                 select=(Predicate("clip_score", op=">=", value=value, variant="synthetic"),), seed=seed)
    run_policy(pstore, pol)
    low = pstore.execute("SELECT count(*) FROM _mix_final f JOIN clip_scores s USING (caption_id) "
                         f"WHERE s.score < {value!r}").fetchall()[0][0]
    want = pstore.execute("SELECT count(*) FROM clip_scores s JOIN captions c USING (caption_id) "
                          f"WHERE c.variant = 'synthetic' AND s.score >= {value!r}").fetchall()[0][0]
    assert low == 0
    assert len(final(pstore)) == want


@SETTINGS
@given(seed=st.integers(0, 2**31), samples=st.integers(1, 1500), raw=st.floats(0.0, 1.0))
def test_a_seed_gives_the_same_selection(pstore, seed, samples, raw):
    pol = Policy("p", choose=Ratio({"raw": raw, "synthetic": 1.0 - raw}), budget=Budget(samples=samples), seed=seed)
    run_policy(pstore, pol)
    first = final(pstore)
    run_policy(pstore, pol)
    assert final(pstore) == first
    assert len(first) == samples
    run_policy(pstore, pol.with_seed(seed + 1))
    assert final(pstore) != first or samples == N


@SETTINGS
@given(t=st.integers(1, 2000), temperature=st.floats(0.1, 10.0), seed=st.integers(0, 100),
       captions=st.sampled_from(["chosen", "any"]), weighted=st.booleans())
def test_weights_are_positive_and_finite(pstore, t, temperature, seed, captions, weighted):
    for w in (MetaCLIPWeight(vocabulary="toy", t=t, captions=captions),
              TemperatureWeight(vocabulary="toy", temperature=temperature, captions=captions)):
        pol = Policy("p", choose=OneVariant("raw"), weight=w, seed=seed,
                     budget=Budget(samples=500, order="weighted" if weighted else "hash"))
        run_policy(pstore, pol)
        ws = [r[4] for r in final(pstore)]
        assert len(ws) == 500
        assert all(math.isfinite(x) and x > 0 for x in ws)
        if isinstance(w, MetaCLIPWeight):
            assert all(x <= 1.0 + 1e-12 for x in ws)


@given(total=st.integers(0, 10**7), props=shares)
def test_largest_remainder_sums_to_total_within_one(total, props):
    q = largest_remainder(total, props)
    assert sum(q.values()) == total
    assert all(abs(q[g] - total * p) < 1 for g, p in props.items())


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers(0, 20), min_size=1, max_size=300), data=st.data(), desc=st.booleans(),
       wrong=st.booleans())
def test_kth_value_is_the_order_statistic_even_from_a_wrong_candidate(values, data, desc, wrong):
    """``kth_value`` (the fraction threshold) against sorted() in Python. With ``wrong``
    the quantile candidate is taken at a random position, so the check-and-fallback
    path must still return the k-th value."""
    import duckdb

    from curate.mix.compile import kth_value

    k = data.draw(st.integers(1, len(values)))
    con = duckdb.connect()
    con.execute("CREATE TABLE v (value DOUBLE)")
    con.executemany("INSERT INTO v VALUES (?)", [[float(x)] for x in values])
    pos = data.draw(st.floats(0, 1)) if wrong else None
    want = sorted(values, reverse=desc)[k - 1]
    assert kth_value(con, "v", len(values), k, desc, pos) == want


def test_a_temperature_that_underflows_is_a_config_error_naming_it(pstore):
    pol = Policy("t", choose=OneVariant("raw"), weight=TemperatureWeight(vocabulary="toy", temperature=0.001))
    with pytest.raises(Exception) as e:
        run_policy(pstore, pol)
    assert type(e.value).__name__ == "ConfigError"
    assert "weights are not positive and finite; temperature 0.001 makes" in str(e.value)
