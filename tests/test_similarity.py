"""The FAISS layer against brute force: every index path returns the neighbours, pairs,
groups and tags that numpy returns over all pairs (in float64 of the stored float16
values), with exact ties ordered by row; bad input fails with one clear line and
writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from curate.errors import ConfigError, InputError, StoreError
from curate.similarity import (
    build_index,
    create_index,
    exact_duplicates,
    load_index,
    merged_captions,
    near_duplicates,
    semdedup,
    tag,
    target_filter,
)
from curate.similarity.groups import group_pairs
from curate.similarity.index import gpu_count, resolve_device
from curate.similarity.near import self_pairs
from curate.vectors import open_set, write_set

from .test_vectors import add_samples, make_uids, normalise, planted, sim_store  # noqa: F401

faiss = pytest.importorskip("faiss")

THR = 0.95
PATHS = [("Flat", {}), ("IVF8,Flat", {"nprobe": 8}), ("HNSW32", {"ef_search": 1024})]


def brute(vs):
    m = vs.matrix(np.float64)
    return m, m @ m.T


def oracle_knn(m, q, k):
    s = q @ m.T
    out = []
    for row in s:
        order = sorted(range(len(row)), key=lambda j: (-round(row[j], 9), j))[:k]
        out.append(order)
    return np.array(out)


def oracle_pairs(sim, thr):
    i, j = np.nonzero(np.triu(sim, 1) > thr)
    return set(zip(i.tolist(), j.tolist()))


def oracle_center_groups(sim, thr, rank):
    """The documented centre rule, written the slow obvious way."""
    n = len(sim)
    assigned, groups = set(), set()
    for u in sorted(range(n), key=lambda r: rank[r]):
        if u in assigned:
            continue
        assigned.add(u)
        members = [v for v in range(n) if v != u and v not in assigned and sim[u, v] > thr]
        if members:
            assigned.update(members)
            groups.add((u, frozenset([u, *members])))
    return groups


def first_rank(uids, runs):
    order = sorted(range(len(uids)), key=lambda r: (runs[r], uids[r]))
    rank = np.empty(len(uids), np.int64)
    rank[order] = np.arange(len(uids))
    return rank


# -- the index layer -----------------------------------------------------------------------
@pytest.mark.parametrize("factory, params", PATHS, ids=[p[0] for p in PATHS])
def test_knn_equals_brute_force_with_ties(sim_store, factory, params):
    s, x, uids, info = sim_store
    vs = open_set(s, "img")
    m, _ = brute(vs)
    index = build_index(vs, factory, **params)
    q = m[[300, 450, 0, 599, 501]].astype(np.float32)  # 300 and 450 are identical rows: a tie at the top
    sc, rows = index.knn(q, 6)
    want = oracle_knn(m, q.astype(np.float64), 6)
    assert np.array_equal(rows, want)
    assert rows[0][:2].tolist() == [300, 450] and rows[1][:2].tolist() == [300, 450]
    assert sc[0, 0] == sc[0, 1]
    assert np.allclose(sc, np.take_along_axis(q.astype(np.float64) @ m.T, want, 1), atol=1e-12)


@pytest.mark.parametrize("factory, params", PATHS, ids=[p[0] for p in PATHS])
def test_range_pairs_equal_brute_force(sim_store, factory, params):
    s, x, uids, info = sim_store
    vs = open_set(s, "img")
    _, sim = brute(vs)
    pi, pj, ps = self_pairs(build_index(vs, factory, **params), THR)
    want = oracle_pairs(sim, THR)
    assert set(zip(pi.tolist(), pj.tolist())) == want
    assert len(want) >= 40 + 10 + 2  # the planted pairs
    assert np.allclose(ps, sim[pi, pj], atol=1e-12)


def test_a_gpu_index_without_range_search_falls_back_to_the_cpu_index(sim_store):
    """The CPU twin of the GPU path: FAISS GPU indexes refuse range_search for some
    types (RuntimeError). No GPU here, so the GPU index is a stand-in that refuses
    exactly that; the answer must equal the CPU index's."""

    class RefusesRange:
        def __init__(self, cpu):
            self.cpu = cpu

        def search(self, q, k):
            return self.cpu.search(q, k)

        def range_search(self, q, r):
            raise RuntimeError("range search not implemented for this GPU index")

    s, x, uids, info = sim_store
    vs = open_set(s, "img")
    plain = build_index(vs, "Flat")
    want = [tuple(map(np.ndarray.tolist, part)) for part in plain.range(x[:300], THR, batch=100)]
    gpu = build_index(vs, "Flat")
    gpu._gpu = RefusesRange(gpu.cpu_index)
    got = [tuple(map(np.ndarray.tolist, part)) for part in gpu.range(x[:300], THR, batch=100)]
    assert got == want and sum(len(p[0]) for p in want) > 0


