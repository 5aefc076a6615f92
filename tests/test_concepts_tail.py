"""The tail benchmark's leakage check against training manifests written by the real
`curate mix`, in every format it writes, plus webdataset shards (issue 16 item 3).

Before, the tail manifest held dashed uids and the check compared them as strings with
the manifest's 32-hex uids: "0 of 20" when all 20 were in training. CSV/TSV (no uid
column) and DataComp .npy manifests were refused."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import polars as pl
import pytest

from curate.cli import main

from .test_concepts_text import cc3m_store  # noqa: F401  (the fixture: CC3M counted against "mini")

FORMATS = ("parquet", "jsonl", "json", "csv", "tsv", "npy")
TAIL = ["concepts", "tail", "--vocabulary", "mini", "-n", "4", "--min-count", "4", "--cap", "5"]


def policy(path: Path, samples: int | None) -> Path:
    budget = f"\n[budget]\nsamples = {samples}\n" if samples else ""
    path.write_text('[policy]\nname = "train"\nseed = 3\n\n[choose]\nstrategy = "variant"\nvariant = "raw"\n'
                    f'{budget}\n[output]\nformat = "parquet"\n', encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def manifests(cc3m_store, tmp_path_factory):
    """{(budget, format): path} written by `curate mix` over the CC3M store: every sample,
    and a seeded draw of 6,000."""
    tmp = tmp_path_factory.mktemp("mix")
    out = {}
    for label, samples in (("all", None), ("part", 6000)):
        pol = policy(tmp / f"{label}.toml", samples)
        for fmt in FORMATS:
            path = tmp / f"{label}.{fmt}"
            images = ["--images", "any"] if fmt in ("csv", "tsv") else []  # CC3M here has urls, no image files
            assert main(["mix", str(pol), "--store", str(cc3m_store), "--format", fmt, *images, "--out", str(path)]) == 0
            out[label, fmt] = path
    return out


def tail_rows(store: Path, tmp: Path) -> pl.DataFrame:
    out = tmp / "tail.parquet"
    if not out.exists():
        assert main([*TAIL, "--store", str(store), "--out", str(out)]) == 0
    return pl.read_parquet(out)


def run_tail(store: Path, tmp: Path, train: Path, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([*TAIL, "--store", str(store), "--out", str(tmp / "t.parquet"), "--train-manifest", str(train)])
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_tail_manifest_uids_are_32_hex_as_curate_mix_writes_them(cc3m_store, manifests, tmp_path):
    rows = tail_rows(cc3m_store, tmp_path)
    assert rows.height >= 15
    assert rows["uid"].str.contains(r"^[0-9a-f]{32}$").all()
    mixed = pl.read_parquet(manifests["all", "parquet"])["uid"]
    assert set(rows["uid"]) <= set(mixed)  # the same strings as curate mix's


@pytest.mark.parametrize("fmt", FORMATS)
def test_leakage_check_reads_every_format_curate_mix_writes(cc3m_store, manifests, tmp_path, fmt, capsys):
    rows = tail_rows(cc3m_store, tmp_path)
    rc, out, err = run_tail(cc3m_store, tmp_path, manifests["all", fmt], capsys)
    key = "uid"  # curate mix writes a uid column in every format now, CSV/TSV included
    assert rc == 0, err
    assert f"{rows.height} of {rows.height} tail samples are in the training manifest (matched by {key}, 15,833" in out
    # a partial draw: the count equals a plain-Python membership test on the manifest's own rows
    part = pl.read_parquet(manifests["part", "parquet"])
    if fmt in ("csv", "tsv"):
        paths = set(pl.read_csv(manifests["part", fmt], separator="\t" if fmt == "tsv" else ",")["filepath"])
        want = sum(1 for u, p in zip(rows["url"], rows["image_path"]) if u in paths or p in paths)
    else:
        want = len(set(rows["uid"]) & set(part["uid"]))
    assert 0 < want < rows.height
    rc, out, err = run_tail(cc3m_store, tmp_path, manifests["part", fmt], capsys)
    assert rc == 0 and f"overlap with {manifests['part', fmt]}: {want} of {rows.height} tail samples" in out, err


def _shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_leakage_check_reads_webdataset_shards(cc3m_store, manifests, tmp_path, capsys):
    """Shards of the partial draw: the uid of each sample's .json member; or, in shards
    without json, a __key__ that is the uid itself (dashed, upper case)."""
    rows = tail_rows(cc3m_store, tmp_path)
    part = pl.read_parquet(manifests["part", "parquet"])
    want = len(set(rows["uid"]) & set(part["uid"]))
    recs = part.select("uid", "caption").to_dicts()
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):  # keys are running numbers, as img2dataset writes them; the uid is in the json
        chunk = recs[k::3]
        members = []
        for i, r in enumerate(chunk):
            key = f"{k:05d}{i:04d}"
            members += [(f"{key}.txt", r["caption"].encode()), (f"{key}.json", json.dumps(r).encode()),
                        (f"{key}.jpg", b"\xff\xd8 not decoded")]
        _shard(shards / f"{k:05d}.tar", members)
    rc, out, err = run_tail(cc3m_store, tmp_path, shards, capsys)
    assert rc == 0 and f": {want} of {rows.height} tail samples are in the training manifest (matched by uid, 6,000" in out, err
    by_key = _shard(tmp_path / "keys.tar", [
        (f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}".upper() + ".jpg", b"x") for u in part["uid"]])
    rc, out, err = run_tail(cc3m_store, tmp_path, by_key, capsys)
    assert rc == 0 and f": {want} of {rows.height} tail samples" in out, err


@pytest.mark.parametrize("form", ["dashed", "upper", "braces"])
def test_any_uid_text_form_matches(cc3m_store, manifests, tmp_path, form, capsys):
    rows = tail_rows(cc3m_store, tmp_path)
    part = pl.read_parquet(manifests["part", "parquet"])
    want = len(set(rows["uid"]) & set(part["uid"]))
    assert 0 < want < rows.height
    dashed = pl.col("uid").str.replace(r"^(.{8})(.{4})(.{4})(.{4})(.{12})$", "$1-$2-$3-$4-$5")
    expr = {"dashed": dashed, "upper": pl.col("uid").str.to_uppercase(),
            "braces": pl.concat_str(pl.lit("{"), dashed.str.to_uppercase(), pl.lit("}"))}[form]
    train = tmp_path / f"{form}.jsonl"
    part.select(expr.alias("uid")).write_ndjson(train)
    rc, out, err = run_tail(cc3m_store, tmp_path, train, capsys)
    assert rc == 0 and f": {want} of {rows.height} tail samples" in out, err


@pytest.mark.parametrize("case, message", [
    ("bad uid", "uid 'sample-7' (row 2) is not a uid"),
    ("no uid column", "no uid column (nor open_clip's filepath); columns: key, caption"),
    ("corrupt tar", "not a readable webdataset shard"),
    ("corrupt npy", "not a readable .npy file"),
    ("float npy", "a DataComp subset file holds uids as dtype u8,u8"),
    ("unknown suffix", "expected .parquet, .jsonl, .csv, .tsv, .npy"),
])
def test_an_unreadable_training_manifest_is_one_line_before_anything_is_written(cc3m_store, tmp_path, case,
                                                                               message, capsys):
    import numpy as np

    train = tmp_path / {"bad uid": "t.parquet", "no uid column": "t.csv", "corrupt tar": "t.tar",
                        "corrupt npy": "t.npy", "float npy": "t.npy", "unknown suffix": "t.txt"}[case]
    if case == "bad uid":
        pl.DataFrame({"uid": ["0" * 32, "sample-7"]}).write_parquet(train)
    elif case == "no uid column":
        train.write_text("key,caption\n1,a dog\n", encoding="utf-8")
    elif case == "corrupt tar":
        train.write_bytes(b"not a tar file" * 100)
    elif case == "corrupt npy":
        train.write_bytes(b"")
    elif case == "float npy":
        np.save(train, np.zeros((3, 2)))
    else:
        train.write_text("x\n", encoding="utf-8")
    capsys.readouterr()
    out = tmp_path / "never.parquet"
    rc = main([*TAIL, "--store", str(cc3m_store), "--out", str(out), "--train-manifest", str(train)])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 3 and len(lines) == 1 and lines[0].startswith(f"error: training manifest {train}"), lines
    assert message in lines[0]
    assert not out.exists()
