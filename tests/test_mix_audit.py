"""The duplicate audits (mix.audit_duplicates, mix.audit_dedup_left) and the dedup and
tagging runs a manifest's sidecar records, on a small store built with the project's own
ingest, caption dedup, vector, image dedup and tagging APIs.

The store: 40 samples of source ``web`` and 8 of source ``other`` (a DataComp-style
table: uid, url, text, sha256), with planted exact text repeats, near-duplicate texts,
shared sha256 and near-duplicate image vectors. Caption dedup and image near-duplicate
dedup each run twice, loose then strict, so that only the latest run of a kind and scope
counts; the expected numbers are computed here in plain Python from the planted data and
from the rows the latest runs wrote.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import Store
from curate.mix import policy_from_dict, run_policy, write_manifest
from curate.mix.audit import audit, audit_manifest

faiss = pytest.importorskip("faiss")

WORDS = ("river mountain lamp violin garden tiger window bridge candle forest harbor pencil meadow robot "
         "castle desert orchard falcon lantern glacier compass tunnel velvet marble canyon ladder").split()
N_WEB, N_OTHER = 40, 8


def _sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, 10))


def _plant() -> list[dict]:
    """One dict per sample: uid, source, text, sha256, planted in fixed places."""
    rng = np.random.default_rng(7)
    texts = [_sentence(rng) for _ in range(N_WEB + N_OTHER)]
    texts[1] = texts[2] = texts[3] = texts[0]          # one text four times in web
    texts[5] = texts[4]                                  # twice in web ...
    texts[6] = texts[4].rsplit(" ", 1)[0] + " zebra"        # ... and a near copy (loose dedup only)
    texts[8] = texts[9] = texts[7]                       # three times in web
    texts[11] = texts[10].rsplit(" ", 1)[0] + " walrus"     # near copies: loose dedup only
    texts[N_WEB] = texts[N_WEB + 1] = texts[20]          # a web text repeated only in other
    sha: list[str | None] = [f"h{i:02d}" for i in range(N_WEB + N_OTHER)]
    sha[12] = sha[13] = sha[0]                           # one image three times in web
    sha[21] = sha[20]                                    # twice in web
    sha[N_WEB + 2] = sha[N_WEB + 3] = sha[30]            # a web image repeated only in other
    for i in range(34, 40):
        sha[i] = None                                    # not downloaded
    return [{"uid": uuid.UUID(bytes=rng.bytes(16)), "source": "web" if i < N_WEB else "other",
             "text": texts[i], "sha256": sha[i]} for i in range(N_WEB + N_OTHER)]


def _vectors(n: int) -> np.ndarray:
    """Unrelated unit vectors (cosine < 0.9) with near copies: row 15 of 14 (cos ~0.999,
    dropped by both runs), row 17 of 16 and row N_WEB + 4 of 18 (cos ~0.97, loose only)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)

    def near(src: int, dst: int, cos: float) -> None:
        o = rng.standard_normal(16)
        o -= (o @ x[src]) * x[src]
        x[dst] = cos * x[src] + np.sqrt(1 - cos ** 2) * o / np.linalg.norm(o)

    near(14, 15, 0.999)
    near(16, 17, 0.97)
    near(18, N_WEB + 4, 0.97)
    return x


