"""The in-process captioner (curate.generate.local) on a tiny random BLIP and a tiny random
BLIP-2 (OPT decoder) and Florence-2 (the generic AutoModelForImageTextToText path) saved with
save_pretrained (tests/tinycaptioner.py): real PNG/JPEG bytes in, captions out, checked
against batch size 1 and against a plain transformers ``generate`` loop (the oracles)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")

from curate.errors import ConfigError  # noqa: E402
from curate.generate.local import LocalCaption, LocalCaptioner  # noqa: E402

from .tinycaptioner import NUM_QUERY_TOKENS, write_tiny_blip, write_tiny_blip2, write_tiny_florence2  # noqa: E402

MAX_NEW = 12


@pytest.fixture(scope="module")
def blip(tmp_path_factory) -> Path:
    return write_tiny_blip(tmp_path_factory.mktemp("tinyblip"), seed=0)


def encode(im, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_images(n: int = 12, seed: int = 0) -> list[bytes]:
    """Different colours, gradients, stripes and noise, of different sizes, as PNG and JPEG."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(24, 80)), int(rng.integers(24, 80))
        y, x = np.mgrid[0:h, 0:w]
        kind = i % 4
        if kind == 0:  # flat colour
            arr = np.broadcast_to(rng.integers(0, 256, 3), (h, w, 3))
        elif kind == 1:  # gradient
            arr = np.stack([x * 255 // w, y * 255 // h, np.full((h, w), int(rng.integers(0, 256)))], -1)
        elif kind == 2:  # stripes
            period = int(rng.integers(2, 9))
            arr = np.where(((x // period) % 2)[..., None] == 0, rng.integers(0, 256, 3), rng.integers(0, 256, 3))
        else:  # noise
            arr = rng.integers(0, 256, (h, w, 3))
        im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
        out.append(encode(im, "PNG" if i % 2 else "JPEG"))
    return out


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return make_images()


@pytest.fixture(scope="module")
def cap4(blip) -> LocalCaptioner:
    return LocalCaptioner(str(blip), batch_size=4, max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def one_by_one(blip, images) -> list[LocalCaption]:
    """Each image captioned alone (batch size 1): the oracle for batching and order."""
    cap = LocalCaptioner(str(blip), batch_size=1, max_new_tokens=MAX_NEW)
    return [cap.caption([b])[0] for b in images]


def plain_loop(folder: Path, images: list[bytes], *, batch: int, prompt: str | None = None,
               min_new_tokens: int = 0) -> list[str]:
    """What a user writes with transformers alone: AutoProcessor + generate per batch."""
    processor = transformers.AutoProcessor.from_pretrained(folder)
    model = transformers.BlipForConditionalGeneration.from_pretrained(folder).eval()
    texts = []
    for s in range(0, len(images), batch):
        pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images[s:s + batch]]
        kw = {"text": [prompt] * len(pil)} if prompt else {}
        inputs = processor(images=pil, return_tensors="pt", **kw)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW, min_new_tokens=min_new_tokens)
        texts += [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]
    return texts


def test_one_result_per_image_in_order(cap4, images, one_by_one):
    got = cap4.caption(images)
    assert len(got) == len(images)
    assert all(isinstance(r, LocalCaption) and r.error is None and r.text is not None for r in got)
    assert [r.text for r in got] == [r.text for r in one_by_one]
    # the captions depend on the image, so a shuffled order would show
    assert len({r.text for r in got}) >= len(images) // 2
    rev = cap4.caption(images[::-1])
    assert [r.text for r in rev] == [r.text for r in got][::-1]


def test_greedy_is_deterministic(cap4, images):
    a = cap4.caption(images[:5])
    b = cap4.caption(images[:5])
    assert a[0].text is not None
    assert [(r.text, r.tokens_out, r.finish_reason) for r in a] == [(r.text, r.tokens_out, r.finish_reason) for r in b]
    same = cap4.caption([images[3]] * 4 + [images[3]])  # one batch of four copies, then one alone
    assert len({(r.text, r.tokens_out, r.finish_reason) for r in same}) == 1


def test_batch_size_does_not_change_results(blip, images, one_by_one):
    for bs in (4, 5, 16):
        got = LocalCaptioner(str(blip), batch_size=bs, max_new_tokens=MAX_NEW).caption(images)
        assert [(r.text, r.tokens_out, r.finish_reason) for r in got] == \
               [(r.text, r.tokens_out, r.finish_reason) for r in one_by_one], bs


def test_tokens_out_and_finish_reason(cap4, images):
    t0 = time.perf_counter()
    got = cap4.caption(images + make_images(20, seed=1))
    wall = time.perf_counter() - t0
    # each batch's time is shared by its images; the shares add up to the call's time
    assert sum(r.latency_s for r in got) == pytest.approx(wall, rel=0.05)
    for r in got:
        assert 1 <= r.tokens_out <= MAX_NEW
        assert r.finish_reason in ("stop", "length")
        if r.finish_reason == "length":
            assert r.tokens_out == MAX_NEW
        # every token of the tiny vocabulary but the specials is one word; the end token is no word
        assert len(r.text.split()) <= r.tokens_out - (r.finish_reason == "stop")
        assert r.latency_s > 0
    # the tiny model's end-of-caption bias makes both occur; without it this test proves little
    assert {r.finish_reason for r in got} == {"stop", "length"}


def test_min_new_tokens_holds_back_the_end(blip, images):
    cap = LocalCaptioner(str(blip), batch_size=8, max_new_tokens=MAX_NEW, min_new_tokens=5)
    got = cap.caption(images + make_images(20, seed=1))
    assert all(r.tokens_out > 5 for r in got)
    assert all(r.tokens_out == MAX_NEW for r in got if r.finish_reason == "length")


def test_same_texts_as_a_plain_generate_loop(blip, images, cap4):
    ours = [r.text for r in cap4.caption(images)]
    assert ours == plain_loop(blip, images, batch=4)
    prompted = LocalCaptioner(str(blip), batch_size=4, max_new_tokens=MAX_NEW, prompt="a picture of",
                              min_new_tokens=2)
    # the plain loop decodes the prompt too; the captioner returns the continuation only
    theirs = plain_loop(blip, images, batch=4, prompt="a picture of", min_new_tokens=2)
    assert [f"a picture of {r.text}".strip() for r in prompted.caption(images)] == theirs


def test_undecodable_images_fail_alone(cap4, images, one_by_one):
    truncated = images[1][: len(images[1]) // 2]
    batch = [images[0], b"not an image at all", truncated, b"", images[2], images[3]]
    got = cap4.caption(batch)
    assert len(got) == len(batch)
    for i in (1, 2, 3):
        r = got[i]
        assert r.text is None and r.tokens_out == 0 and r.finish_reason == "error"
        assert r.error.startswith("cannot decode image: ") and "\n" not in r.error
        assert "0x" not in r.error  # no object addresses in the message
    assert [got[i].text for i in (0, 4, 5)] == [one_by_one[i].text for i in (0, 2, 3)]


def test_other_modes_and_formats(cap4):
    arr = (np.arange(40 * 30 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
    rgb = Image.fromarray(arr)
    odd = [encode(rgb.convert("L"), "PNG"), encode(rgb.convert("RGBA"), "PNG"),
           encode(rgb.convert("P"), "GIF"), encode(rgb, "WEBP"), encode(rgb, "BMP")]
    got = cap4.caption(odd)
    assert all(r.error is None and r.text is not None for r in got), got


def test_beam_search(blip, images):
    got = LocalCaptioner(str(blip), batch_size=4, max_new_tokens=MAX_NEW, num_beams=3).caption(images[:6])
    assert all(r.error is None and 1 <= r.tokens_out <= MAX_NEW for r in got)
    assert all(r.tokens_out == MAX_NEW for r in got if r.finish_reason == "length")


def test_missing_model_is_one_line_config_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError) as e:
        LocalCaptioner(str(missing))
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg and "hf download Salesforce/blip-image-captioning-base" in msg
    with pytest.raises(ConfigError) as e:  # a hub id not in the cache: nothing is downloaded
        LocalCaptioner("curate-tests/no-such-captioner-7f3a")
    assert "\n" not in str(e.value) and "local Hugging Face cache" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as e:
        LocalCaptioner(str(empty))
    assert "\n" not in str(e.value) and str(empty) in str(e.value)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"batch_size": 0}, "batch_size"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"num_beams": True}, "num_beams"), ({"min_new_tokens": 13, "max_new_tokens": 12}, "min_new_tokens"),
    ({"dtype": "fp8"}, "dtype"), ({"device": "tpu"}, "device"),
    ({"max_new_tokens": 100}, "text positions"), ({"revision": "main"}, "hub ids only"),
])
def test_bad_arguments(blip, kwargs, words):
    with pytest.raises(ConfigError, match=words) as e:
        LocalCaptioner(str(blip), **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_cuda_without_gpu(blip):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        LocalCaptioner(str(blip), device="cuda")


def test_info_and_revision(blip, cap4, tmp_path):
    info = cap4.info()
    assert info["backend"] == "transformers" and info["model"] == str(blip)
    assert info["model_class"] == "BlipForConditionalGeneration"
    assert (info["device"], info["dtype"]) == ("cpu", "float32")
    assert info["transformers"] == transformers.__version__
    rev = info["revision"]
    assert len(rev) == 16 and int(rev, 16) >= 0
    copy = shutil.copytree(blip, tmp_path / "copy")
    assert LocalCaptioner(str(copy)).info()["revision"] == rev  # the same weights, elsewhere
    other = write_tiny_blip(tmp_path / "seed1", seed=1)
    assert LocalCaptioner(str(other)).info()["revision"] != rev


def test_hub_id_from_the_local_cache(blip, images, cap4, tmp_path):
    """A hub id resolves to its snapshot in the HF cache (laid out as huggingface_hub
    writes it), offline; the revision is the snapshot's commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--curate-tests--tiny-blip"
    shutil.copytree(blip, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = ("import sys, json; from curate.generate.local import LocalCaptioner; "
            "c = LocalCaptioner('curate-tests/tiny-blip', batch_size=4, max_new_tokens=12); "
            "print(json.dumps([c.info()['revision'], c.info()['model']] + "
            "[r.text for r in c.caption([open(p, 'rb').read() for p in sys.argv[1:]])]))")
    files = []
    for i, b in enumerate(images[:4]):
        files.append(tmp_path / f"{i}.img")
        files[-1].write_bytes(b)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code, *map(str, files)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]

    rev, model, *texts = json.loads(out.stdout.strip().splitlines()[-1])
    assert (rev, model) == (commit, "curate-tests/tiny-blip")
    assert texts == [r.text for r in cap4.caption(images[:4])]


def test_close(blip, images):
    cap = LocalCaptioner(str(blip), max_new_tokens=4)
    with cap:
        assert cap.caption(images[:1])[0].text is not None
    with pytest.raises(ConfigError, match="after close"):
        cap.caption(images[:1])
    cap.close()  # twice is fine


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the CPU twin is tested above)")
def test_cuda_half_precision(blip, images):
    cap = LocalCaptioner(str(blip), device="auto", batch_size=4, max_new_tokens=MAX_NEW)
    info = cap.info()
    assert info["device"] == "cuda:0" and info["dtype"] in ("bfloat16", "float16")
    got = cap.caption(images)
    assert all(r.error is None and r.text is not None for r in got)


@pytest.mark.parametrize("threads", [1, os.cpu_count() or 1])
def test_with_and_without_the_helper_thread(cap4, images, one_by_one, threads):
    """With a core left free by torch the next batch is prepared on a helper thread, else
    inline; the results are the same either way."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert cap4._spare_core() == (threads < len(os.sched_getaffinity(0)))
        got = cap4.caption(images)
    finally:
        torch.set_num_threads(before)
    assert [(r.text, r.tokens_out, r.finish_reason) for r in got] == \
           [(r.text, r.tokens_out, r.finish_reason) for r in one_by_one]


# -- BLIP-2: a decoder-only text model behind a Q-Former --------------------------------------


@pytest.fixture(scope="module")
def blip2(tmp_path_factory) -> Path:
    return write_tiny_blip2(tmp_path_factory.mktemp("tinyblip2"), seed=0)


@pytest.fixture(scope="module")
def blip2_cap4(blip2) -> LocalCaptioner:
    return LocalCaptioner(str(blip2), batch_size=4, max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def blip2_one_by_one(blip2, images) -> list[LocalCaption]:
    cap = LocalCaptioner(str(blip2), batch_size=1, max_new_tokens=MAX_NEW)
    return [cap.caption([b])[0] for b in images]


def blip2_plain_loop(folder: Path, images: list[bytes], *, batch: int, prompt: str = "",
                     min_new_tokens: int = 0) -> list[tuple[list[int], str]]:
    """AutoProcessor + Blip2ForConditionalGeneration.generate per batch: the tokens after the
    processor's input ids (query placeholders, start token, prompt), and their decoded text."""
    processor = transformers.AutoProcessor.from_pretrained(folder)
    model = transformers.Blip2ForConditionalGeneration.from_pretrained(folder).eval()
    out = []
    for s in range(0, len(images), batch):
        pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images[s:s + batch]]
        inputs = processor(images=pil, text=[prompt] * len(pil), return_tensors="pt")
        with torch.inference_mode():
            seqs = model.generate(**inputs, max_new_tokens=MAX_NEW, min_new_tokens=min_new_tokens)
        new = seqs[:, inputs["input_ids"].shape[1]:]
        out += [(row.tolist(), processor.decode(row, skip_special_tokens=True).strip()) for row in new]
    return out


def _triples(results: list[LocalCaption]) -> list[tuple[str | None, int, str]]:
    return [(r.text, r.tokens_out, r.finish_reason) for r in results]


def test_blip2_in_order_and_batch_size_free(blip2, blip2_cap4, images, blip2_one_by_one):
    got = blip2_cap4.caption(images)
    assert all(r.error is None and r.text is not None for r in got)
    assert _triples(got) == _triples(blip2_one_by_one)
    assert len({r.text for r in got}) >= len(images) // 2  # the captions depend on the image
    assert [r.text for r in blip2_cap4.caption(images[::-1])] == [r.text for r in got][::-1]
    for bs in (5, 16):
        assert _triples(LocalCaptioner(str(blip2), batch_size=bs, max_new_tokens=MAX_NEW).caption(images)) \
               == _triples(blip2_one_by_one), bs


def test_blip2_is_deterministic(blip2_cap4, images):
    a, b = blip2_cap4.caption(images[:5]), blip2_cap4.caption(images[:5])
    assert _triples(a) == _triples(b)
    same = blip2_cap4.caption([images[3]] * 5)  # one batch of four copies, then one alone
    assert len(set(_triples(same))) == 1


def test_blip2_same_as_a_plain_generate_loop(blip2, blip2_cap4, images):
    """Text, tokens_out and finish_reason from the tokens generate() returns after the input ids."""
    more = images + make_images(20, seed=1)
    ours = blip2_cap4.caption(more)
    theirs = blip2_plain_loop(blip2, more, batch=4)
    eos = transformers.AutoConfig.from_pretrained(blip2).text_config.eos_token_id
    expected = []
    for row, text in theirs:
        # generate() pads a row that ended before the batch's longest: the end token is the last one counted
        n = row.index(eos) + 1 if eos in row else len(row)
        expected.append((text, n, "stop" if eos in row else "length"))
    assert _triples(ours) == expected
    # no query placeholder and no start token in the captions; both finish reasons occur
    assert not any("<image>" in r.text or "</s>" in r.text for r in ours)
    assert {r.finish_reason for r in ours} == {"stop", "length"}
    assert all(r.tokens_out == MAX_NEW for r in ours if r.finish_reason == "length")


def test_blip2_prompt_is_not_repeated(blip2, images):
    cap = LocalCaptioner(str(blip2), batch_size=4, max_new_tokens=MAX_NEW, prompt="a picture of",
                         min_new_tokens=2)
    got = cap.caption(images)
    theirs = blip2_plain_loop(blip2, images, batch=4, prompt="a picture of", min_new_tokens=2)
    assert [r.text for r in got] == [text for _, text in theirs]
    assert all(r.tokens_out > 2 for r in got)
    # the prompt changes what follows it, so it did reach the model
    assert [r.text for r in got] != [r.text for r in LocalCaptioner(
        str(blip2), batch_size=4, max_new_tokens=MAX_NEW, min_new_tokens=2).caption(images)]


def test_blip2_info_and_processor(blip2, blip2_cap4):
    info = blip2_cap4.info()
    assert info["model_class"] == "Blip2ForConditionalGeneration"
    assert (info["device"], info["dtype"]) == ("cpu", "float32")
    assert len(info["revision"]) == 16
    assert blip2_cap4.prompt is None
    # transformers 5: the processor puts one placeholder per query token before the text
    ids = blip2_cap4._process([Image.new("RGB", (40, 30))])["input_ids"][0].tolist()
    image_token = blip2_cap4.model.config.image_token_id
    assert ids[:NUM_QUERY_TOKENS] == [image_token] * NUM_QUERY_TOKENS and image_token not in ids[NUM_QUERY_TOKENS:]


def test_blip2_loads_offline(blip2, images, tmp_path):
    """HF_HUB_OFFLINE=1 in a fresh process: the folder is all it needs."""
    code = ("import sys, json; from curate.generate.local import LocalCaptioner; "
            "c = LocalCaptioner(sys.argv[1], batch_size=4, max_new_tokens=12); "
            "print(json.dumps([c.info()['model_class']] + "
            "[r.text for r in c.caption([open(p, 'rb').read() for p in sys.argv[2:]])]))")
    files = []
    for i, b in enumerate(images[:4]):
        files.append(tmp_path / f"{i}.img")
        files[-1].write_bytes(b)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub"),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code, str(blip2), *map(str, files)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    cls, *texts = json.loads(out.stdout.strip().splitlines()[-1])
    assert cls == "Blip2ForConditionalGeneration"
    assert texts == [r.text for r in LocalCaptioner(str(blip2), batch_size=4, max_new_tokens=12).caption(images[:4])]


def test_blip2_text_positions_are_checked_up_front(blip2, images):
    """OPT's learned positions end at 64: 4 query placeholders + </s> + 60 new tokens fit (the
    last one is never fed back), 61 do not, and a 3-word prompt takes 3 more."""
    for prompt, fits in ((None, 60), ("a picture of", 57)):
        got = LocalCaptioner(str(blip2), batch_size=2, max_new_tokens=fits, min_new_tokens=fits,
                             prompt=prompt).caption(images[:2])
        assert all(r.error is None and r.tokens_out == fits for r in got), got
        with pytest.raises(ConfigError, match="text positions") as e:
            LocalCaptioner(str(blip2), max_new_tokens=fits + 1, prompt=prompt)
        assert "\n" not in str(e.value)


# -- Florence-2: the generic AutoModelForImageTextToText path, an encoder-decoder -------------


@pytest.fixture(scope="module")
def florence2(tmp_path_factory) -> Path:
    return write_tiny_florence2(tmp_path_factory.mktemp("tinyflorence2"), seed=0)


def test_florence2_matches_a_plain_loop_in_any_batch(florence2, images):
    more = images + make_images(20, seed=1)
    cap4 = LocalCaptioner(str(florence2), batch_size=4, max_new_tokens=MAX_NEW)
    info = cap4.info()
    assert info["model_class"] == "Florence2ForConditionalGeneration"  # via AutoModelForImageTextToText
    assert cap4.prompt == "<CAPTION>"  # Florence-2's caption task by default
    ours = cap4.caption(more)

    processor = transformers.AutoProcessor.from_pretrained(florence2)
    model = transformers.Florence2ForConditionalGeneration.from_pretrained(florence2).eval()
    eos = model.generation_config.eos_token_id
    expected = []
    for s in range(0, len(more), 4):
        pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in more[s:s + 4]]
        inputs = processor(images=pil, text=["<CAPTION>"] * len(pil), return_tensors="pt")
        with torch.inference_mode():
            seqs = model.generate(**inputs, max_new_tokens=MAX_NEW)
        for row in seqs[:, 1:].tolist():  # after the decoder's start token (which is </s> too)
            n = row.index(eos) + 1 if eos in row else len(row)
            expected.append((processor.decode(row[:n], skip_special_tokens=True).strip(), n,
                             "stop" if eos in row else "length"))
    assert _triples(ours) == expected
    assert {r.finish_reason for r in ours} == {"stop", "length"}
    assert len({r.text for r in ours}) >= len(more) // 2  # the captions depend on the image
    # the question the task stands for is the encoder's input, not part of the caption
    assert not any("describe" in r.text for r in ours)

    alone = LocalCaptioner(str(florence2), batch_size=1, max_new_tokens=MAX_NEW)
    assert _triples([alone.caption([b])[0] for b in images]) == _triples(ours[:len(images)])
    assert _triples(cap4.caption(images[:5])) == _triples(ours[:5])  # deterministic


def test_florence2_forced_end_token_is_length(florence2, images, tmp_path):
    """BART-based checkpoints set forced_eos_token_id: generate() then ends a caption cut at
    max_new_tokens with </s>; that is still finish_reason "length", with the same text."""
    forced = Path(shutil.copytree(florence2, tmp_path / "forced"))
    gen = json.loads((forced / "generation_config.json").read_text())
    gen["forced_eos_token_id"] = gen["eos_token_id"]
    (forced / "generation_config.json").write_text(json.dumps(gen))
    more = images + make_images(20, seed=1)
    plain = LocalCaptioner(str(florence2), batch_size=8, max_new_tokens=MAX_NEW).caption(more)
    cap = LocalCaptioner(str(forced), batch_size=8, max_new_tokens=MAX_NEW)
    got = cap.caption(more)
    assert {r.finish_reason for r in plain} == {"stop", "length"}
    for p, g in zip(plain, got, strict=True):
        if p.finish_reason == "stop" and p.tokens_out < MAX_NEW:
            assert (g.text, g.tokens_out, g.finish_reason) == (p.text, p.tokens_out, "stop")
        else:  # the forced </s> replaced the last word
            assert (g.tokens_out, g.finish_reason) == (MAX_NEW, "length")
            assert len(g.text.split()) <= MAX_NEW - 1
    model = cap.model
    inputs = cap._process([Image.open(io.BytesIO(b)).convert("RGB") for b in more[:8]])
    with torch.inference_mode():
        rows = model.generate(**inputs, max_new_tokens=MAX_NEW)[:, 1:].tolist()
    assert all(gen["eos_token_id"] in row for row in rows)  # every caption ends with </s>: forced or chosen
