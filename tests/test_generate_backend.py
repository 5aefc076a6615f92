"""curate.generate.backend against a real llama-server (fixture ``llama_server``: a tiny
random llama made at test time) and, for the failures a healthy server never shows, real
loopback servers that misbehave on purpose: one that answers 503 before proxying to
llama-server, one that accepts connections and never answers, a port nobody listens on."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from curate.errors import ConfigError
from curate.generate.backend import BackendError, ChatRequest, ChatResult, OpenAIServer
from curate.generate.serve_check import serve_check, tiny_png
from tests.genserver import EOS_ID, MODEL_ALIAS, NO_EOS, free_port, serve, train_tokenizer, write_tiny_gguf


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": text},), **kw)


# -- a healthy server -----------------------------------------------------------------
def test_info_names_the_served_model_and_its_context(llama_server):
    with OpenAIServer(llama_server.base_url) as s:
        info = s.info()
    assert info.model_id == MODEL_ALIAS
    assert info.owned_by == "llamacpp"
    assert info.base_url == llama_server.base_url + "/v1"
    # -c 8192 shared by -np 4 slots: one request may use a slot's share
    assert info.context_length == 8192 // 4
    assert info.fingerprint and info.fingerprint.startswith("llama.cpp ")
    assert info.raw["models"]["data"][0]["id"] == MODEL_ALIAS

    # the /v1 form of the URL and an explicit model name are the same server
    with OpenAIServer(llama_server.base_url + "/v1/", model=MODEL_ALIAS) as s:
        assert s.info().model_id == MODEL_ALIAS
    with OpenAIServer(llama_server.base_url, model="gpt-5") as s, pytest.raises(BackendError) as e:
        s.info()
    assert "'gpt-5'" in str(e.value) and f"it serves: {MODEL_ALIAS}" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_batch_comes_back_in_input_order_with_token_counts(llama_server):
    # request i asks for i % 5 + 1 tokens with a prompt of i + 1 words: both counts
    # identify the request, so a result in the wrong place shows
    requests = [ask(" ".join(["dog"] * (i + 1)), max_tokens=i % 5 + 1, extra=NO_EOS) for i in range(12)]
    seen: dict[int, ChatResult] = {}
    threads: set[str] = set()

    def on_result(i: int, r: ChatResult) -> None:
        seen[i] = r
        threads.add(threading.current_thread().name)

    with OpenAIServer(llama_server.base_url, concurrency=4) as s:
        results = s.chat(requests, on_result=on_result)
    assert [r.completion_tokens for r in results] == [i % 5 + 1 for i in range(12)]
    prompts = [r.prompt_tokens for r in results]
    assert all(isinstance(p, int) for p in prompts) and prompts == sorted(set(prompts))  # strictly growing
    assert seen == dict(enumerate(results))
    assert threads == {threading.current_thread().name}  # callbacks run in the caller's thread
    for r in results:
        assert r.error is None and r.status_code == 200 and r.attempts == 1 and r.latency_s > 0
        assert r.model is not None and len(r.choices) == 1 and r.choices[0].finish_reason == "length"


def test_one_token_finishes_by_length_and_n_gives_several_choices(llama_server):
    with OpenAIServer(llama_server.base_url) as s:
        one, two, again = s.chat([ask("A cat on a mat.", max_tokens=1, extra=NO_EOS),
                                  ask("A cat on a mat.", max_tokens=8, n=2, temperature=0.9, seed=3, extra=NO_EOS),
                                  ask("A cat on a mat.", max_tokens=1, extra=NO_EOS)])
    assert one.completion_tokens == 1 and [c.finish_reason for c in one.choices] == ["length"]
    assert one.choices[0].text and one.choices == again.choices  # temperature 0: the same token
    assert len(two.choices) == 2 and all(c.finish_reason == "length" for c in two.choices)
    assert two.choices[0].text != two.choices[1].text  # two samples, not one copied
    # llama-server counts the tokens of one choice (OpenAI and vLLM sum them over choices):
    # completion_tokens is what the server says, not recomputed
    assert two.completion_tokens == 8


@pytest.fixture(scope="module")
def stopping_server(llama_server, tmp_path_factory):
    """A second tiny model, seed 3: at temperature 0 it ends most answers early."""
    model = write_tiny_gguf(tmp_path_factory.mktemp("seed3") / "tiny3.gguf", seed=3)
    with serve(model, parallel=4, ctx=4096) as server:
        yield server


@pytest.mark.parametrize("extra", [NO_EOS, {"ignore_eos": True}], ids=["logit_bias", "ignore_eos"])
def test_the_random_model_keeps_talking_when_told_to(stopping_server, extra):
    """The ways tests/genserver.py's docstring gives to keep a random model from ending
    early: every request then runs to max_tokens, where without them most stop."""
    prompts = [f"A photo number {i} of a dog." for i in range(12)]
    with OpenAIServer(stopping_server.base_url, concurrency=4) as s:
        plain = s.chat([ask(p, max_tokens=64) for p in prompts])
        kept = s.chat([ask(p, max_tokens=64, extra=extra) for p in prompts])
    stopped = [r for r in plain if r.choices[0].finish_reason == "stop"]
    assert len(stopped) >= 6 and all(r.completion_tokens < 64 for r in stopped)
    assert [r.completion_tokens for r in kept] == [64] * 12
    assert all(r.choices[0].finish_reason == "length" and r.choices[0].text for r in kept)


def test_an_eos_bias_alone_makes_the_model_stop(llama_server):
    """The opposite bias proves the server applies logit_bias to the token id we name."""
    with OpenAIServer(llama_server.base_url) as s:
        [r] = s.chat([ask("A dog.", max_tokens=40, extra={"logit_bias": {str(EOS_ID): 100}})])
    assert r.choices[0].finish_reason == "stop" and r.completion_tokens in (0, 1)


def test_concurrent_requests_really_overlap(llama_server):
    requests = [ask(f"Caption {i}: a man rides a horse.", max_tokens=300, extra=NO_EOS) for i in range(4)]

    def run(concurrency: int) -> tuple[float, float]:
        with OpenAIServer(llama_server.base_url, concurrency=concurrency) as s:
            t0 = time.monotonic()
            results = s.chat(requests)
            wall = time.monotonic() - t0
        assert [r.completion_tokens for r in results] == [300] * 4
        return wall, sum(r.latency_s for r in results)

    wall, busy = run(4)
    # four at once: each request lasts most of the wall time, so their sum is far above it
    assert busy > 2.0 * wall, (wall, busy)
    wall1, busy1 = run(1)
    # one at a time they cannot overlap: the sum is the wall time (what the check above rules out)
    assert busy1 <= 1.05 * wall1, (wall1, busy1)


def test_a_prompt_longer_than_the_context_is_an_error_not_a_retry(llama_server):
    # one slot has 2048 tokens; "dog" is at least one token
    with OpenAIServer(llama_server.base_url, retries=3, backoff_s=0.5) as s:
        t0 = time.monotonic()
        too_long, fine = s.chat([ask(" ".join(["dog"] * 4000), max_tokens=4), ask("A dog.", max_tokens=2)])
        elapsed = time.monotonic() - t0
    assert too_long.status_code == 400 and too_long.attempts == 1 and too_long.choices == ()
    assert too_long.error and too_long.error.startswith("HTTP 400: ") and "\n" not in too_long.error
    assert "context" in too_long.error.lower()
    assert fine.error is None and fine.choices
    assert elapsed < 0.5 * 3  # no backoff was slept


def test_tokenize_counts_with_the_model_tokenizer(llama_server):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=train_tokenizer(0))
    text = "A small dog runs on the beach, 2019."
    with OpenAIServer(llama_server.base_url) as s:
        assert s.tokenize(text) == len(sp.encode(text))
        assert s.tokenize("") == 0


def test_serve_check_reports_model_latency_and_no_image_input(llama_server):
    report = serve_check(llama_server.base_url)
    assert report["model"] == MODEL_ALIAS and report["context_length"] == 2048
    assert report["chat_ok"] and report["chat_error"] is None and report["latency_s"] > 0
    # the tiny text model has no mmproj: the server refuses the image and says why
    assert report["image_input"] is False
    assert report["image_status"] is not None and 400 <= report["image_status"] < 600
    assert "image" in report["image_error"].lower() and "\n" not in report["image_error"]
    assert report["declares_vision"] is False  # /props modalities.vision


def test_tiny_png_is_a_png():
    data = tiny_png(16)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    assert int.from_bytes(data[16:20], "big") == 16 == int.from_bytes(data[20:24], "big")


# -- servers that fail ----------------------------------------------------------------
@contextmanager
def http_server(handle: Callable[[http.server.BaseHTTPRequestHandler, int], None]) -> Iterator[tuple[str, list[int]]]:
    """A real HTTP server on a loopback port; ``handle(handler, n)`` answers the n-th
    POST (from 1). Yields its URL and the list of POST numbers seen."""
    seen: list[int] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            with lock:
                seen.append(len(seen) + 1)
                n = seen[-1]
            handle(self, n)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def reply(h: http.server.BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def read_body(h: http.server.BaseHTTPRequestHandler) -> bytes:
    return h.rfile.read(int(h.headers.get("Content-Length", 0)))


def test_503_is_retried_then_the_answer_comes_through(llama_server):
    def handle(h, n):
        body = read_body(h)
        if n <= 2:
            reply(h, 503, b'{"error": {"message": "loading model"}}')
            return
        upstream = httpx.post(llama_server.base_url + h.path, content=body, timeout=30,
                              headers={"Content-Type": "application/json"})
        reply(h, upstream.status_code, upstream.content)

    request = ask("A red kite.", max_tokens=6, extra=NO_EOS)
    with http_server(handle) as (url, seen), OpenAIServer(url, model=MODEL_ALIAS, backoff_s=0.01) as s:
        [r] = s.chat([request])
    with OpenAIServer(llama_server.base_url) as direct:
        [d] = direct.chat([request])
    assert seen == [1, 2, 3] and r.attempts == 3 and r.error is None
    assert r.choices == d.choices and r.completion_tokens == 6


def test_retry_after_is_honoured():
    def handle(h, n):
        read_body(h)
        if n == 1:
            reply(h, 429, b'{"error": "slow down"}', {"Retry-After": "1"})
        else:
            reply(h, 200, json.dumps({"model": "m", "choices": [{"index": 0, "message": {"content": "ok"},
                                                                  "finish_reason": "stop"}]}).encode())

    with http_server(handle) as (url, _), OpenAIServer(url, model="m", backoff_s=0.01) as s:
        t0 = time.monotonic()
        [r] = s.chat([ask("x")])
        assert time.monotonic() - t0 >= 1.0
    assert r.attempts == 2 and r.choices[0].text == "ok" and r.prompt_tokens is None


def test_4xx_is_not_retried_and_persistent_failures_are_sorted():
    statuses = {"/bad/v1/chat/completions": 400, "/crash/v1/chat/completions": 500, "/busy/v1/chat/completions": 503}

    def handle(h, n):
        read_body(h)
        reply(h, statuses[h.path], b'{"error": {"message": "no\\n such   thing", "type": "x"}}')

    with http_server(handle) as (url, seen):
        with OpenAIServer(url + "/bad", model="m", retries=3, backoff_s=0.01) as s:
            [r] = s.chat([ask("x")])
        assert len(seen) == 1 and r.attempts == 1 and r.status_code == 400
        assert r.error == "HTTP 400: no such thing" and r.choices == ()

        # a 500 after every retry is this request's failure: the batch goes on
        with OpenAIServer(url + "/crash", model="m", retries=2, backoff_s=0.01) as s:
            [r] = s.chat([ask("x")])
        assert len(seen) == 1 + 3 and r.attempts == 3 and r.status_code == 500 and r.error.startswith("HTTP 500")

        # a 503 after every retry: the service is unavailable, the run stops
        with OpenAIServer(url + "/busy", model="m", retries=2, backoff_s=0.01) as s, \
                pytest.raises(BackendError) as e:
            s.chat([ask("x")])
        assert len(seen) == 4 + 3
        assert str(e.value).startswith(f"cannot reach {url}/busy/v1: HTTP 503: no such thing (3 attempts)")


def test_a_closed_port_is_a_backend_error_quickly():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with OpenAIServer(url, model="m", retries=2, backoff_s=0.05, timeout_s=30, connect_timeout_s=5) as s:
        t0 = time.monotonic()
        with pytest.raises(BackendError) as e:
            s.chat([ask(str(i)) for i in range(20)])
        elapsed = time.monotonic() - t0
        with pytest.raises(BackendError) as e2:
            s.info()
    message = str(e.value)
    assert message.startswith(f"cannot reach {url}/v1: connection refused (3 attempts)")
    assert message.endswith("the pending work is kept, run again when it answers") and "\n" not in message
    assert elapsed < 2.0, elapsed  # far below the timeouts: a refusal is not waited for
    assert str(e2.value).startswith(f"cannot reach {url}/v1: connection refused")


@contextmanager
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """Accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def loop() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join()
        for c in accepted:
            c.close()
        listener.close()