@pytest.fixture(scope="module")
def dup_store(tmp_path_factory) -> dict:
    from curate.dedup import dedup_captions
    from curate.ingest import ingest
    from curate.similarity import exact_duplicates, near_duplicates, tag
    from curate.vectors import write_set

    root = tmp_path_factory.mktemp("audit")
    samples = _plant()
    for source in ("web", "other"):
        rows = [r for r in samples if r["source"] == source]
        pq.write_table(pa.table({"uid": [r["uid"].hex for r in rows],
                                 "url": [f"https://example.com/{r['uid'].hex}.jpg" for r in rows],
                                 "text": [r["text"] for r in rows], "sha256": [r["sha256"] for r in rows]}),
                       root / f"{source}.parquet")
    path = root / "store"
    runs: dict[str, list[int]] = {}
    with Store.init(path) as s:
        for source in ("web", "other"):
            ingest(s, "table", root / f"{source}.parquet", source, preset="datacomp")
        runs["caption"] = [dedup_captions(s, variant=["raw"], threshold=t).run_id for t in (0.5, 0.95)]
        x = _vectors(len(samples))
        write_set(s, "img", x, [str(r["uid"]) for r in samples], model="synthetic")
        runs["near"] = [near_duplicates(s, "img", threshold=t).run_id for t in (0.95, 0.99)]
        runs["exact"] = [exact_duplicates(s, min_urls=20).run_id]
        rng = np.random.default_rng(5)
        c = rng.standard_normal((6, 16))
        write_set(s, "concepts", c / np.linalg.norm(c, axis=1, keepdims=True), [f"c{i}" for i in range(6)],
                  kind="concept")
        write_set(s, "concepts2", c[:3] / np.linalg.norm(c[:3], axis=1, keepdims=True), ["a", "b", "c"],
                  kind="concept")
        runs["tags"] = [tag(s, "img", "concepts", k=k).run_id for k in (1, 2)]
        runs["tags2"] = [tag(s, "img", "concepts2", k=1).run_id]
        dropped = {}  # (member_kind, run_id) -> dropped member ids, as the runs wrote them
        for kind, rid, mid in s.execute("SELECT member_kind, run_id, member_id::VARCHAR FROM dedup_groups "
                                        "WHERE NOT kept").fetchall():
            dropped.setdefault((kind, rid), set()).add(mid)
        caption_of = dict(s.execute("SELECT uid::VARCHAR, caption_id::VARCHAR FROM captions").fetchall())
    return {"path": path, "samples": samples, "runs": runs, "dropped": dropped, "caption_of": caption_of}


def _policy(select: list[dict]) -> object:
    return policy_from_dict({"policy": {"name": "audit", "sources": ["web"]},
                             "choose": {"strategy": "variant", "variant": "raw"}, "select": select})


def _expected(rows: list[dict], dropped_captions: set[str], dropped_uids: set[str], caption_of: dict) -> dict:
    """The audit's numbers for one side, the slow obvious way."""
    texts = Counter(r["text"] for r in rows)
    shas = Counter(r["sha256"] for r in rows if r["sha256"] is not None)
    uids = {str(r["uid"]) for r in rows}
    return {
        "captions": len(rows),
        "with_repeated_text": sum(n for n in texts.values() if n > 1),
        "extra_text_copies": sum(n - 1 for n in texts.values()),
        "distinct_texts": len(texts),
        "samples": len(uids),
        "with_repeated_sha256": sum(n for n in shas.values() if n > 1),
        "extra_image_copies": sum(n - 1 for n in shas.values()),
        "dropped_captions_left": len({caption_of[u] for u in uids} & dropped_captions),
        "dropped_samples_left": len(uids & dropped_uids),
    }


def _sides(frames: dict, title: str) -> dict[str, dict]:
    df = frames[title]
    return {r["side"]: {k: v for k, v in r.items() if k != "side"} for r in df.to_dicts()}


def _audit(s: Store, pol, tmp_path: Path) -> tuple[dict, list[dict]]:
    res = run_policy(s, pol)
    side = write_manifest(s, pol, path=tmp_path / "m.parquet", res=res)
    frames = {title.split(" (mix.")[1].rstrip(")"): df for title, df in audit(s, res)}
    manifest = pq.read_table(side["path"]).to_pylist()
    return frames, manifest


@pytest.mark.parametrize("select", [[], [{"attribute": "image_dedup_kept", "op": "=", "value": True}],
                                    [{"attribute": "dedup_kept", "variant": "raw", "op": "=", "value": True}]],
                         ids=["all", "image_dedup_kept", "dedup_kept"])
