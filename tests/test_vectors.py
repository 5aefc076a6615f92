"""Embedding sets: validation, atomic writes, block-wise reading, importers and export.

The helpers at the top (samples in a store, synthetic embeddings with planted
duplicates) are shared with ``test_similarity.py``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import Store
from curate.errors import ConfigError, InputError, StoreError
from curate.vectors import (
    Block,
    export_clip_retrieval,
    import_clip_retrieval,
    import_datacomp,
    list_sets,
    open_set,
    write_set,
)


# -- shared helpers ------------------------------------------------------------------------
def make_uids(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [str(uuid.UUID(bytes=rng.bytes(16))) for _ in range(n)]


def add_samples(store: Store, uids: list[str], *, runs: list[int] | None = None, sha: list[str | None] | None = None,
                urls: list[str] | None = None, captions: bool = True) -> None:
    n = len(uids)
    t = pa.table({
        "uid": uids,
        "url": urls or [f"https://img{i % 7}.example.com/{i}.jpg" for i in range(n)],
        "sha256": sha or [None] * n,
        "run_id": runs or [1] * n,
    })
    store.con.register("_t_samples", t)
    store.con.execute("INSERT INTO samples (uid, source, url, sha256, run_id) "
                      "SELECT uid::UUID, 'synthetic', url, sha256, run_id FROM _t_samples")
    if captions:
        store.con.execute("INSERT INTO captions (caption_id, uid, variant, text, source, run_id) "
                          "SELECT md5_number(uid || chr(31) || 'raw' || chr(31) || 'caption of ' || url)::UUID, "
                          "uid::UUID, 'raw', 'caption of ' || url, 'synthetic', run_id FROM _t_samples")
    store.con.unregister("_t_samples")


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted(n: int = 600, d: int = 32, n_centers: int = 6, seed: int = 0):
    """Clustered unit vectors with planted near duplicates (cos ~0.99), exact copies
    (identical rows: exact ties) and a chain a~b~c with a and c not similar.

    Returns (vectors float32, info dict). Unrelated vectors have cosine < 0.9."""
    rng = np.random.default_rng(seed)
    centers = normalise(rng.standard_normal((n_centers, d)))
    lab = rng.integers(0, n_centers, n)
    x = normalise(centers[lab] + 0.9 * normalise(rng.standard_normal((n, d))))
    near = []
    for k in range(40):  # near copies of row k*7 at rows n-1-k... placed among the last rows
        src, dst = k * 7, n - 1 - k
        x[dst] = normalise((x[src] + 0.08 * normalise(rng.standard_normal((1, d)))[0])[None])[0]
        near.append((src, dst))
    exact = []
    for k in range(10):
        src, dst = 300 + k, 450 + k
        x[dst] = x[src]
        exact.append((src, dst))
    # a chain: cos(a, b) = cos(b, c) ~ 0.96, cos(a, c) = 0.85
    a = x[500]
    o = normalise(rng.standard_normal((1, d)))[0]
    o = normalise((o - (o @ a) * a)[None])[0]
    c = 0.85 * a + np.sqrt(1 - 0.85 ** 2) * o
    x[501] = normalise((a + c)[None])[0]
    x[502] = c
    return x.astype(np.float32), {"near": near, "exact": exact, "chain": (500, 501, 502)}


@pytest.fixture
def sim_store(tmp_path: Path):
    s = Store.init(tmp_path / "store")
    x, info = planted()
    uids = make_uids(len(x))
    add_samples(s, uids, runs=[1 if i < 300 else 2 for i in range(len(x))])
    write_set(s, "img", x, uids, model="synthetic")
    yield s, x, uids, info
    s.close()


# -- writing and reading -------------------------------------------------------------------
def test_write_read_roundtrip_blockwise(store):
    x, _ = planted(n=600, d=16)
    uids = make_uids(600)
    add_samples(store, uids)
    res = write_set(store, "img", x, uids, model="m", shard_rows=250)
    assert (res.count, res.dim, res.normalised) == (600, 16, 0)
    vs = open_set(store, "img")
    assert [r for _, _, r in vs.shards] == [250, 250, 100]
    assert (vs.path / "img_emb" / "img_emb_2.npy").exists() and (vs.path / "metadata" / "metadata_2.parquet").exists()
    meta = json.loads((vs.path / "meta.json").read_text())
    assert {k: meta[k] for k in ("dim", "kind", "count", "dtype", "normalised", "model")} == \
        {"dim": 16, "kind": "image", "count": 600, "dtype": "float16", "normalised": True, "model": "m"}
    assert vs.ids().to_pylist() == uids
    m = vs.matrix()
    assert np.allclose(m, x, atol=1e-3)
    assert np.abs(np.linalg.norm(m, axis=1) - 1).max() < 2e-3
    got = np.concatenate([b for _, b in vs.blocks(block_rows=77)])
    assert np.array_equal(got, m)
    idx = np.array([599, 0, 251, 250, 3])
    assert np.array_equal(vs.rows(idx), m[idx])
    assert store.con.execute("SELECT kind, status, rows_out FROM runs WHERE run_id = ?", [res.run_id]).fetchall() == \
        [("vectors", "ok", 600)]


def test_unnormalised_are_normalised_and_reported(store):
    uids = make_uids(10)
    add_samples(store, uids)
    x = normalise(np.random.default_rng(1).standard_normal((10, 8)))
    x[:3] *= 5
    res = write_set(store, "img", x, uids)
    assert res.normalised == 3 and "3 rows had |norm - 1|" in res.summary()
    assert np.allclose(np.linalg.norm(open_set(store, "img").matrix(), axis=1), 1, atol=2e-3)
    with pytest.raises(InputError, match="3 vectors are not L2-normalised"):
        write_set(store, "img2", x, uids, normalise="error")


def _nothing_written(store: Store, name: str) -> None:
    assert name not in list_sets(store)
    assert not [p for p in (store.path / "vectors").iterdir()
                if p.name == name or p.name.startswith(".tmp")]


def test_nan_inf_error_or_quarantine(store):
    uids = make_uids(10)
    add_samples(store, uids)
    x = normalise(np.random.default_rng(2).standard_normal((10, 8)))
    x[2, 1] = np.nan
    x[5, 0] = np.inf
    x[7] = 0
    with pytest.raises(InputError, match=r"2 vectors contain NaN or inf and 1 are all zeros \(first: row 2"):
        write_set(store, "img", x, uids)
    _nothing_written(store, "img")
    assert store.con.execute("SELECT status FROM runs ORDER BY run_id DESC LIMIT 1").fetchall() == [("failed",)]
    res = write_set(store, "img", x, uids, on_bad="quarantine")
    assert res.count == 7 and res.rejected == {"nan or inf": 2, "zero vector": 1}
    rows = store.con.execute("SELECT source, row_ref, reason, record FROM rejects WHERE run_id = ? ORDER BY row_ref",
                             [res.run_id]).fetchall()
    assert rows == [("vectors:img", "row 2", "nan or inf", uids[2]), ("vectors:img", "row 5", "nan or inf", uids[5]),
                    ("vectors:img", "row 7", "zero vector", uids[7])]
    assert open_set(store, "img").ids().to_pylist() == [u for i, u in enumerate(uids) if i not in (2, 5, 7)]


@pytest.mark.parametrize("case, match", [
    ("empty", "no vectors to write"),
    ("dim", "wrong dimension: expected 8, got 9"),
    ("dup", "1 duplicate ids"),
    ("unknown", "1 ids are not in samples.uid"),
    ("notuuid", "is not a UUID"),
    ("count", "10 vectors but 9 ids"),
    ("1d", "must be a 2-D array"),
])
def test_bad_input_writes_nothing(store, case, match):
    uids = make_uids(10)
    add_samples(store, uids)
    x = normalise(np.random.default_rng(3).standard_normal((10, 8))).astype(np.float32)
    ids = list(uids)
    vec: object = x
    if case == "empty":
        vec, ids = np.empty((0, 8), np.float32), []
    elif case == "dim":
        vec = [Block(x[:5], ids[:5]), Block(normalise(np.ones((5, 9))), ids[5:])]
        ids = None
    elif case == "dup":
        ids[4] = ids[3]
    elif case == "unknown":
        ids[0] = str(uuid.uuid4())
    elif case == "notuuid":
        ids[0] = "not-a-uuid"
    elif case == "count":
        ids = ids[:9]
    elif case == "1d":
        vec = x[0]
    before = store.con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
    with pytest.raises(InputError, match=match):
        write_set(store, "img", vec, ids)
    _nothing_written(store, "img")
    assert store.con.execute("SELECT count(*) FROM runs WHERE status = 'ok'").fetchall()[0][0] == 0
    assert store.con.execute("SELECT count(*) FROM runs").fetchall()[0][0] <= before + 1


def test_existing_name_replace_is_atomic(store):
    uids = make_uids(10)
    add_samples(store, uids)
    x = normalise(np.random.default_rng(4).standard_normal((10, 8)))
    write_set(store, "img", x, uids)
    with pytest.raises(ConfigError, match="exists"):
        write_set(store, "img", x, uids)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError):
        write_set(store, "img", bad, uids, replace=True)
    assert np.allclose(open_set(store, "img").matrix(), x, atol=1e-3)  # the old set is intact
    res = write_set(store, "img", x[:5], uids[:5], replace=True)
    vs = open_set(store, "img")
    assert vs.count == 5 and vs.run_id == res.run_id
    assert store.con.execute("SELECT count(*) FROM vector_sets").fetchall() == [(1,)]


def test_bad_name_and_unknown_set(store):
    with pytest.raises(ConfigError, match="must be 1-100 letters"):
        write_set(store, "../evil", np.ones((1, 2)), ["x"])
    with pytest.raises(ConfigError, match="no vector set 'nope'"):
        open_set(store, "nope")


def test_corrupt_shard_is_a_store_error(store):
    uids = make_uids(10)
    add_samples(store, uids)
    write_set(store, "img", normalise(np.ones((10, 8))) + 0, uids)
    vs = open_set(store, "img")
    (vs.path / vs.shards[0][0]).write_bytes(b"garbage")
    with pytest.raises(StoreError, match="cannot read img_emb/img_emb_0.npy"):
        vs.matrix()


def test_text_and_concept_sets(store):
    uids = make_uids(5)
    add_samples(store, uids)
    cids = [r[0] for r in store.con.execute("SELECT caption_id::VARCHAR FROM captions ORDER BY uid").fetchall()]
    x = normalise(np.random.default_rng(5).standard_normal((5, 8)))
    write_set(store, "txt", x, cids, kind="text", variant="raw")
    vs = open_set(store, "txt")
    assert vs.id_column == "caption_id" and (vs.path / "text_emb" / "text_emb_0.npy").exists()
    write_set(store, "concepts", x[:3], ["dog", "cat", "hot dog"], kind="concept")
    assert open_set(store, "concepts").ids().to_pylist() == ["dog", "cat", "hot dog"]


# -- importers and export ------------------------------------------------------------------
def test_clip_retrieval_export_import_roundtrip(store, tmp_path):
    uids = make_uids(50)
    add_samples(store, uids)
    x = normalise(np.random.default_rng(6).standard_normal((50, 8)))
    write_set(store, "img", x, uids, shard_rows=20)
    out = export_clip_retrieval(store, "img", tmp_path / "export")
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    meta = pq.read_table(out / "metadata" / "metadata_1.parquet")
    assert meta.column_names == ["uid", "url", "caption"]
    assert meta.column("uid").to_pylist() == uids[20:40]
    assert meta.column("caption")[0].as_py().startswith("caption of https://")
    res = import_clip_retrieval(store, "again", out)
    assert res.count == 50 and res.rejected == {}
    a, b = open_set(store, "img"), open_set(store, "again")
    assert np.array_equal(a.matrix(np.float16), b.matrix(np.float16))
    assert a.ids().to_pylist() == b.ids().to_pylist()


def test_clip_retrieval_by_url_with_rejects(store, tmp_path):
    uids = make_uids(6)
    urls = [f"https://a.example/{i}.jpg" for i in range(6)]
    urls[5] = urls[4]  # two samples share a url: ambiguous
    add_samples(store, uids, urls=urls)
    folder = tmp_path / "cr"
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    x = normalise(np.random.default_rng(7).standard_normal((6, 8))).astype(np.float16)
    np.save(folder / "img_emb" / "img_emb_0.npy", x)
    meta_urls = urls[:4] + [urls[4], "https://a.example/unknown.jpg"]
    pq.write_table(pa.table({"url": meta_urls, "caption": ["c"] * 6}), folder / "metadata" / "metadata_0.parquet")
    res = import_clip_retrieval(store, "img", folder)
    assert res.count == 4 and res.rejected == {"ambiguous url": 1, "no matching sample": 1}
    assert open_set(store, "img").ids().to_pylist() == uids[:4]
    refs = store.con.execute("SELECT row_ref, reason FROM rejects WHERE source = 'vectors:img' ORDER BY 1").fetchall()
    assert refs == [("img_emb_0.npy:4", "ambiguous url"), ("img_emb_0.npy:5", "no matching sample")]
    with pytest.raises(InputError, match="img_emb_0.npy:4: ambiguous url"):
        import_clip_retrieval(store, "img2", folder, on_bad="error")
    np.save(folder / "img_emb" / "img_emb_0.npy", x[:5])
    with pytest.raises(InputError, match=r"has shape \(5, 8\) but metadata_0.parquet has 6 rows"):
        import_clip_retrieval(store, "img3", folder)


def test_datacomp_npz_image_and_text(store, tmp_path):
    hexes = [uuid.UUID(u).hex for u in make_uids(8)]  # DataComp uids: 32 hex digits
    add_samples(store, [str(uuid.UUID(h)) for h in hexes[:7]])  # the 8th was never downloaded
    rng = np.random.default_rng(8)
    np.savez(tmp_path / "emb.npz", b32_img=normalise(rng.standard_normal((8, 16))).astype(np.float16),
             b32_txt=normalise(rng.standard_normal((8, 16))).astype(np.float16),
             l14_img=normalise(rng.standard_normal((8, 24))).astype(np.float16))
    pq.write_table(pa.table({"uid": hexes, "text": ["t"] * 8}), tmp_path / "meta.parquet")
    res = import_datacomp(store, "dc_l14", tmp_path / "emb.npz", tmp_path / "meta.parquet", key="l14_img")
    vs = open_set(store, "dc_l14")
    assert (res.count, vs.dim, vs.model) == (7, 24, "ViT-L-14/openai")
    assert res.rejected == {"no matching sample": 1}
    assert vs.ids().to_pylist() == [str(uuid.UUID(h)) for h in hexes[:7]]
    res = import_datacomp(store, "dc_txt", tmp_path / "emb.npz", tmp_path / "meta.parquet", key="b32_txt")
    tv = open_set(store, "dc_txt")
    assert tv.kind == "text" and tv.variant == "raw" and res.count == 7
    want = dict(store.con.execute("SELECT uid::VARCHAR, caption_id::VARCHAR FROM captions").fetchall())
    assert tv.ids().to_pylist() == [want[str(uuid.UUID(h))] for h in hexes[:7]]
    with pytest.raises(InputError, match="no array 'l14_txt'"):
        import_datacomp(store, "x", tmp_path / "emb.npz", tmp_path / "meta.parquet", key="l14_txt")
    with pytest.raises(ConfigError, match="key must be one of"):
        import_datacomp(store, "x", tmp_path / "emb.npz", tmp_path / "meta.parquet", key="vit_img")


def test_datacomp_export_round_trips_through_the_importer_and_the_cli(store, tmp_path, capsys):
    from curate.cli import main
    from curate.vectors import export_datacomp

    uids = make_uids(12)
    add_samples(store, uids)
    rng = np.random.default_rng(11)
    img = normalise(rng.standard_normal((12, 16)))
    write_set(store, "img", img[::-1], uids[::-1], shard_rows=5)  # set order differs from uid order
    caption_ids = dict(store.con.execute("SELECT uid::VARCHAR, caption_id::VARCHAR FROM captions").fetchall())
    txt = normalise(rng.standard_normal((10, 16)))
    write_set(store, "txt", txt, [caption_ids[u] for u in uids[:10]], kind="text", variant="raw")  # 2 samples lack text
    npz, meta_path, rows = export_datacomp(store, tmp_path / "shard.npz", {"b32_img": "img", "b32_txt": "txt"})
    assert rows == 10 and meta_path == tmp_path / "shard.parquet"
    meta = pq.read_table(meta_path)
    assert meta.column_names == ["uid", "url", "text"]
    order = sorted(uids[:10], key=lambda u: uuid.UUID(u).int)
    assert meta.column("uid").to_pylist() == [uuid.UUID(u).hex for u in order]
    with np.load(npz) as z:
        assert sorted(z.files) == ["b32_img", "b32_txt"] and z["b32_img"].dtype == np.float16
        want_img = {u: v for u, v in zip(uids, img)}
        np.testing.assert_allclose(z["b32_img"].astype(np.float32), np.stack([want_img[u] for u in order]), atol=2e-3)
    back = import_datacomp(store, "img_back", npz, meta_path, key="b32_img")
    assert back.count == 10 and open_set(store, "img_back").ids().to_pylist() == order
    back_t = import_datacomp(store, "txt_back", npz, meta_path, key="b32_txt")
    assert open_set(store, "txt_back").ids().to_pylist() == [caption_ids[u] for u in order] and back_t.count == 10
    # bad requests are one-line errors
    with pytest.raises(ConfigError, match="b32_txt holds text vectors, but set 'img' holds image vectors"):
        export_datacomp(store, tmp_path / "x.npz", {"b32_txt": "img"})
    with pytest.raises(ConfigError, match="key must be one of"):
        export_datacomp(store, tmp_path / "x.npz", {"vit_img": "img"})
    with pytest.raises(ConfigError, match="is an .npz file"):
        export_datacomp(store, tmp_path / "x.parquet", {"b32_img": "img"})
    # the CLI (with the store closed: one writer) writes the same shard
    store.close()
    assert main(["vectors", "export", "img", str(tmp_path / "cli.npz"), "--store", str(store.path), "--format", "datacomp",
                 "--key", "b32_img", "--with", "b32_txt=txt"]) == 0
    assert "exported 10 samples" in capsys.readouterr().out
    with np.load(npz) as a, np.load(tmp_path / "cli.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in ("b32_img", "b32_txt"))
    assert main(["vectors", "export", "img", str(tmp_path / "f"), "--store", str(store.path), "--key", "b32_img"]) != 0
