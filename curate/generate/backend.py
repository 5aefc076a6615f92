"""A client for OpenAI-compatible chat servers: vLLM on GPUs in production, llama.cpp's
llama-server in tests. The same code talks to both, so what the tests prove holds for
production.

The API is synchronous: :meth:`OpenAIServer.chat` takes a batch of
:class:`ChatRequest`, keeps at most ``concurrency`` of them in flight on a thread pool
(the server batches concurrent requests, so this is where throughput comes from) and
returns one :class:`ChatResult` per request, in input order. Callers see no event loop,
and ``on_result`` runs in the calling thread, so it may write to a DuckDB connection.

Failures are sorted by what the caller should do about them:

* **Transient** (HTTP 429, 5xx, timeouts, refused or reset connections): retried up to
  ``retries`` times with exponential backoff and jitter (a ``Retry-After`` header is
  honoured), so a restart or a burst of load costs time, not results.
* **This request is wrong** (any other 4xx, e.g. a prompt longer than the context, or a
  persistent HTTP 500): not retried; its result carries a one-line ``error`` and the
  batch goes on, because the next run would fail the same way.
* **The server is gone** (the last attempt of a request got no HTTP answer at all, or
  still 429/502/503/504): :class:`BackendError`, after the requests not yet sent are
  cancelled. Results finished before that were delivered to ``on_result``, so a stage
  that stores them as they come keeps its work and the next run resumes.

Nothing is recorded globally and nothing is printed.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._optional import require
from ..errors import ConfigError, CurateError

if TYPE_CHECKING:
    import httpx

__all__ = ["BackendError", "ChatRequest", "ChatResult", "Choice", "OpenAIServer", "ServerInfo"]

#: statuses retried with backoff; of these, the ones still there after the last retry
#: mean the service is unavailable (not that the request is wrong): raise, keep the work
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})
#: longest wait between two attempts, whatever the backoff or ``Retry-After`` says
MAX_BACKOFF_S = 30.0


class BackendError(CurateError):
    """The server cannot be reached or never answers; the message names its URL."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion. ``messages`` are OpenAI chat messages; a message's content is
    a string or a list of parts (``{"type": "text", ...}``, ``{"type": "image_url",
    "image_url": {"url": "data:image/png;base64,..."}}``). ``extra`` is merged into the
    JSON body last (``logit_bias``, ``top_k``, ``ignore_eos``, ...)."""

    messages: tuple[dict[str, Any], ...]
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def body(self, model: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "messages": list(self.messages), "max_tokens": self.max_tokens,
                               "temperature": self.temperature, "top_p": self.top_p, "n": self.n}
        if self.seed is not None:
            out["seed"] = self.seed
        if self.stop:
            out["stop"] = list(self.stop)
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Choice:
    """One generated completion. ``text`` is as the server decoded it: bytes that are not
    valid UTF-8 arrive as U+FFFD."""

    text: str
    finish_reason: str | None


@dataclass(frozen=True)
class ChatResult:
    """The outcome of one request. ``error`` (one line) is set when it failed for good;
    then ``choices`` is empty. ``latency_s`` is the duration of the attempt that gave
    this result; ``attempts`` counts all of them."""

    choices: tuple[Choice, ...]
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    model: str | None
    error: str | None = None
    status_code: int | None = None
    attempts: int = 1


@dataclass(frozen=True)
class ServerInfo:
    """What a server serves. ``context_length`` is the tokens one request may use
    (vLLM's ``max_model_len``; llama-server's per-slot ``n_ctx``); ``fingerprint`` names
    the server software and build (``"llama.cpp b1234-..."``, ``"vllm 0.x.y"``) when it
    says; ``raw`` holds the JSON it came from."""

    base_url: str
    model_id: str
    owned_by: str | None
    context_length: int | None
    fingerprint: str | None
    raw: dict[str, Any]


class _Cancelled(Exception):
    """A worker saw the batch cancelled before its next attempt."""


@dataclass
class _Outcome:
    response: httpx.Response | None  # the last attempt's answer; None: it got none
    reason: str  # one line: why the last attempt failed ("" when it answered 2xx/4xx)
    attempts: int
    latency_s: float


def one_line(text: str, limit: int = 300) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters."""
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def http_reason(response: httpx.Response) -> str:
    """``HTTP <status>: <message>``, the message taken from the error JSON OpenAI, vLLM
    and llama-server send (``{"error": {"message": ...}}``, ``{"message": ...}``,
    FastAPI's ``{"detail": ...}``), else the body's text."""
    message: Any = None
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        message = err.get("message") if isinstance(err, dict) else err
        message = message or data.get("message") or data.get("detail")
    if not message:
        message = response.text or response.reason_phrase
    return one_line(f"HTTP {response.status_code}: {message}")


