"""Names that become paths in the vectors and concepts commands (issue 17): vector-set,
vocabulary, variant, tail-benchmark and report names. A hostile name (``../../x``, an
absolute path, ``..``, empty) is one ``error:`` line naming the kind of name, exit 2,
checked before the store is opened or any input read, and nothing changes in the folder
that holds the store (the store included)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import Store
from curate.cli import main
from curate.errors import ConfigError

from .test_vectors import add_samples, make_uids, normalise


def hostile_names(root: Path) -> list[str]:
    return ["../../x", str(root / "abs"), "..", "", "a/b"]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store (samples, an image and a text vector set, a vocabulary) inside a parent
    folder, and valid inputs for every importer beside it."""
    parent = tmp_path_factory.mktemp("parent")
    uids = make_uids(6)
    x = normalise(np.random.default_rng(0).standard_normal((6, 8))).astype(np.float32)
    with Store.init(parent / "store") as s:
        add_samples(s, uids)
        from curate.vectors import write_set

        write_set(s, "img", x, uids)
        cids = [r[0] for r in s.con.execute("SELECT caption_id::VARCHAR FROM captions ORDER BY uid").fetchall()]
        write_set(s, "txt", x, cids, kind="text", variant="raw")
    inputs = parent / "inputs"
    (inputs / "cr" / "img_emb").mkdir(parents=True)
    (inputs / "cr" / "metadata").mkdir()
    np.save(inputs / "x.npy", x)
    (inputs / "ids.txt").write_text("\n".join(uids) + "\n", encoding="utf-8")
    np.save(inputs / "cr" / "img_emb" / "img_emb_0.npy", x)
    pq.write_table(pa.table({"uid": uids}), inputs / "cr" / "metadata" / "metadata_0.parquet")
    np.savez(inputs / "d.npz", l14_img=x)
    pq.write_table(pa.table({"uid": [u.replace("-", "") for u in uids]}), inputs / "d.parquet")
    (inputs / "v.txt").write_text("dog\ncat\n", encoding="utf-8")
    return parent


COMMANDS = {
    "vectors import npy": (["vectors", "import", "{N}", "{in}/x.npy", "--ids", "{in}/ids.txt"], "vector set"),
    "vectors import clip-retrieval": (["vectors", "import", "{N}", "{in}/cr"], "vector set"),
    "vectors import datacomp": (["vectors", "import", "{N}", "{in}/d.npz", "--uids", "{in}/d.parquet"], "vector set"),
    "vectors export": (["vectors", "export", "{N}", "{in}/exported"], "vector set"),
    "vectors export --text-set": (["vectors", "export", "img", "{in}/exported", "--text-set", "{N}"], "vector set"),
    "vectors export datacomp --with": (["vectors", "export", "img", "{in}/e.npz", "--format", "datacomp",
                                        "--with", "l14_txt={N}"], "vector set"),
    "vectors drop": (["vectors", "drop", "{N}"], "vector set"),
    "concepts vocab add": (["concepts", "vocab", "add", "{N}", "{in}/v.txt"], "vocabulary"),
    "concepts tail --vocabulary": (["concepts", "tail", "--vocabulary", "{N}"], "vocabulary"),
    "concepts tail --variant": (["concepts", "tail", "--vocabulary", "mini", "--variant", "{N}"], "variant"),
    "concepts tail --name": (["concepts", "tail", "--vocabulary", "mini", "--name", "{N}"], "tail benchmark"),
    "concepts image-count --vocabulary": (["concepts", "image-count", "--vocabulary", "{N}", "--image-set", "img",
                                           "--model", "ViT-B-32", "--pretrained", "openai"], "vocabulary"),
    "concepts image-count --image-set": (["concepts", "image-count", "--vocabulary", "mini", "--image-set", "{N}",
                                          "--model", "ViT-B-32", "--pretrained", "openai"], "vector set"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("which", range(5), ids=["dotdot-x", "absolute", "dotdot", "empty", "slash"])
def test_a_hostile_name_is_one_config_error_line_and_writes_nothing(world, command, which, capsys):
    name = hostile_names(world)[which]
    template, kind = COMMANDS[command]
    argv = [a.replace("{N}", name).replace("{in}", str(world / "inputs")) for a in template]
    before = tree(world)
    capsys.readouterr()
    rc = main(argv + ["--store", str(world / "store")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    want = f"error: {kind} name {name!r} must be"
    if command.endswith("--with") and not name:
        want = "error: --with expects KEY=SET, got 'l14_txt='"
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(want), err
    assert tree(world) == before  # nothing outside the store, nor in it


def test_the_api_checks_names_before_any_work(world, tmp_path):
    """The library entry points refuse the same names (ConfigError) with the inputs unread:
    the inputs named here do not exist, so a late check would fail differently."""
    from curate.concepts.image import concept_set_name
    from curate.concepts.tail import build_tail_benchmark, tail_path
    from curate.vectors import import_clip_retrieval, import_datacomp, import_npy, set_path

    missing = tmp_path / "missing"
    with Store.open(world / "store", read_only=True) as s:
        for bad in hostile_names(tmp_path):
            with pytest.raises(ConfigError, match="vector set name"):
                import_npy(s, bad, missing, missing)
            with pytest.raises(ConfigError, match="vector set name"):
                import_clip_retrieval(s, bad, missing)
            with pytest.raises(ConfigError, match="vector set name"):
                import_datacomp(s, bad, missing, missing)
            with pytest.raises(ConfigError, match="vector set name"):
                set_path(s, bad)
            with pytest.raises(ConfigError, match="vocabulary name"):
                concept_set_name(bad, "ViT-B-32/openai")
            with pytest.raises(ConfigError, match="tail benchmark name"):
                build_tail_benchmark(s, "mini", name=bad)
    # the default tail name is built from checked parts and stays in manifests/
    assert tail_path(world / "store", "mini", n=3, variant="raw") == \
        world / "store" / "manifests" / "tail_mini_phrase_raw_n3.parquet"
    with pytest.raises(ConfigError, match=r"a tail benchmark is a \.parquet file"):
        tail_path(world / "store", "mini", out=tmp_path / "t.json")  # its sidecar would overwrite it
    assert concept_set_name("mini", "ViT-B-32/openai") == "concepts.mini.ViT-B-32_openai"


def test_report_names_stay_in_the_reports_folder(tmp_path):
    """Plot paths of `concepts audit` and `concepts fit` are made from labels (count
    sources, a metric file's name): slugged, at most 150 characters, under reports/."""
    from curate.cli.concepts import report_path

    reports = (tmp_path / "store" / "reports").resolve()
    for stem in ("../../x", "concepts_fit_" + "a" * 400, "/etc/passwd", "store:../../x"):
        p = report_path(None, tmp_path / "store", stem)
        assert p.resolve().parent == reports and len(p.name) <= 150, p
    assert report_path(tmp_path / "plots", tmp_path / "store", "concepts_fit_m") == tmp_path / "plots" / "concepts_fit_m"
    with pytest.raises(ConfigError, match="report name ''"):  # nothing of the stem is left
        report_path(None, tmp_path / "store", "..")
