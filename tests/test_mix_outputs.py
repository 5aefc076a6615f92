"""What ``curate mix`` writes, and what the manifest audit trusts (issues 16 and 17).

* Names that become paths: a policy or output name is a file-name component, and every
  manifest path is joined under ``STORE/manifests``; only ``--out`` leaves the store.
* Whole files: a ``curate mix`` killed with SIGKILL in the middle of its write (a real
  subprocess) leaves the previous manifest untouched and nothing beside it, and the next
  run removes its temporary and writes the same bytes as an uninterrupted run.
* One id form: every uid and caption_id, in every format, is 32 lower-case hex digits.
* Weights: csv/tsv carry a ``weight`` column (open_clip's CsvDataset still loads the
  file); ``.npy`` repeats uids by seeded stochastic rounding, which keeps the weight
  ratios of a real MetaCLIP or temperature policy, or refuses in one line.
* The audit of a file written earlier checks it against its sidecar (sha256, rows) and
  the pool against the store, in every format, and says what differs.

The store is ``tests/test_mix.py``'s: the first 500 CapsFusion records and the LaCLIP
pairs with caption statistics, spaCy knowledge scores and CIFAR-10 concept matches.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import Store
from curate.errors import ConfigError
from curate.mix import Policy, load_policy, policy_from_dict, write_manifest
from curate.mix.manifest import EXT, manifest_path
from tests.test_mix import EXAMPLES, POLICIES, mix_store, run_cli  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
FORMATS = ["parquet", "jsonl", "json", "csv", "tsv", "npy"]
HEX32 = re.compile(r"[0-9a-f]{32}")


def policy_file(tmp_path: Path, name: str, output: str = "", head: str = "", body: str = "") -> Path:
    path = tmp_path / "policies" / f"{len(list(tmp_path.glob('policies/*')))}.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'[policy]\nname = "{name}"\nsources = ["capsfusion"]\n{head}\n{body}\n'
                    f'[choose]\nstrategy = "variant"\nvariant = "raw"\n\n[budget]\nsamples = 300\n\n'
                    f'[output]\n{output}\n', encoding="utf-8")
    return path


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def weighted(kind: str, fmt: str, **output) -> Policy:
    """A shipped weighted policy in format ``fmt``: metaclip_balanced.toml with unmatched
    samples weighing 0.013 (matched ones about 1, MetaCLIP's t / max(count, t)), or
    longtail_mixture.toml (temperature-2 weights from 1 to about 2.6)."""
    if kind == "metaclip":
        d = load_policy(POLICIES / "metaclip_balanced.toml").to_dict()
        d["weight"]["unmatched_weight"] = 0.013
    else:
        d = load_policy(POLICIES / "longtail_mixture.toml").to_dict()
    d["output"] = {"format": fmt, **({"images": "any"} if fmt in ("csv", "tsv") else {}), **output}
    return policy_from_dict(d)


# -- 1. names that become paths -------------------------------------------------------------
@pytest.mark.parametrize("where, name", [
    ("policy", "../../escaped"), ("policy", "ABSOLUTE"), ("policy", ".."),
    ("output", "../escaped"), ("output", "ABSOLUTE"), ("cli", "../../escaped")])
def test_a_name_that_would_leave_the_store_is_one_error_line_and_writes_nothing(mix_store, tmp_path, capsys,
                                                                                where, name):
    """Before: ``[policy] name = "../../x"`` wrote x.parquet and its sidecar two folders
    above the store's manifests/, and an absolute name wrote wherever it pointed."""
    if name == "ABSOLUTE":
        name = str(tmp_path / "abs" / "escaped")
    toml = {"policy": lambda: policy_file(tmp_path, name),
            "output": lambda: policy_file(tmp_path, "fine", f'name = "{name}"'),
            "cli": lambda: policy_file(tmp_path, "fine")}[where]()
    around = mix_store.parent
    before = files_under(around) | files_under(tmp_path)
    code, out, err = run_cli("mix", str(toml), "--store", str(mix_store),
                             *(["--name", name] if where == "cli" else []), capsys=capsys)
    assert code == 2, out + err
    kind = "policy" if where == "policy" else "output"
    assert err.startswith("error: ") and err.count("\n") == 1 and f"{kind} name {name!r} must be" in err
    assert files_under(around) | files_under(tmp_path) == before


def test_a_manifest_path_is_joined_under_the_store(mix_store):
    """The second guard: a policy built around the checks still cannot name a path
    outside STORE/manifests."""
    pol = Policy("fine")
    object.__setattr__(pol, "name", "../../escaped")
    with Store.open(mix_store, read_only=True) as s:
        assert manifest_path(s, Policy("fine")) == (mix_store / "manifests" / "fine.parquet").resolve()
        with pytest.raises(ConfigError, match="manifest name '../../escaped' must be"):
            manifest_path(s, pol)


def test_only_an_explicit_out_leaves_the_store(mix_store, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "deeper" / "m.parquet"
    code, _, err = run_cli("mix", str(policy_file(tmp_path, "fine")), "--store", str(mix_store), "--out", str(out),
                           capsys=capsys)
    assert code == 0, err
    assert out.is_file() and out.with_name("m.parquet.sidecar.json").is_file()
    assert pq.read_table(out).num_rows == 300


# -- 2. whole files -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    """300,000 samples with one raw caption each, made in SQL: a manifest write that
    lasts long enough (seconds) to be killed in the middle."""
    path = tmp_path_factory.mktemp("big") / "store"
    with Store.init(path) as s:
        s.execute("""INSERT INTO samples (uid, source, url, run_id)
            SELECT md5_number('s' || i)::UUID, 'web', 'https://example.org/' || i || '.jpg', 1 FROM range(300000) r(i)""")
        s.execute("""INSERT INTO captions (caption_id, uid, variant, text, source, run_id)
            SELECT md5_number(uid::VARCHAR || 'raw')::UUID, uid, 'raw', 'photo number ' || url, source, 1 FROM samples""")
    return path


def mix_command(toml: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "curate.cli", "mix", str(toml), "--store", str(store), *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


def kill_mid_write(cmd: list[str], store: Path) -> None:
    """Run ``cmd`` and SIGKILL it as soon as its manifest write shows: a new or changed
    file in manifests/ (where DuckDB's COPY wrote ``tmp_<name>``, or the target itself)
    or a mix temporary in tmp/."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    man, tmp = store / "manifests", store / "tmp"
    for _ in range(3):
        before = {p.name: p.stat().st_mtime_ns for p in man.iterdir()}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        caught = False
        while proc.poll() is None:
            try:
                now = {p.name: p.stat().st_mtime_ns for p in man.iterdir()}
            except FileNotFoundError:  # a file renamed away between listing and stat
                continue
            if now != before or any(p.name.startswith("mix-") for p in tmp.iterdir()):
                proc.send_signal(signal.SIGKILL)
                caught = True
                break
            time.sleep(0.002)
        proc.wait()
        if caught and proc.returncode == -signal.SIGKILL:
            return
        assert proc.returncode == 0, "the mix failed on its own"
    pytest.fail("the mix finished three times before its write could be seen; the store is too small")


def test_a_killed_mix_leaves_the_old_manifest_and_the_next_run_writes_the_same_bytes(big_store, tmp_path):
    """Before: the kill left a partial ``tmp_k.parquet`` beside ``k.parquet`` (DuckDB's
    COPY writes there when the target exists) and, on a first write, a partial
    ``k.parquet`` itself."""
    (tmp_path / "k.toml").write_text('[policy]\nname = "k"\n\n[choose]\nstrategy = "variant"\nvariant = "raw"\n',
                                     encoding="utf-8")
    man, tmp = big_store / "manifests", big_store / "tmp"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(mix_command(tmp_path / "k.toml", big_store), env=env, check=True, capture_output=True)
    whole = snapshot(man)
    assert set(whole) == {"k.parquet", "k.parquet.sidecar.json"}
    assert pq.read_table(man / "k.parquet").num_rows == 300000

    kill_mid_write(mix_command(tmp_path / "k.toml", big_store), big_store)  # over an existing manifest
    assert snapshot(man) == whole
    kill_mid_write(mix_command(tmp_path / "k.toml", big_store, "--name", "first"), big_store)  # a first write
    assert snapshot(man) == whole
    assert [p.name for p in tmp.iterdir() if p.name.startswith("mix-")]  # the killed runs' temporaries

    subprocess.run(mix_command(tmp_path / "k.toml", big_store), env=env, check=True, capture_output=True)
    assert snapshot(man) == whole
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("mix-")]
    subprocess.run(mix_command(tmp_path / "k.toml", big_store, "--name", "first"), env=env, check=True,
                   capture_output=True)
    assert (man / "first.parquet").read_bytes() == whole["k.parquet"]
    assert set(snapshot(man)) == {"k.parquet", "k.parquet.sidecar.json", "first.parquet", "first.parquet.sidecar.json"}


def test_the_next_run_removes_the_temporaries_of_dead_runs_only(mix_store, tmp_path, capsys):
    """A leftover of a run whose process is gone is removed (and the ``tmp_<name>`` an
    older curate's COPY left beside the target); a running process's temporary stays."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp = mix_store / "tmp"
        stale = tmp / f"mix-{dead.pid}-00000000-left.parquet"
        running = tmp / f"mix-{alive.pid}-00000000-left.parquet"
        beside = mix_store / "manifests" / "tmp_left.parquet"
        for p in (stale, running, beside):
            p.write_bytes(b"PAR1 partial")
        code, _, err = run_cli("mix", str(policy_file(tmp_path, "left")), "--store", str(mix_store), capsys=capsys)
        assert code == 0, err
        assert not stale.exists() and not beside.exists() and running.exists()
        assert pq.read_table(mix_store / "manifests" / "left.parquet").num_rows == 300
    finally:
        alive.kill()
        alive.wait()
        running.unlink(missing_ok=True)


def test_an_out_on_another_file_system_is_copied_whole(mix_store, tmp_path, capsys):
    """The rename from STORE/tmp cannot cross file systems; the file is copied beside the
    target first and renamed there (the store is on disk, /dev/shm is a tmpfs)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)) or shm.stat().st_dev == mix_store.stat().st_dev:
        pytest.skip("needs a writable /dev/shm on another file system than the store")
    out_dir = shm / f"curate-test-{os.getpid()}"
    try:
        toml = policy_file(tmp_path, "across")
        code, _, err = run_cli("mix", str(toml), "--store", str(mix_store), "--out", str(out_dir / "m.parquet"),
                               capsys=capsys)
        assert code == 0, err
        assert run_cli("mix", str(toml), "--store", str(mix_store), "--out", str(tmp_path / "m.parquet"),
                       capsys=capsys)[0] == 0
        assert sorted(p.name for p in out_dir.iterdir()) == ["m.parquet", "m.parquet.sidecar.json"]
        assert (out_dir / "m.parquet").read_bytes() == (tmp_path / "m.parquet").read_bytes()
        assert not [p for p in (mix_store / "tmp").iterdir() if p.name.startswith("mix-")]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


