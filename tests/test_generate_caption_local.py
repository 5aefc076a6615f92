"""generate.caption.v1 with the in-process transformers backend: a tiny random BLIP
(tests/tinycaptioner.py) captions real image files through the CLI; the captions equal
the captioner's own on the same bytes (oracle), bad images are rows, a rerun adds
nothing, a missing model is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate.cli import main
from curate.store import Store
from tests.test_generate_image import N_GOOD, image_store  # noqa: F401  (fixture)

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    from tests.tinycaptioner import write_tiny_blip

    return write_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip", seed=0)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _argv(store: Path, model: Path | str, *extra: str) -> list[str]:
    return ["generate", "caption", "--store", str(store), "--backend", "transformers", "--local-model", str(model),
            "--variant", "blip", "--max-tokens", "12", "-c", "language=any", "-c", "local_batch_size=4", *extra]


def test_in_process_captions_equal_the_captioners_own(image_store, tiny_blip, capsys):
    from curate.generate.local import LocalCaptioner

    code, out, err = _run(_argv(image_store, tiny_blip), capsys)
    assert code == 0, err
    assert "inputs with no output: 4 (3 undecodable, 1 image not found)" in out
    with Store.open(image_store, read_only=True) as s:
        gens = s.con.sql("SELECT g.*, s.image_path FROM generations g JOIN samples s USING (uid)"
                         ).to_arrow_table().to_pylist()
        captions = {(uid, text) for uid, text in s.con.execute(
            "SELECT uid::VARCHAR, text FROM captions WHERE variant = 'blip'").fetchall()}
    assert len(gens) == N_GOOD + 6
    good = [g for g in gens if g["outputs"]]
    assert len(good) == N_GOOD + 2
    # the oracle: the captioner called directly on the same image files (JPEG and PNG are
    # sent as they are; the WebP and the large PNG are re-encoded first, so left out here)
    plain = [g for g in good if g["image_path"].endswith((".jpg", ".png")) and "large" not in g["image_path"]]
    with LocalCaptioner(str(tiny_blip), batch_size=1, max_new_tokens=12) as cap:
        direct = cap.caption([Path(g["image_path"]).read_bytes() for g in plain])
        info = cap.info()
    for g, d in zip(plain, direct, strict=True):
        o = g["outputs"][0]
        assert o["finish_reason"] == d.finish_reason and o["completion_tokens"] == d.tokens_out
        if o["status"] == "ok":
            assert o["text"] == d.text.strip() and (str(g["uid"]), o["text"]) in captions
        gen = json.loads(o["generation"])
        assert gen["backend"] == "transformers" and gen["model_revision"] == info["revision"]
        assert gen["device"] == "cpu" and gen["dtype"] == "float32" and gen["sampling"]["max_new_tokens"] == 12
    # finish reasons follow the token count
    for g in good:
        o = g["outputs"][0]
        assert (o["finish_reason"] == "length") == (o["completion_tokens"] == 12)
        assert o["status"] == ("truncated" if o["finish_reason"] == "length" else o["status"])
    assert any(o["outputs"][0]["status"] == "ok" for o in good)
    # a rerun has nothing pending; a dry run says the model is in process
    code, out, err = _run(_argv(image_store, tiny_blip), capsys)
    assert code == 0 and "0 rows in" in out, err
    code, out, err = _run(_argv(image_store, tiny_blip, "--dry-run"), capsys)
    assert code == 0 and "0 inputs pending" in out and "in-process" in out, out + err


def test_a_missing_model_is_one_line(image_store, tmp_path, capsys):
    code, out, err = _run(_argv(image_store, tmp_path / "no-such-model"), capsys)
    assert code != 0 and "no-such-model" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    with Store.open(image_store, read_only=True) as s:
        assert "generations" not in s.tables()
