"""llama-server with the tiny random vision-language model of ``tests/genvision.py``
(text model plus ``--mmproj``): it reports vision, takes ``image_url`` parts, its
answers depend on the image and only on the image, and a broken image is an HTTP error
after which it keeps serving."""

from __future__ import annotations

import base64
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.genserver import MODEL_ALIAS, NO_EOS, find_llama_server, serve
from tests.genvision import IMAGE_TOKENS, png, write_tiny_mmproj, write_tiny_vlm

MAX_TOKENS = 16


def need_llama_server() -> None:
    """Skip as the conftest ``llama_server`` fixture does (fail under CI's
    ``CURATE_REQUIRE_SYSTEM_PACKAGES=1``)."""
    if find_llama_server() is None:
        reason = "llama-server not built: run make llama-server"
        if os.environ.get("CURATE_REQUIRE_SYSTEM_PACKAGES") == "1":
            pytest.fail(reason + "; CI requires it (CURATE_REQUIRE_SYSTEM_PACKAGES=1)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def vlm_server(tmp_path_factory):
    need_llama_server()
    model, mmproj = write_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"), seed=0)
    with serve(model, parallel=2, ctx=4096, extra_args=["--mmproj", str(mmproj)]) as server:
        yield server


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def chat(server, url: str | None, text: str = "Describe the image.") -> httpx.Response:
    """One temperature-0 chat request; ``url`` None sends the text alone."""
    parts: list[dict] = [{"type": "text", "text": text}]
    if url is not None:
        parts.append({"type": "image_url", "image_url": {"url": url}})
    body = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": parts}],
            "max_tokens": MAX_TOKENS, "temperature": 0, **NO_EOS}
    return httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=60)


def answer(server, url: str | None) -> str:
    r = chat(server, url)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def test_writing_is_deterministic_per_seed(tmp_path):
    a = write_tiny_vlm(tmp_path / "a", seed=0)
    b = write_tiny_vlm(tmp_path / "b", seed=0)
    c = write_tiny_vlm(tmp_path / "c", seed=1)
    digest = [[hashlib.sha256(p.read_bytes()).hexdigest() for p in pair] for pair in (a, b, c)]
    assert digest[0] == digest[1]
    assert digest[0][0] != digest[2][0] and digest[0][1] != digest[2][1]
    assert [p.name for p in a] == ["model.gguf", "mmproj.gguf"]


def test_server_reports_vision(vlm_server):
    props = httpx.get(vlm_server.base_url + "/props", timeout=10).json()
    assert props["modalities"]["vision"] is True
    assert props["modalities"]["audio"] is False
    models = httpx.get(vlm_server.base_url + "/v1/models", timeout=10).json()
    assert "multimodal" in models["models"][0]["capabilities"]
    assert models["data"][0]["id"] == MODEL_ALIAS


def test_an_image_part_is_answered_and_costs_its_tokens(vlm_server):
    r = chat(vlm_server, data_uri(png(1)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == MAX_TOKENS
    text_only = chat(vlm_server, None).json()["usage"]["prompt_tokens"]
    # the image's tokens come in place of the media marker; the text around it may
    # split into one token more or fewer
    assert abs(body["usage"]["prompt_tokens"] - text_only - IMAGE_TOKENS) <= 1


def test_the_answer_depends_on_the_image_and_only_on_it(vlm_server):
    images = [png(seed) for seed in (1, 2, 3)] + [png(color=(255, 0, 0)), png(color=(0, 0, 255))]
    first = [answer(vlm_server, data_uri(img)) for img in images]
    assert len(set(first)) == len(images), first
    assert answer(vlm_server, None) not in first
    # again, in another order (other cache states in the slots): the same answers
    again = [answer(vlm_server, data_uri(img)) for img in reversed(images)]
    assert again[::-1] == first
    # llama.cpp resizes every image to 32 px, so a 64 px copy of a one-colour image is
    # the same image to the model
    assert answer(vlm_server, data_uri(png(size=64, color=(255, 0, 0)))) == first[3]


@pytest.mark.parametrize("url", [
    "data:image/png;base64,@@@ not base64 @@@",
    data_uri(b"this is not an image, only text"),
    data_uri(png(1)[:40]),  # a PNG cut short
    "data:image/png,rawbytes",
])
def test_a_broken_image_is_an_http_error_and_the_server_keeps_serving(vlm_server, url):
    before = answer(vlm_server, data_uri(png(2)))
    r = chat(vlm_server, url)
    assert r.status_code == 400, r.text  # llama-server: "invalid_request_error"
    assert r.json()["error"]["message"]
    assert answer(vlm_server, data_uri(png(2))) == before


def test_a_projector_for_another_width_is_refused(tmp_path):
    need_llama_server()
    model, _ = write_tiny_vlm(tmp_path, seed=0)
    wrong = write_tiny_mmproj(tmp_path / "wrong.gguf", seed=0, n_embd_text=96)
    with pytest.raises(RuntimeError) as e, serve(model, extra_args=["--mmproj", str(wrong)]):
        pass
    assert "mismatch between text model" in str(e.value)


def test_concurrent_image_requests_are_all_answered(vlm_server):
    # two slots, four requests at once: each image is encoded and answered
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda seed: chat(vlm_server, data_uri(png(seed))), range(10, 14)))
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.json()["usage"]["completion_tokens"] == MAX_TOKENS for r in responses)


def test_serve_check_finds_image_input(vlm_server):
    # what curate's own check says of this server (without --mmproj it says the opposite:
    # tests/test_generate_backend.py)
    from curate.generate.serve_check import serve_check

    report = serve_check(vlm_server.base_url)
    assert report["chat_ok"] and report["image_input"], report
    assert report["image_status"] == 200 and report["image_error"] is None
    assert report["declares_vision"] is True  # /props modalities.vision