# -- 3. one id form ------------------------------------------------------------------------
def ids_of(path: Path, fmt: str) -> tuple[list[str], list[str]]:
    """(uids, caption ids) as each format's reader sees them."""
    if fmt == "npy":
        return [f"{hi:016x}{lo:016x}" for hi, lo in np.load(path).tolist()], []
    if fmt == "parquet":
        rows = pq.read_table(path).to_pylist()
    elif fmt in ("csv", "tsv"):
        import pandas as pd

        rows = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str).to_dict("records")
    else:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    cids = [r["caption_id"] for r in rows] + [c["caption_id"] for r in rows for c in r.get("captions") or []]
    return [r["uid"] for r in rows], cids


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_writes_ids_as_32_lower_case_hex(mix_store, tmp_path, fmt):
    """Before: parquet and jsonl wrote caption_id in the 36-character form beside a
    32-digit uid, and csv/tsv had no uid at all."""
    pol = weighted("temperature", fmt, **({"candidates": True} if fmt in ("parquet", "jsonl") else {}),
                   **({"repeat_factor": 1.0} if fmt == "npy" else {}))
    with Store.open(mix_store, read_only=True) as s:
        side = write_manifest(s, pol, path=tmp_path / f"m.{EXT[fmt]}")
        final = dict(s.execute("SELECT replace(uid::VARCHAR, '-', ''), replace(caption_id::VARCHAR, '-', '') "
                               "FROM _mix_final").fetchall())
        cands = {r[0] for r in s.execute("SELECT replace(caption_id::VARCHAR, '-', '') FROM captions").fetchall()}
    uids, cids = ids_of(Path(side["path"]), fmt)
    assert uids and all(HEX32.fullmatch(u) for u in uids + cids)
    if fmt == "npy":
        assert set(uids) <= set(final)
    else:
        assert len(uids) == len(final) and set(uids) == set(final)
        assert set(cids) <= cands and {final[u] for u in uids} <= set(cids)