def test_duplicate_audits_equal_a_python_count_of_pool_and_manifest(dup_store, tmp_path, select):
    d = dup_store
    runs, dropped = d["runs"], d["dropped"]
    latest_captions = dropped.get(("caption_id", runs["caption"][-1]), set())
    latest_uids = dropped.get(("uid", runs["near"][-1]), set()) | dropped.get(("uid", runs["exact"][-1]), set())
    every_run_uids = set().union(*(v for (k, _), v in dropped.items() if k == "uid"))
    every_run_captions = set().union(*(v for (k, _), v in dropped.items() if k == "caption_id"))
    # the loose runs dropped more: counting every run instead of the latest would differ
    assert latest_captions < every_run_captions and latest_uids < every_run_uids
    by_uid = {r["uid"].hex: r for r in d["samples"]}
    pool = [r for r in d["samples"] if r["source"] == "web"]
    with Store.open(d["path"], read_only=True) as s:
        frames, manifest = _audit(s, _policy(select), tmp_path)
        rows = [by_uid[m["uid"]] for m in manifest]
        assert [m["caption"] for m in manifest] == [r["text"] for r in rows]
        again = {title.split(" (mix.")[1].rstrip(")"): df for title, df in audit_manifest(s, tmp_path / "m.parquet")}
    want = {side: _expected(rs, latest_captions, latest_uids, d["caption_of"])
            for side, rs in (("pool", pool), ("manifest", rows))}
    dup = _sides(frames, "audit_duplicates")
    left = _sides(frames, "audit_dedup_left")
    for side in ("pool", "manifest"):
        w = want[side]
        assert dup[side] == {k: w[k] for k in ("captions", "with_repeated_text", "extra_text_copies", "distinct_texts",
                                               "samples", "with_repeated_sha256", "extra_image_copies")}, side
        assert left[side] == {k: w[k] for k in ("captions", "dropped_captions_left", "samples",
                                                "dropped_samples_left")}, side
    assert frames["audit_dedup_left"]["side"].to_list() == ["pool", "manifest"]
    # planted: 4 + 2 + 3 texts and 3 + 2 images repeated within web; the copies in
    # source other are not in the pool
    assert (dup["pool"]["with_repeated_text"], dup["pool"]["extra_text_copies"]) == (9, 6)
    assert (dup["pool"]["with_repeated_sha256"], dup["pool"]["extra_image_copies"]) == (5, 3)
    assert left["pool"]["dropped_captions_left"] > 0 and left["pool"]["dropped_samples_left"] > 0
    if select and select[0]["attribute"] == "image_dedup_kept":
        assert left["manifest"]["dropped_samples_left"] == 0 < left["manifest"]["dropped_captions_left"]
    elif select:
        assert left["manifest"]["dropped_captions_left"] == 0 < left["manifest"]["dropped_samples_left"]
    else:
        assert left["manifest"] == left["pool"]
    for q in ("audit_duplicates", "audit_dedup_left"):  # a manifest file audits the same
        assert again[q].equals(frames[q])


def test_audit_runs_without_dedup_tables(tmp_path):
    """No dedup run: the exact-duplicate audit runs and the dedup_groups audit is left
    out; a store whose dedup_groups has no dedup_summary beside it (older stores) still
    gets the image verdicts, and no caption verdict."""
    from curate.ingest import ingest
    from curate.similarity import exact_duplicates

    samples = _plant()[:N_WEB]
    pq.write_table(pa.table({"uid": [r["uid"].hex for r in samples], "url": [f"u{i}" for i in range(N_WEB)],
                             "text": [r["text"] for r in samples], "sha256": [r["sha256"] for r in samples]}),
                   tmp_path / "web.parquet")
    pol = _policy([])
    with Store.init(tmp_path / "s") as s:
        ingest(s, "table", tmp_path / "web.parquet", "web", preset="datacomp")
        frames, manifest = _audit(s, pol, tmp_path)
        assert set(frames) == {"audit_size", "audit_variants", "audit_sources", "audit_duplicates"}
        assert _sides(frames, "audit_duplicates")["manifest"]["with_repeated_sha256"] == 5
        exact_duplicates(s, min_urls=20)
        s.execute("DROP TABLE dedup_summary")
        frames, _ = _audit(s, pol, tmp_path)
    left = _sides(frames, "audit_dedup_left")
    # sha256 groups {0, 12, 13} and {20, 21}: three dropped members, all in web
    assert left["pool"] == left["manifest"] == {"captions": N_WEB, "dropped_captions_left": 0, "samples": N_WEB,
                                                "dropped_samples_left": 3}