def test_ivf_pq_recall_against_brute_force(sim_store):
    """IVF-PQ is approximate, so the oracle measures it: recall@10 of k-NN and the share of
    the planted near-duplicate pairs that range search still finds. Scores of what it
    returns are exact (curate re-scores candidates against the stored vectors)."""
    s, x, uids, info = sim_store
    vs = open_set(s, "img")
    m, sim = brute(vs)
    index = build_index(vs, "IVF8,PQ8", nprobe=8)
    q = m[::7].astype(np.float32)
    sc, rows = index.knn(q, 10)
    want = oracle_knn(m, q.astype(np.float64), 10)
    recall = np.mean([len(set(r.tolist()) & set(w.tolist())) / 10 for r, w in zip(rows, want)])
    assert recall >= 0.9, recall  # 0.98 measured
    ok = rows >= 0
    assert np.allclose(sc[ok], (q.astype(np.float64) @ m.T)[np.nonzero(ok)[0], rows[ok]], atol=1e-12)
    pi, pj, ps = self_pairs(index, THR)
    truth = oracle_pairs(sim, THR)
    found = set(zip(pi.tolist(), pj.tolist()))
    assert found <= truth  # never a pair below the threshold: scores are exact
    assert len(found & truth) / len(truth) >= 0.9, (len(found), len(truth))  # 52 of 52 measured


def test_knn_pads_when_k_exceeds_the_set(store):
    uids = make_uids(3)
    add_samples(store, uids)
    write_set(store, "img", normalise(np.eye(3, 4) + 0.1), uids)
    sc, rows = build_index(open_set(store, "img")).knn(np.eye(1, 4), 5)
    assert rows[0, 3:].tolist() == [-1, -1] and np.isneginf(sc[0, 3:]).all()


def test_index_save_load_corrupt_and_stale(sim_store):
    s, x, uids, info = sim_store
    index, folder, run_id = create_index(s, "img", "IVF8,Flat", nprobe=8)
    assert (folder / "index.faiss").exists() and (folder / "settings.json").exists()
    assert folder.name == "img.ivf8_flat"
    loaded = load_index(s, "img.ivf8_flat")
    assert loaded.settings.nprobe == 8 and loaded.ntotal == 600
    q = open_set(s, "img").matrix()[:3]
    assert np.array_equal(loaded.knn(q, 4)[1], index.knn(q, 4)[1])
    assert s.con.execute("SELECT stage, status FROM runs WHERE run_id = ?", [run_id]).fetchall() == \
        [("similarity.index.v1", "ok")]
    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="index img.ivf8_flat: .* is corrupt or unreadable"):
        load_index(s, "img.ivf8_flat")
    create_index(s, "img", "Flat")
    write_set(s, "img", x[:300], uids[:300], replace=True)
    with pytest.raises(StoreError, match="index img.flat is stale"):
        load_index(s, "img.flat")
    with pytest.raises(StoreError, match="no index 'nope'"):
        load_index(s, "nope")


