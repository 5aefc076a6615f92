"""Check a server before a generation run spends hours on it: which model it serves, its
context length, the round trip of a one-token chat, and whether it takes images.

The image check sends a real image (a 16x16 PNG made here, as a ``data:`` URI in an
``image_url`` part, the form caption stages send) because servers differ in how they
refuse one: llama-server without ``--mmproj`` and vLLM with a text-only model answer an
HTTP error whose message says so, and that message is what the user needs to see.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

from .backend import ChatRequest, OpenAIServer

__all__ = ["serve_check", "tiny_png"]


def tiny_png(size: int = 16) -> bytes:
    """A ``size`` x ``size`` RGB PNG (a colour gradient), written with zlib alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(v for x in range(size) for v in (x * 255 // size, y * 255 // size, 128))
                    for y in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def serve_check(base_url: str, model: str | None = None, *, timeout_s: float = 60.0) -> dict[str, Any]:
    """A report on the server at ``base_url`` (see the module docstring). Keys:
    ``base_url``, ``model``, ``owned_by``, ``context_length``, ``fingerprint``;
    ``latency_s`` (one-token chat, seconds), ``chat_ok``, ``chat_error``; ``image_input``
    (bool), ``image_status`` (HTTP status of the image request), ``image_error`` (one
    line, None when images work); ``declares_vision``: what the server says of itself
    (llama-server's ``/props`` ``modalities.vision``, or ``multimodal`` among its
    ``/v1/models`` capabilities; None when it says nothing, as vLLM). A server that cannot be reached raises
    :class:`~curate.generate.backend.BackendError`."""
    with OpenAIServer(base_url, model=model, concurrency=1, timeout_s=timeout_s, retries=1, backoff_s=0.2) as server:
        info = server.info()
        [text] = server.chat([ChatRequest(messages=({"role": "user", "content": "Say hello."},), max_tokens=1)])
        uri = "data:image/png;base64," + base64.b64encode(tiny_png()).decode("ascii")
        parts = [{"type": "text", "text": "Describe the image in one word."},
                 {"type": "image_url", "image_url": {"url": uri}}]
        [image] = server.chat([ChatRequest(messages=({"role": "user", "content": parts},), max_tokens=1)])
        declared = server.declared_vision()
    return {
        "base_url": info.base_url,
        "model": info.model_id,
        "owned_by": info.owned_by,
        "context_length": info.context_length,
        "fingerprint": info.fingerprint,
        "latency_s": text.latency_s,
        "chat_ok": text.error is None,
        "chat_error": text.error,
        "image_input": image.error is None,
        "image_status": image.status_code,
        "image_error": image.error,
        "declares_vision": declared,
    }