def test_sidecar_records_the_dedup_runs_the_policy_reads(dup_store, tmp_path):
    runs = dup_store["runs"]
    with Store.open(dup_store["path"], read_only=True) as s:
        img = write_manifest(s, _policy([{"attribute": "image_dedup_kept", "op": "=", "value": True}]),
                             path=tmp_path / "i.parquet")
        cap = write_manifest(s, _policy([{"attribute": "dedup_kept", "variant": "raw", "op": "=", "value": True}]),
                             path=tmp_path / "c.parquet")
        hashes = dict(s.execute("SELECT run_id, config_hash FROM runs").fetchall())
    for side in (img, cap):
        on_disk = json.loads(Path(side["sidecar"]).read_text())
        assert on_disk["stages"] == json.loads(json.dumps(side["stages"]))
    got = {(e["stage"], e["run_id"]): e for e in img["stages"]}
    # the latest near-duplicate run (not the loose one before it) and the exact run
    assert set(got) == {("similarity.near.v1", runs["near"][1]), ("similarity.exact.v1", runs["exact"][0])}
    near = got[("similarity.near.v1", runs["near"][1])]
    assert near["table"] == "dedup_groups" and near["scopes"] == [{"kind": "image_near", "scope": "img"}]
    assert near["config_hash"] == hashes[runs["near"][1]] and near["config"]["config"]["threshold"] == 0.99
    assert got[("similarity.exact.v1", runs["exact"][0])]["scopes"] == [{"kind": "image_exact", "scope": "samples"}]
    assert [(e["stage"], e["run_id"], e["scopes"]) for e in cap["stages"]] == \
        [("dedup.captions.v1", runs["caption"][1], [{"kind": "caption_text", "scope": "raw"}])]


def test_sidecar_records_the_latest_tagging_runs_when_the_policy_reads_concept_tags(dup_store, monkeypatch):
    """For a policy whose required tables include concept_tags (MetaCLIP over matched
    counts) that names no tag pair: the latest run of every (image set, concept set)."""
    import curate.mix.manifest as manifest

    runs = dup_store["runs"]
    real = manifest.required_tables
    monkeypatch.setattr(manifest, "required_tables", lambda p: {**real(p), "concept_tags": "weight (test)"})
    with Store.open(dup_store["path"], read_only=True) as s:
        versions, stages = manifest.input_versions(s, _policy([]))
        hashes = dict(s.execute("SELECT run_id, config_hash FROM runs").fetchall())
    n = len(dup_store["samples"])
    assert versions["concept_tags"] == {"rows": n * (1 + 2 + 1), "latest_run_id": runs["tags2"][0]}
    assert [(e["stage"], e["run_id"], e["set_name"], e["concept_set"], e["config_hash"]) for e in stages] == [
        ("similarity.tags.v1", runs["tags"][1], "img", "concepts", hashes[runs["tags"][1]]),
        ("similarity.tags.v1", runs["tags2"][0], "img", "concepts2", hashes[runs["tags2"][0]])]
    assert hashes[runs["tags"][0]] != hashes[runs["tags"][1]]
    assert stages[0]["config"]["config"]["k"] == 2


def test_sidecar_records_the_tag_pair_a_matched_weight_names(dup_store, monkeypatch):
    """A weight over matched counts names its (image_set, concept_set): only that pair's
    latest run is recorded. Skipped until MetaCLIP's counts = "matched" exists."""
    import curate.mix.manifest as manifest
    from curate.errors import ConfigError

    try:
        pol = policy_from_dict({"policy": {"name": "m"}, "choose": {"strategy": "variant", "variant": "raw"},
                                "weight": {"method": "metaclip", "vocabulary": "v", "counts": "matched",
                                           "image_set": "img", "concept_set": "concepts2"}})
    except ConfigError as e:
        pytest.skip(f"no matched counts yet: {e}")
    # only concept_tags: the store has no caption_concepts (no text concept matches)
    monkeypatch.setattr(manifest, "required_tables", lambda p: {"concept_tags": "weight (test)"})
    with Store.open(dup_store["path"], read_only=True) as s:
        _, stages = manifest.input_versions(s, pol)
    assert [(e["run_id"], e["set_name"], e["concept_set"]) for e in stages] == \
        [(dup_store["runs"]["tags2"][0], "img", "concepts2")]