def test_a_server_that_never_answers_is_a_backend_error_and_the_rest_is_cancelled():
    with silent_server() as (url, accepted), \
            OpenAIServer(url, model="m", timeout_s=1, retries=1, backoff_s=0.05, concurrency=2) as s:
        t0 = time.monotonic()
        with pytest.raises(BackendError) as e:
            s.chat([ask(str(i)) for i in range(10)])
        elapsed = time.monotonic() - t0
        connections = len(accepted)
    assert str(e.value).startswith(f"cannot reach {url}/v1: no answer within 1 s (2 attempts)")
    # two rounds of two requests (first try and one retry), then the other 8 are cancelled:
    # without the cancel, 5 rounds of 2 s
    assert 2.0 <= elapsed < 4.5, elapsed
    assert connections <= 4


def test_results_before_the_server_dies_are_delivered():
    answer = json.dumps({"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                         "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "length"}]}).encode()

    def handle(h, n):
        read_body(h)
        if n <= 3:
            reply(h, 200, answer)
        else:  # the server dies: the connection closes without an answer
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)

    delivered: list[int] = []
    with http_server(handle) as (url, seen), OpenAIServer(url, model="m", retries=1, backoff_s=0.01,
                                                          concurrency=1) as s:
        with pytest.raises(BackendError) as e:
            s.chat([ask(str(i)) for i in range(6)], on_result=lambda i, r: delivered.append(i))
    assert delivered == [0, 1, 2]
    assert len(seen) == 3 + 2  # the 4th request twice; the 5th and 6th never sent
    assert "the connection closed without an answer" in str(e.value)


def test_tokenize_is_none_where_the_server_has_no_endpoint():
    def handle(h, n):
        read_body(h)
        reply(h, 404, b'{"detail": "Not Found"}')

    with http_server(handle) as (url, seen), OpenAIServer(url, model="m") as s:
        assert s.tokenize("a dog") is None
    assert len(seen) == 2  # the llama-server form, then vLLM's


def test_a_url_without_a_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match="http://host:port"):
        OpenAIServer("localhost:8000")