# -- 4. weights ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_and_tsv_carry_the_weights_and_open_clip_still_loads_them(mix_store, tmp_path, fmt):
    """Before: the csv/tsv manifest had filepath and title only; the MetaCLIP weights were
    gone. open_clip's CsvDataset, with the arguments the sidecar gives, reads the two
    columns it is told to and ignores the rest."""
    from open_clip_train.data import CsvDataset

    pol = weighted("metaclip", fmt)
    with Store.open(mix_store, read_only=True) as s:
        side = write_manifest(s, pol, path=tmp_path / f"m.{fmt}")
        want = s.execute("SELECT replace(f.uid::VARCHAR, '-', ''), f.weight, c.text FROM _mix_final f "
                         "JOIN captions c USING (caption_id) ORDER BY f.key, f.uid").fetchall()
    sep = "\t" if fmt == "tsv" else ","
    rows = duckdb.connect().sql(f"SELECT uid, weight, title FROM read_csv('{side['path']}', delim = '{sep}', "
                                "header = true)").fetchall()
    assert rows == want
    assert len({w for _, w, _ in want}) > 1  # 0.013 and MetaCLIP's t / max(count, t)
    args = dict(zip(side["open_clip"]["args"][::2], side["open_clip"]["args"][1::2]))
    ds = CsvDataset(side["path"], transforms=None, img_key=args["--csv-img-key"],
                    caption_key=args["--csv-caption-key"], sep=args["--csv-separator"])
    assert len(ds) == len(want) and ds.captions == [t for _, _, t in want]