class OpenAIServer:
    """A chat client for the OpenAI-compatible server at ``base_url``
    (``http://host:port`` or ``http://host:port/v1``).

    ``model``: the served model to use (None: the only or first one the server lists).
    ``api_key``: sent as a bearer token (default ``$OPENAI_API_KEY``; none when unset).
    ``timeout_s``: longest wait for an answer to one attempt; ``connect_timeout_s``: for
    the connection. ``retries``: attempts after the first on transient failures,
    ``backoff_s`` doubling from one to the next (times a random 0.5-1.5)."""

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 concurrency: int = 8, timeout_s: float = 120.0, retries: int = 4, backoff_s: float = 0.5,
                 connect_timeout_s: float = 5.0):
        url = base_url.strip().rstrip("/")
        if not re.match(r"https?://[^/]+", url):
            raise ConfigError(f"server URL must look like http://host:port or http://host:port/v1, got {base_url!r}")
        if concurrency < 1 or retries < 0 or timeout_s <= 0 or connect_timeout_s <= 0 or backoff_s < 0:
            raise ConfigError("server client: concurrency must be >= 1, retries >= 0, timeouts > 0, backoff >= 0")
        self.root = url[:-3] if url.endswith("/v1") else url
        self.base_url = self.root + "/v1"
        self.model = model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.connect_timeout_s = connect_timeout_s
        self._httpx = require("httpx", purpose="talking to an OpenAI-compatible server")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client: httpx.Client = self._httpx.Client(
            headers=headers,
            # no TLS on a plain http:// server (redirects are not followed): loading the CA
            # certificates cost about 0.1 s per client, measured by benchmarks/bench_generate.py
            verify=not url.startswith("http://"),
            timeout=self._httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=self._httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1))
        self._jitter = random.Random()
        self._model_id: str | None = None

    # -- plumbing ---------------------------------------------------------------------
    def __enter__(self) -> OpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (the client cannot be used afterwards)."""
        self._client.close()

    def _transport_reason(self, e: Exception) -> str:
        h = self._httpx
        if isinstance(e, h.ConnectTimeout):
            return f"no connection within {self.connect_timeout_s:g} s"
        if isinstance(e, h.TimeoutException):
            return f"no answer within {self.timeout_s:g} s"
        if isinstance(e, h.ConnectError):
            text = str(e)
            return "connection refused" if "refused" in text.lower() else one_line(f"cannot connect: {text}")
        if isinstance(e, h.RemoteProtocolError):
            return one_line(f"the connection closed without an answer ({e})")
        return one_line(f"{type(e).__name__}: {e}")

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        delay = self.backoff_s * 2.0 ** (attempt - 1) * self._jitter.uniform(0.5, 1.5)
        after = response.headers.get("retry-after") if response is not None else None
        if after:
            try:
                delay = max(delay, float(after))
            except ValueError:
                pass  # an HTTP date: keep the backoff
        return min(delay, MAX_BACKOFF_S)

    def _send(self, method: str, url: str, body: dict[str, Any] | None, cancel: threading.Event | None,
              retries: int | None = None) -> _Outcome:
        """One request with the retry policy; never raises for HTTP or network failures
        (the outcome says what the last attempt got)."""
        h = self._httpx
        retries = self.retries if retries is None else retries
        attempt = 0
        while True:
            attempt += 1
            if cancel is not None and cancel.is_set():
                raise _Cancelled
            t0 = time.monotonic()
            response: httpx.Response | None
            try:
                response = self._client.request(method, url, json=body)
            except (h.UnsupportedProtocol, h.InvalidURL) as e:
                raise BackendError(f"cannot reach {url}: {one_line(str(e))}") from None
            except (h.TimeoutException, h.NetworkError, h.RemoteProtocolError) as e:
                response, reason = None, self._transport_reason(e)
            else:
                if response.status_code not in RETRY_STATUSES:
                    return _Outcome(response, "", attempt, time.monotonic() - t0)
                reason = http_reason(response)
            latency = time.monotonic() - t0
            if attempt > retries:
                return _Outcome(response, reason, attempt, latency)
            delay = self._delay(attempt, response)
            if cancel is not None:
                if cancel.wait(delay):
                    raise _Cancelled
            else:
                time.sleep(delay)

    def _unreachable(self, reason: str, attempts: int) -> BackendError:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        return BackendError(f"cannot reach {self.base_url}: {reason}{tries}; "
                            "the pending work is kept, run again when it answers")

    def declared_vision(self) -> bool | None:
        """Whether the server says it takes images: llama-server's ``/props``
        (``modalities.vision``) or its ``/v1/models`` ``models[].capabilities``
        (``multimodal``); None when it says neither (vLLM says nothing of it)."""
        got = self._get_json("/props", retries=0)
        if got is not None and got[0] == 200 and isinstance(got[1], dict):
            modalities = got[1].get("modalities")
            if isinstance(modalities, dict) and isinstance(modalities.get("vision"), bool):
                return bool(modalities["vision"])
        got = self._get_json("/v1/models", retries=0)
        if got is not None and got[0] == 200 and isinstance(got[1], dict):
            caps = [c for m in got[1].get("models") or [] if isinstance(m, dict)
                    for c in (m.get("capabilities") or [])]
            if caps:
                return "multimodal" in caps
        return None

    def _get_json(self, path: str, retries: int | None = None) -> tuple[int, Any] | None:
        """(status, JSON or None) of ``GET root+path``; None when the server gave no
        HTTP answer."""
        out = self._send("GET", self.root + path, None, None, retries)
        if out.response is None:
            return None
        try:
            return out.response.status_code, out.response.json()
        except ValueError:
            return out.response.status_code, None

    # -- API --------------------------------------------------------------------------
    def info(self) -> ServerInfo:
        """What the server serves (``GET /v1/models``), the model picked (``model``, else
        the only or first listed; an unknown name is a :class:`BackendError` listing the
        served ones), its context length and the server's build."""
        out = self._send("GET", self.base_url + "/models", None, None)
        if out.response is None or out.response.status_code in UNAVAILABLE_STATUSES:
            raise self._unreachable(out.reason, out.attempts)
        if out.response.status_code != 200:
            raise BackendError(f"{self.base_url}/models answered {http_reason(out.response)}; "
                               "is this an OpenAI-compatible server?")
        try:
            listing = out.response.json()
            entries = [m for m in listing["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (ValueError, KeyError, TypeError):
            raise BackendError(f"{self.base_url}/models answered no model list: "
                               f"{one_line(out.response.text, 120)!r}") from None
        if not entries:
            raise BackendError(f"{self.base_url} serves no model")
        entry = entries[0]
        if self.model is not None:
            named = [m for m in entries if m["id"] == self.model or self.model in (m.get("aliases") or ())]
            if not named:
                served = ", ".join(m["id"] for m in entries)
                raise BackendError(f"{self.base_url} does not serve model {self.model!r}; it serves: {served}")
            entry = named[0]
        raw: dict[str, Any] = {"models": listing}
        context = _int(entry.get("max_model_len"))  # vLLM
        fingerprint = None
        if context is None or entry.get("owned_by") == "llamacpp":
            props = self._get_json("/props", retries=0)  # llama-server
            if props is not None and props[0] == 200 and isinstance(props[1], dict):
                raw["props"] = props[1]
                settings = props[1].get("default_generation_settings")
                context = _int(settings.get("n_ctx")) if isinstance(settings, dict) else None
                if props[1].get("build_info"):
                    fingerprint = f"llama.cpp {props[1]['build_info']}"
        if context is None and isinstance(entry.get("meta"), dict):
            context = _int(entry["meta"].get("n_ctx"))
        if fingerprint is None and entry.get("owned_by") == "vllm":
            version = self._get_json("/version", retries=0)
            if version is not None and version[0] == 200 and isinstance(version[1], dict):
                raw["version"] = version[1]
                if version[1].get("version"):
                    fingerprint = f"vllm {version[1]['version']}"
        self._model_id = entry["id"]
        owned = entry.get("owned_by")
        return ServerInfo(self.base_url, entry["id"], owned if isinstance(owned, str) else None, context,
                          fingerprint, raw)

    def model_id(self) -> str:
        """The model requests name: ``model``, else the one :meth:`info` picks (asked once)."""
        if self.model is not None:
            return self.model
        if self._model_id is None:
            self.info()
        assert self._model_id is not None
        return self._model_id

    def chat(self, requests: Sequence[ChatRequest], *,
             on_result: Callable[[int, ChatResult], None] | None = None) -> list[ChatResult]:
        """Run ``requests``, at most ``concurrency`` at once; the results in input order.
        ``on_result(index, result)`` runs in this thread as each one finishes. A server
        that cannot be reached raises :class:`BackendError` once the requests in flight
        have ended (those not sent are cancelled; finished ones were delivered)."""
        if not requests:
            return []
        model = self.model_id()
        results: list[ChatResult | None] = [None] * len(requests)
        cancel = threading.Event()
        failure: BackendError | None = None
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)),
                                                     thread_name_prefix="curate-chat")
        try:
            futures = {pool.submit(self._chat_one, r, model, cancel): i for i, r in enumerate(requests)}
            for fut in concurrent.futures.as_completed(futures):
                try:
                    result = fut.result()
                except (_Cancelled, concurrent.futures.CancelledError):
                    continue
                except BackendError as e:
                    if failure is None:
                        failure = e
                        cancel.set()
                        for f in futures:
                            f.cancel()
                    continue
                i = futures[fut]
                results[i] = result
                if on_result is not None:
                    on_result(i, result)
        except BaseException:
            # an interrupt or a failing callback: stop sending, do not wait for answers
            cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if failure is not None:
            raise failure
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def _chat_one(self, request: ChatRequest, model: str, cancel: threading.Event) -> ChatResult:
        out = self._send("POST", self.base_url + "/chat/completions", request.body(model), cancel)
        r = out.response
        if r is None or r.status_code in UNAVAILABLE_STATUSES:
            cancel.set()  # before this future fails, so no other worker starts another request
            raise self._unreachable(out.reason, out.attempts)
        if not 200 <= r.status_code < 300:
            return ChatResult((), None, None, out.latency_s, None, http_reason(r), r.status_code, out.attempts)
        try:
            data = r.json()
            choices = tuple(
                Choice(c.get("message", {}).get("content") or "", c.get("finish_reason"))
                for c in sorted(data["choices"], key=lambda c: int(c.get("index", 0))))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return ChatResult((), None, None, out.latency_s, None,
                              one_line(f"HTTP {r.status_code} with no chat completion in it ({type(e).__name__}): "
                                       f"{r.text[:120]}"), r.status_code, out.attempts)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        model_field = data.get("model")
        return ChatResult(choices, _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")),
                          out.latency_s, model_field if isinstance(model_field, str) else None,
                          None, r.status_code, out.attempts)

    def tokenize(self, text: str) -> int | None:
        """How many tokens ``text`` is (no special tokens added), from llama-server's or
        vLLM's ``/tokenize``; None when the server has no such endpoint."""
        bodies: tuple[Callable[[], dict[str, Any]], ...] = (
            lambda: {"content": text, "add_special": False},  # llama-server
            lambda: {"model": self.model_id(), "prompt": text, "add_special_tokens": False})  # vLLM
        for body in bodies:
            out = self._send("POST", self.root + "/tokenize", body(), None)
            if out.response is None or out.response.status_code in UNAVAILABLE_STATUSES:
                raise self._unreachable(out.reason, out.attempts)
            if out.response.status_code != 200:
                continue
            try:
                data = out.response.json()
            except ValueError:
                continue
            if isinstance(data, dict):
                if _int(data.get("count")) is not None:
                    return _int(data.get("count"))
                if isinstance(data.get("tokens"), list):
                    return len(data["tokens"])
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
