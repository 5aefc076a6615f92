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
    assert meta.column("uid").to_pylist() == [u.replace("-", "") for u in uids[20:40]]  # 32 hex, as curate mix writes
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


# -- bad import files: one error line, nothing written (issue 17) ----------------------------
def _bad_import_case(case: str, tmp: Path, uids: list[str]) -> tuple[list[str], str]:
    """(argv after `vectors import NAME`, the file the error must name) for a bad input."""
    x = normalise(np.random.default_rng(12).standard_normal((len(uids), 8))).astype(np.float32)
    ids = tmp / "ids.txt"
    ids.write_text("\n".join(uids) + "\n", encoding="utf-8")
    good = tmp / "good.npy"
    np.save(good, x)
    raw = good.read_bytes()
    folder = tmp / "cr"
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    for i, part in enumerate((slice(0, 3), slice(3, None))):
        np.save(folder / "img_emb" / f"img_emb_{i}.npy", x[part])
        pq.write_table(pa.table({"uid": uids[part]}), folder / "metadata" / f"metadata_{i}.parquet")
    shard1 = folder / "img_emb" / "img_emb_1.npy"
    npz, uid_pq = tmp / "d.npz", tmp / "d.parquet"
    np.savez(npz, l14_img=x)
    pq.write_table(pa.table({"uid": [u.replace("-", "") for u in uids]}), uid_pq)
    f = tmp / "bad.npy"
    if case == "ids not utf-8":
        bad_ids = tmp / "ids-latin1.txt"
        bad_ids.write_bytes(("\n".join(uids[:2]) + "\ncaf\xe9\n").encode("latin-1"))
        return [str(good), "--ids", str(bad_ids)], "ids-latin1.txt: not UTF-8 text (line 3"
    if case == "ids parquet corrupt":
        bad_ids = tmp / "ids.parquet"
        bad_ids.write_bytes(b"PAR1 not really")
        return [str(good), "--ids", str(bad_ids)], "ids.parquet: cannot read ids"
    if case == "zero-byte npy":
        f.write_bytes(b"")
        return [str(f), "--ids", str(ids)], "bad.npy: empty file (0 bytes)"
    if case == "truncated npy data":
        f.write_bytes(raw[:-40])
        return [str(f), "--ids", str(ids)], "bad.npy: not a readable .npy file"
    if case == "truncated npy header":
        f.write_bytes(raw[:60])
        return [str(f), "--ids", str(ids)], "bad.npy: not a readable .npy file"
    if case == "3-d npy":
        np.save(f, x.reshape(len(uids), 4, 2))
        return [str(f), "--ids", str(ids)], "bad.npy: shape (6, 4, 2)"
    if case == "integer npy":
        np.save(f, (x * 100).astype(np.int32))
        return [str(f), "--ids", str(ids)], "bad.npy: dtype int32"
    if case in ("nan", "inf"):
        y = x.copy()
        y[4, 2] = np.nan if case == "nan" else -np.inf
        np.save(f, y)
        return [str(f), "--ids", str(ids)], "1 vectors contain NaN or inf and 0 are all zeros (first: bad.npy:4"
    if case == "zero-byte shard":
        shard1.write_bytes(b"")
        return [str(folder)], "img_emb_1.npy: empty file (0 bytes)"
    if case == "truncated shard":
        shard1.write_bytes(shard1.read_bytes()[:-10])
        return [str(folder)], "img_emb_1.npy: not a readable .npy file"
    if case == "shard of another dimension":
        np.save(shard1, normalise(np.ones((3, 9))).astype(np.float32))
        return [str(folder)], "img_emb_1.npy: wrong dimension 9; img_emb_0.npy has 8"
    if case == "nan in a shard":
        y = x[3:].copy()
        y[1, 0] = np.nan
        np.save(shard1, y)
        return [str(folder), "--on-bad", "error"], "(first: img_emb_1.npy:1"
    if case == "corrupt metadata":
        (folder / "metadata" / "metadata_1.parquet").write_bytes(b"nope")
        return [str(folder)], "metadata_1.parquet: not a readable parquet file"
    if case == "zero-byte npz":
        npz.write_bytes(b"")
        return [str(npz), "--uids", str(uid_pq)], "d.npz: empty file (0 bytes)"
    if case == "truncated npz":
        npz.write_bytes(npz.read_bytes()[:200])
        return [str(npz), "--uids", str(uid_pq)], "d.npz: not a readable .npz file"
    if case == "inf in npz":
        y = x.copy()
        y[0, 0] = np.inf
        np.savez(npz, l14_img=y)
        return [str(npz), "--uids", str(uid_pq), "--on-bad", "error"], "(first: d.npz[l14_img]:0"
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "ids not utf-8", "ids parquet corrupt", "zero-byte npy", "truncated npy data", "truncated npy header", "3-d npy",
    "integer npy", "nan", "inf", "zero-byte shard", "truncated shard", "shard of another dimension", "nan in a shard",
    "corrupt metadata", "zero-byte npz", "truncated npz", "inf in npz",
])
def test_a_bad_import_file_is_one_input_error_line_naming_it(store, tmp_path, case, capsys):
    """`curate vectors import` on a bad file: exit 3 and one `error:` line that names the
    file (before: a UnicodeDecodeError or ArrowInvalid traceback, or `aborted` with exit
    130 for a zero-byte file); no set, folder or ok run is left behind."""
    from curate.cli import main

    uids = make_uids(6)
    add_samples(store, uids)
    store.close()
    inputs = tmp_path / "in"
    inputs.mkdir()
    argv, names_file = _bad_import_case(case, inputs, uids)
    capsys.readouterr()
    rc = main(["vectors", "import", "v", *argv, "--store", str(store.path)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 3 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert names_file in lines[0], err
    with Store.open(store.path) as s:
        assert list_sets(s) == []
        assert s.con.execute("SELECT count(*) FROM runs WHERE status = 'ok'").fetchall() == [(0,)]
    assert list((store.path / "vectors").iterdir()) == []


# -- padded shards, the combined layout, and embedding-reader (issue 16 item 8) -------------
def test_more_than_ten_shards_are_padded_so_names_sort_in_row_order(store):
    uids = make_uids(23)
    add_samples(store, uids)
    x = normalise(np.random.default_rng(13).standard_normal((23, 8)))
    write_set(store, "img", x, uids, shard_rows=2)  # 12 shards
    vs = open_set(store, "img")
    names_ = sorted(p.name for p in (vs.path / "img_emb").iterdir())
    assert names_ == [f"img_emb_{i:02d}.npy" for i in range(12)]
    assert [e for e, _, _ in vs.shards] == [f"img_emb/{n}" for n in names_]  # name order is row order
    assert sorted(p.name for p in (vs.path / "metadata").iterdir()) == [f"metadata_{i:02d}.parquet" for i in range(12)]
    assert vs.ids().to_pylist() == uids
    np.testing.assert_allclose(vs.matrix(), x, atol=2e-3)
    write_set(store, "small", x[:4], uids[:4], shard_rows=2)  # fewer than ten: one digit, as clip-retrieval
    assert sorted(p.name for p in (open_set(store, "small").path / "img_emb").iterdir()) == ["img_emb_0.npy",
                                                                                             "img_emb_1.npy"]


_EMBEDDING_READER = """
import json, sys
import numpy as np
from embedding_reader import EmbeddingReader
folder, sub, out = sys.argv[1:4]
reader = EmbeddingReader(f"{folder}/{sub}", file_format="parquet_npy", metadata_folder=f"{folder}/metadata",
                         meta_columns=["uid"])
embs, ids = [], []
for emb, meta in reader(batch_size=5, start=0, end=reader.count, show_progress=False):
    embs.append(emb)
    ids += meta["uid"].tolist()
np.save(out, np.concatenate(embs))
print(json.dumps(ids))
"""


def _read_with_embedding_reader(folder: Path, sub: str) -> tuple[np.ndarray, list[str]]:
    """Read an export with clip-retrieval's embedding-reader. It pins pandas<3, so it lives in
    the tools venv beside img2dataset (``.venv-img2dataset``, made by ``make setup``)."""
    import json
    import os
    import subprocess

    py = os.environ.get("CURATE_IMG2DATASET_PYTHON") or str(Path(__file__).resolve().parents[1] / ".venv-img2dataset"
                                                            / "bin" / "python")
    if not Path(py).exists():
        pytest.fail(f"{py} is missing: `make setup` makes the tools venv that holds embedding-reader")
    out = folder.parent / f"{folder.name}-{sub}-er.npy"
    run = subprocess.run([py, "-c", _EMBEDDING_READER, str(folder), sub, str(out)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return np.load(out), json.loads(run.stdout.strip().splitlines()[-1])


def test_an_export_of_more_than_ten_shards_reads_in_order_with_embedding_reader(store, tmp_path):
    """embedding-reader (clip-retrieval's reader) sorts shard names as strings: unpadded
    names past ten shards would read as 0, 1, 10, 11, 2, ... and misplace every row."""
    uids = make_uids(23)
    add_samples(store, uids)
    x = normalise(np.random.default_rng(14).standard_normal((23, 8)))
    write_set(store, "img", x, uids, shard_rows=2)
    out = export_clip_retrieval(store, "img", tmp_path / "export")
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == [f"img_emb_{i:02d}.npy" for i in range(12)]
    emb, ids = _read_with_embedding_reader(out, "img_emb")
    assert ids == [u.replace("-", "") for u in uids]  # in the set's order, 32 hex digits
    np.testing.assert_array_equal(emb, open_set(store, "img").matrix(np.float16).astype(np.float32))
    again = export_clip_retrieval(store, "img", tmp_path / "resharded", shard_rows=10)
    assert sorted(p.name for p in (again / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    assert _read_with_embedding_reader(again, "img_emb")[1] == ids
    with pytest.raises(ConfigError, match="exists and is not an empty folder"):
        export_clip_retrieval(store, "img", out)


def test_import_reads_padded_and_unpadded_shards_in_numeric_order(store, tmp_path):
    uids = make_uids(24)
    add_samples(store, uids)
    x = normalise(np.random.default_rng(15).standard_normal((24, 8))).astype(np.float16)
    for form in ("unpadded", "padded"):
        folder = tmp_path / form
        (folder / "img_emb").mkdir(parents=True)
        (folder / "metadata").mkdir()
        for i in range(12):
            num = f"{i:02d}" if form == "padded" else str(i)
            np.save(folder / "img_emb" / f"img_emb_{num}.npy", x[2 * i:2 * i + 2])
            pq.write_table(pa.table({"uid": uids[2 * i:2 * i + 2]}), folder / "metadata" / f"metadata_{num}.parquet")
        res = import_clip_retrieval(store, form, folder)
        assert res.count == 24 and open_set(store, form).ids().to_pylist() == uids
        np.testing.assert_array_equal(open_set(store, form).matrix(np.float16), x)
    np.save(tmp_path / "padded" / "img_emb" / "img_emb_1.npy", x[2:4])  # shard 1 twice: refused
    with pytest.raises(InputError, match="img_emb_01.npy and img_emb_1.npy are both shard 1"):
        import_clip_retrieval(store, "twice", tmp_path / "padded")


def test_combined_image_text_export_is_the_layout_clip_retrieval_writes(store, tmp_path, capsys):
    """--text-set writes img_emb/, text_emb/ and metadata/ row-aligned in one folder; the
    samples without a text vector are left out; both halves read back through
    embedding-reader and through the importer."""
    from curate.cli import main

    uids = make_uids(25)
    add_samples(store, uids)
    rng = np.random.default_rng(16)
    img = normalise(rng.standard_normal((25, 8)))
    write_set(store, "img", img, uids, shard_rows=2)
    caption_ids = dict(store.con.execute("SELECT uid::VARCHAR, caption_id::VARCHAR FROM captions").fetchall())
    with_text = [u for i, u in enumerate(uids) if i != 3]  # sample 3 has no text vector
    txt = normalise(rng.standard_normal((24, 8)))
    write_set(store, "txt", txt[::-1], [caption_ids[u] for u in with_text][::-1], kind="text", variant="raw")
    store.close()
    out = tmp_path / "both"
    assert main(["vectors", "export", "img", str(out), "--text-set", "txt", "--store", str(store.path)]) == 0
    assert "exported 24 image vectors of 'img' with the text vectors of 'txt'" in capsys.readouterr().out
    for sub, prefix, ext in (("img_emb", "img_emb", "npy"), ("text_emb", "text_emb", "npy"),
                             ("metadata", "metadata", "parquet")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"{prefix}_{i:02d}.{ext}" for i in range(12)]
    meta = pq.read_table(out / "metadata" / "metadata_00.parquet")
    assert meta.column_names == ["uid", "caption_id", "url", "caption"]
    img_emb, img_ids = _read_with_embedding_reader(out, "img_emb")
    txt_emb, txt_ids = _read_with_embedding_reader(out, "text_emb")
    assert img_ids == txt_ids == [u.replace("-", "") for u in with_text]
    want_txt = dict(zip(with_text, txt))
    np.testing.assert_allclose(img_emb, img[[i for i in range(25) if i != 3]], atol=2e-3)
    np.testing.assert_allclose(txt_emb, np.stack([want_txt[u] for u in with_text]), atol=2e-3)
    with Store.open(store.path) as s:
        back_i = import_clip_retrieval(s, "img_back", out)
        back_t = import_clip_retrieval(s, "txt_back", out, kind="text")
        assert back_i.count == back_t.count == 24
        assert open_set(s, "img_back").ids().to_pylist() == with_text
        assert open_set(s, "txt_back").ids().to_pylist() == [caption_ids[u] for u in with_text]
        with pytest.raises(ConfigError, match="pairs an image set with a text set"):
            export_clip_retrieval(s, "txt", tmp_path / "x", text_set="img")