def test_npy_refuses_weights_it_cannot_carry_in_one_line(mix_store, tmp_path, capsys):
    """Before: the subset file held each uid once and the weights vanished silently."""
    toml = tmp_path / "metaclip-npy.toml"
    toml.write_text(weighted("metaclip", "npy").to_toml(), encoding="utf-8")
    before = files_under(mix_store)
    code, out, err = run_cli("mix", str(toml), "--store", str(mix_store), capsys=capsys)
    assert code == 2
    assert err.startswith("error: format npy cannot carry the metaclip weights") and err.count("\n") == 1
    assert "set output.repeat_factor" in err and "parquet, jsonl, json, csv or tsv" in err
    assert files_under(mix_store) == before
    with Store.open(mix_store, read_only=True) as s, pytest.raises(ConfigError, match="above output.max_repeats 100"):
        write_manifest(s, weighted("metaclip", "npy", repeat_factor=200.0), path=tmp_path / "m.npy")
    assert not (tmp_path / "m.npy").exists()


@pytest.mark.parametrize("kind, factor", [("metaclip", 3.0), ("metaclip", 100.0), ("temperature", 3.0)])
def test_npy_copies_keep_the_weight_ratios(mix_store, tmp_path, kind, factor):
    """Per weight, the copies of its uids sum to ``factor`` times their weights within
    four standard deviations of the stochastic rounding (each uid adds a Bernoulli of its
    fractional part). Before: copies were max(1, round(w * factor)), so at factor 3 a
    0.013 weight got 1 copy and a 1.0 weight 3 (a ratio of 1:3 for 1:77)."""
    pol = weighted(kind, "npy", repeat_factor=factor)
    with Store.open(mix_store, read_only=True) as s:
        side = write_manifest(s, pol, path=tmp_path / "m.npy")
        weights = dict(s.execute("SELECT replace(uid::VARCHAR, '-', ''), weight FROM _mix_final").fetchall())
    copies = Counter(f"{hi:016x}{lo:016x}" for hi, lo in np.load(side["path"]).tolist())
    assert set(copies) <= set(weights)
    groups: dict[float, list[str]] = {}
    for u, w in weights.items():
        groups.setdefault(round(w, 9), []).append(u)
    assert len(groups) > 1
    for w, us in groups.items():
        frac = w * factor - math.floor(w * factor)
        got, want = sum(copies[u] for u in us), w * factor * len(us)
        assert abs(got - want) <= 4 * math.sqrt(len(us) * frac * (1 - frac)) + 1e-9, (w, len(us), got, want)
        assert all(math.floor(w * factor) <= copies[u] <= math.ceil(w * factor) for u in us)
    low = [u for u, w in weights.items() if w < 0.1]
    if kind == "metaclip":  # the unmatched samples: 0.013 each, most of the pool
        assert len(low) > 400
        high = [u for u, w in weights.items() if w >= 0.5]
        ratio = (sum(copies[u] for u in low) / len(low)) / (sum(copies[u] for u in high) / len(high))
        want_ratio = 0.013 / (sum(weights[u] for u in high) / len(high))
        assert ratio == pytest.approx(want_ratio, rel=0.5 if factor == 3.0 else 0.1)
    assert side["rows"] == sum(copies.values()) == side["datacomp"]["copies"]["copies"]