def test_bad_factory_queries_and_devices(sim_store):
    s, *_ = sim_store
    vs = open_set(s, "img")
    with pytest.raises(ConfigError, match="bad FAISS factory string 'IVFx'"):
        build_index(vs, "IVFx")
    with pytest.raises(InputError, match="fewer points than clusters"):
        build_index(vs, "IVF1024,Flat")
    with pytest.raises(InputError, match=r"queries must have shape \(n, 32\)"):
        build_index(vs).knn(np.ones((2, 31)), 3)
    with pytest.raises(InputError, match="NaN or inf"):
        build_index(vs).knn(np.full((1, 32), np.nan), 3)
    assert resolve_device("auto") == ("gpu" if gpu_count() else "cpu")
    if not gpu_count():
        with pytest.raises(ConfigError, match="FAISS sees no GPU"):
            resolve_device("gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0, reason="no GPU")
def test_gpu_knn_matches_cpu_and_splits_large_k(sim_store):  # pragma: no cover - needs a GPU
    s, *_ = sim_store
    vs = open_set(s, "img")
    q = vs.matrix()[:20]
    cpu = build_index(vs, "Flat", device="cpu").knn(q, 10)
    gpu = build_index(vs, "Flat", device="gpu", float16=True).knn(q, 10)
    assert np.array_equal(cpu[1], gpu[1])
    assert build_index(vs, "Flat", device="gpu").knn(q, 2100)[1].shape == (20, 2100)


# -- groups --------------------------------------------------------------------------------
@pytest.mark.parametrize("factory, params", PATHS, ids=[p[0] for p in PATHS])
def test_near_duplicate_groups_equal_brute_force(sim_store, factory, params):
    s, x, uids, info = sim_store
    vs = open_set(s, "img")
    _, sim = brute(vs)
    res = near_duplicates(s, "img", threshold=THR, factory=factory, **params)
    rank = first_rank(uids, [1 if i < 300 else 2 for i in range(600)])
    assert res.groups.as_sets() == oracle_center_groups(sim, THR, rank)
    rows = s.con.execute("SELECT kind, scope, member_kind, method, count(*), count(*) FILTER (WHERE kept) "
                         "FROM dedup_groups WHERE run_id = ? GROUP BY ALL", [res.run_id]).fetchall()
    assert rows == [("image_near", "img", "uid", "range", len(res.groups.row), res.groups.n_groups)]
    # the chain a~b~c: centre grouping keeps a with b, and c stays (not similar to a)
    a, b, c = info["chain"]
    assert (a, frozenset({a, b})) in res.groups.as_sets()
    # exact copies (identical rows, both from run 2): kept is the smaller uid
    for src, dst in info["exact"]:
        assert (src if uids[src] < uids[dst] else dst, frozenset({src, dst})) in res.groups.as_sets()
    # a near copy (run 2) of a run-1 row: the run-1 row is kept
    src, dst = info["near"][0]
    assert (src, frozenset({src, dst})) in res.groups.as_sets()


def test_components_grouping_keeps_one_per_chain(sim_store):
    s, x, uids, info = sim_store
    res = near_duplicates(s, "img", threshold=THR, grouping="components")
    a, b, c = info["chain"]
    assert (a, frozenset({a, b, c})) in res.groups.as_sets()
    sims = dict(zip(res.groups.row.tolist(), res.groups.similarity.tolist()))
    m = open_set(s, "img").matrix(np.float64)
    assert sims[c] == pytest.approx(m[a] @ m[c], abs=1e-12) and sims[c] < THR


def test_group_pairs_tie_and_order_independence():
    # 0~1, 0~2, 1~2 all tied: the kept member is the lowest rank, whatever the pair order
    pi, pj, ps = np.array([1, 0, 0]), np.array([2, 2, 1]), np.array([0.99, 0.99, 0.99])
    rank = np.array([2, 0, 1])
    for perm in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        g = group_pairs(pi[perm], pj[perm], ps[perm], rank, "center", lambda a, b: np.ones(len(a)))
        assert g.as_sets() == {(1, frozenset({0, 1, 2}))}
        assert g.size.tolist() == [3, 3, 3] and g.group.tolist() == [1, 1, 1]


def test_semdedup_one_cluster_equals_global_brute_force(sim_store):
    s, x, uids, info = sim_store
    _, sim = brute(open_set(s, "img"))
    res = semdedup(s, "img", eps=1 - THR, n_clusters=1, keep="first")
    rank = first_rank(uids, [1 if i < 300 else 2 for i in range(600)])
    assert res.groups.as_sets() == oracle_center_groups(sim, THR, rank)
    assert res.groups.n_groups == 40 + 10 + 1 and res.groups.removed == 40 + 10 + 1


@pytest.mark.parametrize("keep", ["farthest", "nearest", "first"])
def test_semdedup_clusters_equal_brute_force_per_cluster(sim_store, keep):
    s, x, uids, info = sim_store
    vs = open_set(s, "img")
    m, sim = brute(vs)
    res = semdedup(s, "img", eps=1 - THR, n_clusters=6, keep=keep, niter=10)
    cl = res.clustering
    # assignment: nearest centroid by brute force (ties: lowest centroid id)
    cs = m @ cl.centroids.astype(np.float64).T
    assert np.array_equal(cl.labels, np.argmax(cs, axis=1))
    assert np.allclose(cl.centroid_sim, cs[np.arange(600), cl.labels], atol=1e-12)
    same = cl.labels[:, None] == cl.labels[None, :]
    first = first_rank(uids, [1 if i < 300 else 2 for i in range(600)])
    primary = {"farthest": cl.centroid_sim, "nearest": -cl.centroid_sim, "first": np.zeros(600)}[keep]
    order = np.lexsort((first, primary))
    rank = np.empty(600, np.int64)
    rank[order] = np.arange(600)
    assert res.groups.as_sets() == oracle_center_groups(np.where(same, sim, -1), THR, rank)
    n = s.con.execute("SELECT count(*) FROM vector_clusters WHERE run_id = ? AND purpose = 'semdedup'",
                      [res.run_id]).fetchall()[0][0]
    assert n == 600


def test_semdedup_keep_rules_on_one_group(sim_store):
    s, x, uids, info = sim_store
    src, dst = info["near"][0]
    res = {k: semdedup(s, "img", eps=1 - THR, n_clusters=1, keep=k) for k in ("farthest", "nearest")}
    cs = {k: r.clustering.centroid_sim for k, r in res.items()}
    groups = {k: {m for kept, m in r.groups.as_sets() for _ in [0] if src in m} for k, r in res.items()}
    far_kept = next(kept for kept, m in res["farthest"].groups.as_sets() if src in m)
    near_kept = next(kept for kept, m in res["nearest"].groups.as_sets() if src in m)
    assert {far_kept, near_kept} == {src, dst}
    assert cs["farthest"][far_kept] < cs["farthest"][({src, dst} - {far_kept}).pop()]
    assert groups["farthest"] == groups["nearest"]
    # score: highest wins; NULL last
    s.con.execute("CREATE TABLE clip_scores (uid UUID, clip_score DOUBLE)")
    s.con.execute("INSERT INTO clip_scores VALUES (?, 0.1), (?, 0.3)", [uids[src], uids[dst]])
    r = semdedup(s, "img", eps=1 - THR, n_clusters=1, keep="score", score="clip_scores.clip_score")
    assert next(kept for kept, m in r.groups.as_sets() if src in m) == dst
    with pytest.raises(ConfigError, match="needs columns uid and nope"):
        semdedup(s, "img", keep="score", score="clip_scores.nope", n_clusters=1)


def test_semdedup_rerun_replaces_and_runs_rows(sim_store):
    s, *_ = sim_store
    a = semdedup(s, "img", eps=1 - THR, n_clusters=3)
    b = semdedup(s, "img", eps=1 - THR, n_clusters=3)
    assert a.config_hash == b.config_hash
    rows = s.con.execute("SELECT DISTINCT run_id FROM dedup_groups WHERE kind = 'image_semantic'").fetchall()
    assert rows == [(b.run_id,)]
    st = s.con.execute("SELECT kind, stage, status, rows_in FROM runs WHERE run_id = ?", [b.run_id]).fetchall()
    assert st == [("similarity", "similarity.semdedup.v1", "ok", 600)]
    c = semdedup(s, "img", eps=0.1, n_clusters=3)
    assert c.config_hash != a.config_hash
    assert {r[0] for r in s.con.execute("SELECT DISTINCT run_id FROM dedup_groups").fetchall()} == {b.run_id, c.run_id}


def test_semdedup_bad_input_writes_nothing(sim_store):
    s, *_ = sim_store
    with pytest.raises(InputError, match=r"600 vectors, fewer points than clusters \(601\)"):
        semdedup(s, "img", n_clusters=601)
    with pytest.raises(ConfigError, match="eps must be in"):
        semdedup(s, "img", eps=0)
    with pytest.raises(ConfigError, match="no vector set 'nope'"):
        semdedup(s, "nope")
    assert not s.has_table("dedup_groups") or s.count("dedup_groups") == 0


def test_failed_write_rolls_back_and_marks_the_run(sim_store, monkeypatch):
    s, *_ = sim_store
    import importlib

    sd = importlib.import_module("curate.similarity.semdedup")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sd, "write_groups", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        semdedup(s, "img", eps=1 - THR, n_clusters=2)
    assert s.count("dedup_groups") == 0 and s.count("vector_clusters") == 0
    assert s.con.execute("SELECT status, message FROM runs ORDER BY run_id DESC LIMIT 1").fetchall() == \
        [("failed", "RuntimeError: disk full")]


def test_text_set_semdedup(store):
    uids = make_uids(20)
    add_samples(store, uids)
    cids = [r[0] for r in store.con.execute("SELECT caption_id::VARCHAR FROM captions ORDER BY uid").fetchall()]
    x = normalise(np.random.default_rng(3).standard_normal((20, 16)))
    x[5] = x[4]
    write_set(store, "txt", x, cids, kind="text", variant="raw")
    res = semdedup(store, "txt", n_clusters=1, keep="first")
    assert res.groups.n_groups == 1
    assert store.con.execute("SELECT DISTINCT kind, member_kind FROM dedup_groups").fetchall() == \
        [("text_semantic", "caption_id")]


# -- exact, placeholders, caption merge ----------------------------------------------------
def test_exact_duplicates_and_placeholders(store):
    uids = make_uids(40)
    sha = [None] * 40
    sha[0] = sha[1] = sha[2] = "aaa"            # one image downloaded three times
    for i in range(10, 35):
        sha[i] = "placeholder"                 # 25 different urls, one picture
    sha[3] = sha[4] = "bbb"
    add_samples(store, uids, runs=[2 if i == 0 else 1 for i in range(40)], sha=sha)
    res = exact_duplicates(store, min_urls=20)
    assert (res.groups, res.duplicates, res.placeholders, res.placeholder_samples) == (2, 3, 1, 25)
    rows = store.con.execute("SELECT group_id, member_id::VARCHAR, kept FROM dedup_groups WHERE kind = 'image_exact' "
                             "ORDER BY group_id, kept DESC, member_id").fetchall()
    groups: dict[int, list] = {}
    for g, u, k in rows:
        groups.setdefault(g, []).append((u, k))
    kept = {g: [u for u, k in v if k] for g, v in groups.items()}
    aaa = next(g for g, v in groups.items() if {u for u, _ in v} == {uids[0], uids[1], uids[2]})
    assert kept[aaa] == [min(uids[1], uids[2])]   # uids[0] came in a later run
    ph = store.query("similarity.placeholders").fetchall()
    assert ph[0][:4] == ("placeholder", 25, 25, 7)


def test_mixing_policies_read_placeholders_and_target_selection(store):
    """The decisions these tables leave to a policy: `placeholder_image` drops the samples
    whose image is a placeholder; `target_selected` keeps the samples whose cluster the
    reference chose (latest runs)."""
    from curate.mix import policy_from_dict, run_policy

    uids = make_uids(60)
    sha = [f"img{i}" for i in range(60)]
    for i in range(10, 35):
        sha[i] = "placeholder"                 # 25 urls, one picture
    add_samples(store, uids, sha=sha)
    x = normalise(np.random.default_rng(4).standard_normal((60, 32)))
    write_set(store, "img", x, uids)
    write_set(store, "ref", x[:2] + 0.01, ["r0", "r1"], kind="concept")
    exact_duplicates(store, min_urls=20)
    res = target_filter(store, "img", "ref", n_clusters=4, niter=10)
    selected = {u for (u,) in store.con.execute(
        "SELECT uid::VARCHAR FROM target_selection WHERE selected AND run_id = ?", [res.run_id]).fetchall()}

    def chosen(select):
        pol = policy_from_dict({"policy": {"name": "p"}, "choose": {"strategy": "variant", "variant": "raw"},
                                "select": select})
        run_policy(store, pol)
        return {u for (u,) in store.con.execute("SELECT uid::VARCHAR FROM _mix_final").fetchall()}

    no_ph = chosen([{"attribute": "placeholder_image", "op": "=", "value": False}])
    assert no_ph == set(uids[:10] + uids[35:])
    tgt = chosen([{"attribute": "target_selected", "op": "=", "value": True}])
    assert tgt == selected and 0 < len(tgt) < 60
    both = chosen([{"attribute": "target_selected", "op": "=", "value": True},
                   {"attribute": "placeholder_image", "op": "=", "value": False}])
    assert both == selected & no_ph


def test_image_dedup_kept_follows_the_latest_image_dedup_run(sim_store):
    """mix attribute image_dedup_kept: after a strict near-dup run (0.99) the loose run's
    (0.95) extra drops no longer count; only the latest run of the kind and scope does."""
    from curate.mix import policy_from_dict, run_policy

    s, x, uids, info = sim_store
    pol = policy_from_dict({"policy": {"name": "d"}, "choose": {"strategy": "variant", "variant": "raw"},
                            "select": [{"attribute": "image_dedup_kept", "op": "=", "value": True}]})
    kept = []
    for threshold in (0.95, 0.99):
        res = near_duplicates(s, "img", threshold=threshold)
        dropped = {u for (u,) in s.con.execute(
            "SELECT member_id::VARCHAR FROM dedup_groups WHERE kind = 'image_near' AND NOT kept AND run_id = ?",
            [res.run_id]).fetchall()}
        run_policy(s, pol)
        chosen = {u for (u,) in s.con.execute("SELECT uid::VARCHAR FROM _mix_final").fetchall()}
        assert chosen == set(uids) - dropped
        kept.append(len(chosen))
    assert kept[0] < kept[1] < len(uids)


def test_merged_captions_view(sim_store):
    s, x, uids, info = sim_store
    before = s.con.execute("SELECT * FROM captions ORDER BY caption_id").fetchall()
    res = near_duplicates(s, "img", threshold=THR)
    t = merged_captions(s, "image_near", res.run_id)
    assert t.num_rows == res.groups.removed   # one raw caption per synthetic sample
    src, dst = info["near"][0]  # src (run 1) is kept
    row = [r for r in t.to_pylist() if str(r["duplicate_uid"]) == uids[dst]]
    assert str(row[0]["kept_uid"]) == uids[src] and row[0]["variant"] == "raw" and not row[0]["already_on_kept"]
    assert s.con.execute("SELECT * FROM captions ORDER BY caption_id").fetchall() == before
    summary = s.query("similarity.merged_captions", kind="image_near").fetchall()
    assert summary[0][:2] == ("raw", res.groups.removed)


def test_caption_aware_merge_adds_the_duplicates_captions_to_the_kept_sample(sim_store):
    from curate.similarity import merge_captions

    s, x, uids, info = sim_store
    res = near_duplicates(s, "img", threshold=THR)
    view = merged_captions(s, "image_near", res.run_id).to_pylist()
    before = s.con.execute("SELECT caption_id, uid, variant, text FROM captions ORDER BY caption_id").fetchall()
    out = merge_captions(s, "image_near")
    assert out["candidates"] == len(view) > 0 and out["added"] == sum(1 for r in view if not r["already_on_kept"])
    new = s.con.execute("SELECT uid::VARCHAR, variant, text, generator, provenance FROM captions "
                        "WHERE variant = 'raw_dup' ORDER BY uid, text").fetchall()
    want = sorted((str(r["kept_uid"]), "raw_dup", r["text"]) for r in view if not r["already_on_kept"])
    assert [row[:3] for row in new] == want
    src, dst = info["near"][0]
    mine = [row for row in new if row[0] == uids[src]]
    assert mine and all(row[3] == "merge:image_near" for row in mine)
    assert uids[dst] in {json.loads(row[4])["duplicate_uid"] for row in mine}
    old = s.con.execute("SELECT caption_id, uid, variant, text FROM captions WHERE variant <> 'raw_dup' "
                        "ORDER BY caption_id").fetchall()
    assert old == before  # nothing removed or changed
    assert merge_captions(s, "image_near")["added"] == 0  # a rerun adds nothing
    with pytest.raises(ConfigError, match="suffix must be"):
        merge_captions(s, "image_near", suffix="-x y")


# -- tags and the target filter ------------------------------------------------------------
@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_tags_equal_brute_force(sim_store, factory):
    s, x, uids, info = sim_store
    rng = np.random.default_rng(9)
    concepts = normalise(rng.standard_normal((30, 32)))
    concepts[7] = concepts[3]  # two concepts with one embedding: a tie, ranked by concept row
    names = [f"concept{i:02d}" for i in range(30)]
    write_set(s, "concepts", concepts, names, kind="concept")
    res = tag(s, "img", "concepts", k=4, factory=factory)
    assert res.rows == 600 * 4
    m = open_set(s, "img").matrix(np.float64)
    c = open_set(s, "concepts").matrix(np.float64)
    want = oracle_knn(c, m, 4)
    got = s.con.execute("SELECT uid::VARCHAR, concept, rank, score FROM concept_tags WHERE run_id = ? "
                        "ORDER BY uid, rank", [res.run_id]).fetchall()
    by_uid: dict[str, list] = {}
    for u, con, _r, sc in got:
        by_uid.setdefault(u, []).append((con, sc))
    for i, u in enumerate(uids):
        assert [con for con, _ in by_uid[u]] == [names[j] for j in want[i]]
        assert np.allclose([sc for _, sc in by_uid[u]], c[want[i]] @ m[i], atol=1e-12)
    tied = [i for i in range(600) if 3 in want[i]]
    assert tied and all(list(want[i]).index(7) == list(want[i]).index(3) + 1 for i in tied if 7 in want[i])
    assert s.query("similarity.tags_per_concept").fetchall()
    with pytest.raises(ConfigError, match="k must be between 1 and the 30 concepts"):
        tag(s, "img", "concepts", k=31)


def test_tag_wrong_dimension(sim_store):
    s, *_ = sim_store
    write_set(s, "c8", normalise(np.ones((3, 8)) + np.eye(3, 8)), ["a", "b", "c"], kind="concept")
    with pytest.raises(InputError, match="wrong dimension: concept set c8 has dim 8"):
        tag(s, "img", "c8")


def test_target_filter_selects_clusters_nearest_to_reference(sim_store):
    """Oracle: with the run's centres, every pool vector's cluster is its nearest centre
    (brute force), and a sample is selected exactly when some reference vector's nearest
    centre is its cluster, with cluster_hits = how many reference vectors chose it."""
    s, x, uids, info = sim_store
    rng = np.random.default_rng(21)
    ref = np.vstack([x[[0, 1, 2]] + 0.01, rng.standard_normal((5, x.shape[1]))])  # near points and random directions
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    write_set(s, "ref", ref, [f"r{i}" for i in range(len(ref))], kind="concept")
    res = target_filter(s, "img", "ref", n_clusters=6, niter=10)
    cents = np.asarray(res.centroids, np.float64)
    assert cents.shape == (6, x.shape[1])
    sel = {u: (c, hits, selected) for u, c, hits, selected in s.con.execute(
        "SELECT uid::VARCHAR, cluster, cluster_hits, selected FROM target_selection WHERE run_id = ?",
        [res.run_id]).fetchall()}
    pool = open_set(s, "img")
    xm = pool.matrix(np.float64)
    nearest = np.argmax(xm @ cents.T, axis=1)
    got = np.array([sel[u][0] for u in pool.ids().to_pylist()])
    assert (got == nearest).mean() > 0.999  # float16 storage may flip an exact tie
    ref_choice = np.argmax(open_set(s, "ref").matrix(np.float64) @ cents.T, axis=1)
    hits = np.bincount(ref_choice, minlength=6)
    for u, (c, h, selected) in sel.items():
        assert h == hits[c] and selected == (hits[c] > 0), u
    assert res.clusters_hit == int((hits > 0).sum()) < 6
    assert res.selected == sum(1 for _, _, selected in sel.values() if selected) > 0
    with pytest.raises(InputError, match="fewer points than clusters"):
        target_filter(s, "img", "ref", n_clusters=1000)


# -- the command line ----------------------------------------------------------------------
def _cli():
    import click

    from curate.cli.similarity import similarity
    from curate.cli.vectors import vectors

    @click.group()
    def root() -> None:
        pass

    root.add_command(vectors)
    root.add_command(similarity)
    return root


def test_cli_end_to_end(sim_store, tmp_path):
    s, x, uids, info = sim_store
    path = str(s.path)
    s.close()
    r = CliRunner()
    root = _cli()
    out = r.invoke(root, ["vectors", "list", "--store", path])
    assert out.exit_code == 0 and "img" in out.output
    out = r.invoke(root, ["similarity", "semdedup", "img", "--store", path, "--eps", "0.05", "--clusters", "1",
                          "--keep", "first"])
    assert out.exit_code == 0, out.output
    assert "51 duplicate groups, 51 duplicates" in out.output
    out = r.invoke(root, ["similarity", "neardup", "img", "--store", path, "--threshold", "0.95"])
    assert out.exit_code == 0 and "51 groups, 51 near duplicates" in out.output, out.output
    out = r.invoke(root, ["similarity", "index", "img", "--store", path, "--factory", "HNSW32", "--ef-search", "256"])
    assert out.exit_code == 0 and "index 'img.hnsw32'" in out.output, out.output
    out = r.invoke(root, ["similarity", "neardup", "img", "--store", path, "--index", "img.hnsw32"])
    assert out.exit_code == 0 and "51 groups" in out.output, out.output
    out = r.invoke(root, ["similarity", "report", "--store", path])
    assert out.exit_code == 0 and "image_semantic" in out.output and "image_near" in out.output
    out = r.invoke(root, ["similarity", "merge-captions", "--store", path, "--kind", "image_near"])
    assert out.exit_code == 0 and "51 captions merged into kept samples (51 captions of dropped duplicates" in out.output, \
        out.output
    out = r.invoke(root, ["similarity", "merge-captions", "--store", path, "--kind", "image_near"])
    assert out.exit_code == 0 and out.output.startswith("0 captions merged"), out.output
    out = r.invoke(root, ["vectors", "export", "img", str(tmp_path / "exp"), "--store", path])
    assert out.exit_code == 0 and "exported 600 image vectors" in out.output
    out = r.invoke(root, ["vectors", "import", "img2", str(tmp_path / "exp"), "--store", path])
    assert out.exit_code == 0 and "600 image vectors of dim 32" in out.output, out.output
    names = tmp_path / "names.txt"
    names.write_text("dog\ncat\nbird\n")
    np.save(tmp_path / "c.npy", normalise(np.random.default_rng(1).standard_normal((3, 32))).astype(np.float16))
    out = r.invoke(root, ["vectors", "import", "concepts", str(tmp_path / "c.npy"), "--ids", str(names),
                          "--kind", "concept", "--store", path])
    assert out.exit_code == 0, out.output
    out = r.invoke(root, ["similarity", "tag", "img", "concepts", "--k", "2", "--store", path])
    assert out.exit_code == 0 and "1,200 tag rows" in out.output, out.output


def test_cli_errors_are_one_line(sim_store):
    from curate.cli import cli, main

    s, *_ = sim_store
    path = str(s.path)
    s.close()
    from curate.cli.similarity import similarity

    if "similarity" not in cli.commands:
        cli.add_command(similarity)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["similarity", "semdedup", "img", "--clusters", "5000", "--store", path])
    assert code == 3
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert lines == ["error: set img has 600 vectors, fewer points than clusters (5,000); use fewer clusters"]


def test_long_similarity_commands_show_progress_on_request_and_stay_quiet_otherwise(sim_store):
    """`--progress` draws bars on stderr (issue 16, item 9: progress on every long
    command); without a terminal and without the flag, stderr stays empty and stdout keeps
    the one-line summary."""
    import subprocess
    import sys

    s, *_ = sim_store
    path = str(s.path)
    s.close()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "curate.cli", *args, "--store", path], capture_output=True,
                              text=True, timeout=120)

    r = run("similarity", "semdedup", "img", "--clusters", "2", "--progress")
    assert r.returncode == 0, r.stderr
    assert "assign to clusters" in r.stderr and "pairs within clusters" in r.stderr
    r = run("similarity", "neardup", "img", "--threshold", "0.95", "--progress")
    assert r.returncode == 0 and "add to Flat" in r.stderr and "range search" in r.stderr, r.stderr
    r = run("similarity", "neardup", "img", "--threshold", "0.95")
    assert r.returncode == 0 and r.stderr == "" and len(r.stdout.strip().splitlines()) == 1, (r.stdout, r.stderr)