# -- 5. the audit of a file written earlier -------------------------------------------------
def write_for_audit(mix_store: Path, tmp_path: Path, capsys, fmt: str) -> tuple[Path, str]:
    """A 300-sample manifest in ``fmt`` in the store, and the audit its run printed."""
    images = '\nimages = "any"' if fmt in ("csv", "tsv") else ""  # the mix store has url samples only
    toml = policy_file(tmp_path, f"audited-{fmt}", f'format = "{fmt}"{images}',
                       body='[[select]]\nattribute = "words"\nvariant = "raw"\nop = ">="\nvalue = 2\n')
    code, out, err = run_cli("mix", str(toml), "--store", str(mix_store), "--audit", capsys=capsys)
    assert code == 0, err
    return mix_store / "manifests" / f"audited-{fmt}.{EXT[fmt]}", out[out.index("Size: pool vs manifest"):]


def copy_with(path: Path, dst: Path, fmt: str, how: str) -> Path:
    """A copy of the manifest, ``truncated`` to its first 100 rows or with one value
    ``edited``, beside a copy of its sidecar."""
    dst.mkdir(exist_ok=True)
    out = dst / path.name
    shutil.copy(path.with_name(path.name + ".sidecar.json"), dst / (path.name + ".sidecar.json"))
    if fmt == "npy":
        arr = np.load(path)
        if how == "truncated":
            arr = arr[:100]
        else:
            arr = arr.copy()
            arr[0]["f1"] ^= 1
            arr.sort()
        with out.open("wb") as f:
            np.save(f, arr)
    elif fmt == "parquet":
        t = pq.read_table(path)
        if how == "truncated":
            t = t.slice(0, 100)
        else:
            w = t.column("weight").to_pylist()
            t = t.set_column(t.schema.get_field_index("weight"), "weight", [[0.5] + w[1:]])
        pq.write_table(t, out)
    elif how == "truncated" and fmt in ("csv", "tsv"):
        sep = "\t" if fmt == "tsv" else ","
        duckdb.connect().execute(f"COPY (SELECT * FROM read_csv('{path}', delim = '{sep}', header = true) LIMIT 100) "
                   f"TO '{out}' (FORMAT csv, HEADER true, DELIMITER '{sep}')")
    elif how == "truncated":
        out.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:100]), encoding="utf-8")
    else:  # one letter of the first caption changes case
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        i = 1 if fmt in ("csv", "tsv") else 0
        j = next(k for k, ch in enumerate(lines[i]) if ch.isalpha() and k > 40)
        lines[i] = lines[i][:j] + lines[i][j].swapcase() + lines[i][j + 1:]
        out.write_text("".join(lines), encoding="utf-8")
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_intact_manifest_audits_like_the_run_that_wrote_it(mix_store, tmp_path, capsys, fmt):
    """Before: csv, tsv, json and npy manifests were refused by the audit."""
    path, during = write_for_audit(mix_store, tmp_path, capsys, fmt)
    code, out, err = run_cli("manifest-audit", str(path), "--store", str(mix_store), capsys=capsys)
    assert code == 0 and err == ""
    assert out.strip() == during.strip()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_truncated_copy_is_refused_naming_what_differs(mix_store, tmp_path, capsys, fmt):
    """Before: a copy holding 100 of the rows was audited as if it were the manifest."""
    path, _ = write_for_audit(mix_store, tmp_path, capsys, fmt)
    copy = copy_with(path, tmp_path / "copy", fmt, "truncated")
    code, out, err = run_cli("manifest-audit", str(copy), "--store", str(mix_store), capsys=capsys)
    lines = err.splitlines()
    assert code == 3 and out == ""
    assert lines[0].startswith("mismatch: sha256 of the file is ")
    assert lines[1] == "mismatch: the file has 100 rows, the sidecar records 300"
    assert lines[2] == (f"error: manifest {copy}: 2 difference(s) from its sidecar or the store (listed above); "
                        "--allow-mismatch audits it anyway") and len(lines) == 3
    code, out, err = run_cli("manifest-audit", str(copy), "--store", str(mix_store), "--allow-mismatch", capsys=capsys)
    assert code == 0 and err.splitlines()[1] == lines[1].replace("mismatch:", "warning:")
    assert re.search(r"│ manifest ┆ 100 +┆", out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_edited_copy_is_refused_by_its_sha256(mix_store, tmp_path, capsys, fmt):
    path, _ = write_for_audit(mix_store, tmp_path, capsys, fmt)
    copy = copy_with(path, tmp_path / "copy", fmt, "edited")
    code, out, err = run_cli("manifest-audit", str(copy), "--store", str(mix_store), capsys=capsys)
    lines = err.splitlines()
    assert code == 3 and len(lines) == 2
    assert lines[0].startswith("mismatch: sha256 of the file is ") and "(the file was changed" in lines[0]


def test_a_manifest_audited_against_a_grown_pool_is_refused(tmp_path, capsys):
    """Before: an old manifest was audited against the pool as it is now, without a word.
    The pool grows by 60 CapsFusion records and caption_stats runs again."""
    from curate.ingest import ingest
    from curate.registry import build_stage
    from curate.runner import RunOptions, run_stage

    records = json.loads((EXAMPLES / "capsfusion" / "example_data.json").read_text(encoding="utf-8"))
    (tmp_path / "a.json").write_text(json.dumps(records[:200]), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps(records[200:260]), encoding="utf-8")
    path = tmp_path / "store"
    with Store.init(path) as s:
        ingest(s, "capsfusion", tmp_path / "a.json", "capsfusion")
        run_stage(s, build_stage("text.caption_stats.v1"), RunOptions())
    toml = policy_file(tmp_path, "grown", body='[[select]]\nattribute = "words"\nvariant = "raw"\nop = ">="\nvalue = 2\n')
    assert run_cli("mix", str(toml), "--store", str(path), capsys=capsys)[0] == 0
    manifest = path / "manifests" / "grown.parquet"
    assert run_cli("manifest-audit", str(manifest), "--store", str(path), capsys=capsys)[0] == 0
    with Store.open(path) as s:
        ingest(s, "capsfusion", tmp_path / "b.json", "capsfusion")
        run_stage(s, build_stage("text.caption_stats.v1"), RunOptions())
    code, out, err = run_cli("manifest-audit", str(manifest), "--store", str(path), capsys=capsys)
    assert code == 3 and out == ""
    assert err.splitlines()[:-1] == [
        "mismatch: pool: 260 samples in the store now, 200 when the manifest was written",
        "mismatch: pool: 260 raw captions in the store now, 200 when the manifest was written",
        "mismatch: stage run of caption_stats (text.caption_stats.v1): run 2 when the manifest was written, run 4 now",
    ]


def test_a_sidecar_without_a_pool_fingerprint_is_named(mix_store, tmp_path, capsys):
    path, _ = write_for_audit(mix_store, tmp_path, capsys, "parquet")
    copy = copy_with(path, tmp_path / "old", "parquet", "truncated")
    shutil.copy(path, copy)
    side = copy.with_name(copy.name + ".sidecar.json")
    meta = json.loads(side.read_text(encoding="utf-8"))
    del meta["pool"]
    side.write_text(json.dumps(meta), encoding="utf-8")
    code, _, err = run_cli("manifest-audit", str(copy), "--store", str(mix_store), capsys=capsys)
    assert code == 3
    assert err.splitlines()[0] == ("mismatch: the sidecar records no pool fingerprint (written by an older curate), "
                                   "so the pool cannot be checked; write the manifest again")


def test_the_pool_fingerprint_is_the_sha256_of_the_sorted_uids(mix_store, tmp_path):
    import hashlib

    pol = policy_from_dict({"policy": {"name": "fp", "sources": ["capsfusion"]}})
    with Store.open(mix_store, read_only=True) as s:
        side = write_manifest(s, pol, path=tmp_path / "fp.parquet")
        uids = sorted(r[0] for r in s.execute("SELECT replace(uid::VARCHAR, '-', '') FROM samples "
                                                "WHERE source = 'capsfusion'").fetchall())
    assert side["pool"] == {"samples": 500, "captions": {"raw": 500},
                            "uids_sha256": hashlib.sha256(b"".join(bytes.fromhex(u) for u in uids)).hexdigest()}


def test_csv_holds_only_samples_whose_image_opens_and_says_what_it_left_out(tmp_path, capsys):
    """Issue 16, item 5: open_clip's CsvDataset opens every filepath, so a csv/tsv
    manifest keeps only samples whose image is a local file that exists, by default; the
    others are counted by reason in the summary and the sidecar (`images = "any"` keeps
    url rows for a loader that fetches them). The has_image attribute selects the same."""
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8), "red").save(imgs / name)
    doc = {"images": [{"id": i, "file_name": f} for i, f in enumerate(["a.jpg", "b.jpg", "gone.jpg"])],
           "annotations": [{"id": 10 + i, "image_id": i, "caption": f"caption {i}"} for i in range(3)]}
    (imgs / "captions.json").write_text(json.dumps(doc), encoding="utf-8")
    store = tmp_path / "s"
    assert run_cli("ingest", "coco", str(imgs / "captions.json"), "--source", "coco", "--store", str(store),
                   capsys=capsys)[0] == 0
    (tmp_path / "u.csv").write_text("url,caption\nhttp://x/1.jpg,caption url\n", encoding="utf-8")
    assert run_cli("ingest", "table", str(tmp_path / "u.csv"), "--source", "web", "--variant", "human",
                   "--store", str(store), capsys=capsys)[0] == 0
    toml = tmp_path / "all.toml"
    toml.write_text('[policy]\nname = "all"\n[choose]\nstrategy = "variant"\nvariant = "human"\n[output]\nformat = "csv"\n', encoding="utf-8")
    code, out, err = run_cli("mix", str(toml), "--store", str(store), capsys=capsys)
    assert code == 0, err
    assert "wrote 2 rows" in out
    assert "left out 2 samples whose image is not a local file (no image: 1, image file missing: 1)" in out
    path = store / "manifests" / "all.csv"
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert sorted(Path(r["filepath"]).name for r in rows) == ["a.jpg", "b.jpg"]
    assert all(Path(r["filepath"]).is_file() for r in rows)
    side = json.loads(path.with_name(path.name + ".sidecar.json").read_text(encoding="utf-8"))
    assert side["rows"] == 2 and side["open_clip"]["excluded"] == {"no image": 1, "image file missing": 1}
    code, out, _ = run_cli("mix", str(toml), "--store", str(store), "--images", "any", "--name", "urls", capsys=capsys)
    assert code == 0 and "wrote 4 rows" in out
    # the attribute: a policy can ask for stored images in any format
    sel = tmp_path / "img.toml"
    sel.write_text('[policy]\nname = "img"\n[choose]\nstrategy = "variant"\nvariant = "human"\n[[select]]\nattribute = "has_image"\n'
                   'op = "="\nvalue = true\n', encoding="utf-8")
    code, out, _ = run_cli("mix", str(sel), "--store", str(store), capsys=capsys)
    assert code == 0 and "wrote 3 rows" in out  # the missing file is still a stored path; shards checks bytes
