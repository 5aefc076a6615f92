"""A real OpenAI-compatible server for tests: llama.cpp's ``llama-server`` serving a tiny
random llama written at test time (no weights are downloaded).

* :func:`find_llama_server`: the binary ``make llama-server`` (``.ci/build-llama-server``)
  caches, or ``$CURATE_LLAMA_SERVER``.
* :func:`write_tiny_gguf`: a 2-layer llama (hidden 64, 4 heads, 2 KV heads, f32) with a
  SentencePiece BPE tokenizer (vocab 400, byte fallback) trained here on generated
  English-like text and a ChatML chat template, so ``/v1/chat/completions`` works. About
  0.5 MB, a fraction of a second, byte-identical for a seed.
* :func:`serve`: runs ``llama-server`` on a free loopback port until the block ends; the
  server dies with the test process even when that is SIGKILLed.

Keeping a random model talking: depending on the seed and the prompt, end-of-text may be
its likeliest token, so requests end early with ``finish_reason "stop"`` and fewer
tokens than asked (measured, 20 prompts, 64 tokens, temperature 0: seeds 0, 1, 2, 4 never
stop; seed 3 stopped 19 times, seed 5 18 times; at temperature 1 every seed stops some).
A test that counts tokens must not rest on that luck. Two request fields (the client's
``ChatRequest.extra``) prevent it:

* ``{"logit_bias": {str(EOS_ID): -100}}``: OpenAI's own field, which vLLM and
  llama-server both honour; -100 removes the token in practice (the other logits of the
  random model are within a few units of each other).
* ``{"ignore_eos": True}``: a vLLM and llama-server extension with the same effect.

Either way the model generates exactly ``max_tokens`` tokens and finishes with
``"length"`` (``tests/test_generate_backend.py`` checks both). Byte-fallback tokens make
invalid UTF-8 that the server returns as U+FFFD.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate import procs

#: the llama-cpp-python sdist whose vendored llama.cpp ``.ci/build-llama-server`` builds
LLAMA_CPP_VERSION = "0.3.36"
#: the served model's name (``-a``): what ``/v1/models`` lists and requests name
MODEL_ALIAS = "tiny"
#: token ids of the tiny model's tokenizer (SentencePiece's defaults, set explicitly)
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
#: llama-server's HTTP threads: each holds one keep-alive connection until the client
#: closes it or 5 s pass, and a request on a connection beyond them waits that long (with
#: the default on this 2-core machine, a client of concurrency 4 left open made the next
#: client's 16 requests take 5.2 s instead of 0.3 s). Plenty, so tests never wait.
HTTP_THREADS = 32
#: keeps the random model generating: merge into a request's extra fields
NO_EOS = {"logit_bias": {str(EOS_ID): -100}}

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def cache_dir() -> Path:
    return Path(os.environ.get("CURATE_CACHE") or Path.home() / ".cache" / "curate")


def find_llama_server() -> Path | None:
    """The llama-server binary: ``$CURATE_LLAMA_SERVER`` when set (a missing file there is
    None, not a fallback, so a wrong setting is noticed), else the one
    ``.ci/build-llama-server`` installs in the cache; None when it is not there."""
    env = os.environ.get("CURATE_LLAMA_SERVER")
    path = Path(env) if env else cache_dir() / "llama-server" / LLAMA_CPP_VERSION / "llama-server"
    return path if path.is_file() and os.access(path, os.X_OK) else None


# -- the tiny model -------------------------------------------------------------------
_WORDS = ("the a an of and to in is was for on with as by at from that this it its are were be has have had "
          "not or but which one two three four five red blue green white black small large old new young "
          "man woman child dog cat bird horse car bus train boat plane bike tree house street road river "
          "beach field park city table chair plate bowl cup pizza cake apple banana sandwich phone laptop "
          "book clock window door wall sky water snow grass sits stands runs walks rides holds eats looks "
          "plays flies lies near next under over behind front top side two people group photo picture view "
          "close up image shows wearing shirt hat jacket playing ball game team player kitchen room bed "
          "bathroom sink toilet mirror light sign traffic stop umbrella bag kite surf board skate").split()


def english_like(n_lines: int, seed: int = 0) -> list[str]:
    """Deterministic caption-like sentences over a small English vocabulary, with the
    capitals, digits and punctuation real captions have, for training the tokenizer."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(1, 2020)))
        if rng.random() < 0.3:
            words[rng.randrange(len(words))] += ","
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice(".....!?"))
    return lines


def train_tokenizer(seed: int = 0, vocab_size: int = 400) -> bytes:
    """A serialized SentencePiece BPE model (byte fallback: any text encodes) trained on
    :func:`english_like` text. One thread and identity normalization keep it
    deterministic and the same as what llama.cpp's tokenizer (no normalizer) does."""
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(english_like(3000, seed)), model_writer=out, model_type="bpe",
        vocab_size=vocab_size, byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        num_threads=1, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1, minloglevel=2)
    return out.getvalue()


def write_tiny_gguf(path: Path | str, seed: int = 0, *, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
                    n_head_kv: int = 2, n_ff: int = 128, n_ctx_train: int = 8192) -> Path:
    """Write a random llama GGUF at ``path`` and return it. Same ``seed``, same bytes.

    Weights are f32 with std 0.02 (norms 1), numpy shapes ``(out, in)`` (gguf reverses
    them into ggml's order). The tokenizer is SentencePiece (``tokenizer.ggml.model =
    "llama"``) with its pieces, scores and types copied from :func:`train_tokenizer`."""
    import gguf
    import numpy as np
    import sentencepiece as spm

    path = Path(path)
    sp = spm.SentencePieceProcessor(model_proto=train_tokenizer(seed))
    n_vocab = sp.get_piece_size()
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)

    head_dim = n_embd // n_head
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(f"curate-tiny-random-{seed}")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML)

    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    ones = functools.partial(np.ones, dtype=np.float32)
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd))
    for b in range(n_layer):
        w.add_tensor(f"blk.{b}.attn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{b}.attn_q.weight", rand(n_head * head_dim, n_embd))
        w.add_tensor(f"blk.{b}.attn_k.weight", rand(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{b}.attn_v.weight", rand(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{b}.attn_output.weight", rand(n_embd, n_head * head_dim))
        w.add_tensor(f"blk.{b}.ffn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{b}.ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{b}.ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{b}.ffn_down.weight", rand(n_embd, n_ff))
    w.add_tensor("output_norm.weight", ones(n_embd))
    w.add_tensor("output.weight", rand(n_vocab, n_embd))

    return finish_gguf(w, path)


def finish_gguf(w: Any, path: Path) -> Path:
    """Write a filled ``gguf.GGUFWriter`` out to ``path`` (header, metadata, tensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- running the server ---------------------------------------------------------------
@dataclass
class Server:
    """A running llama-server: ``base_url`` is ``http://127.0.0.1:<port>`` (no ``/v1``)."""

    base_url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's stderr and stdout (one file)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port nothing listens on now (another process may take it before the server
    binds; :func:`serve` retries on a bind failure)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def serve(model_path: Path | str, *, parallel: int = 4, ctx: int = 8192, extra_args: Sequence[str] = (),
          binary: Path | None = None, ready_timeout_s: float = 60.0) -> Iterator[Server]:
    """Run llama-server on ``model_path`` on a free port of 127.0.0.1 as model ``tiny``
    with ``parallel`` slots sharing ``ctx`` tokens of context, until the block ends.

    Ready when ``/v1/models`` answers (0.1 s on an idle machine); a server that exits or
    is not ready within ``ready_timeout_s`` is a RuntimeError quoting its log's tail.
    The server runs in a session of its own (a terminal's Ctrl-C reaches only pytest)
    and gets SIGKILL from the kernel when the thread that started it dies
    (:func:`curate.procs.die_with_parent`), so start it from the main thread."""
    exe = binary or find_llama_server()
    if exe is None:
        raise RuntimeError("llama-server not built: run make llama-server")
    logdir = Path(tempfile.mkdtemp(prefix="llama-server-"))
    for attempt in range(3):
        port = free_port()
        log_path = logdir / f"server-{port}.log"
        argv = [str(exe), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port),
                "-np", str(parallel), "-c", str(ctx), "-a", MODEL_ALIAS, *extra_args]
        if "--threads-http" not in extra_args:
            argv += ["--threads-http", str(HTTP_THREADS)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True,
                                    preexec_fn=procs.preexec_die_with_parent())
        server = Server(f"http://127.0.0.1:{port}", port, proc, log_path)
        deadline = time.monotonic() + ready_timeout_s
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if _answers(server.base_url + "/v1/models"):
                    break
                time.sleep(0.05)
            else:
                tail = server.log_tail()
                if proc.returncode is not None and "bind" in tail.lower() and attempt < 2:
                    continue  # the port was taken between free_port() and the bind: another
                why = (f"exited with code {proc.returncode}" if proc.returncode is not None
                       else f"did not answer /v1/models within {ready_timeout_s:g} s")
                raise RuntimeError(f"llama-server {why}: {' '.join(argv)}\n--- its log, last lines ---\n{tail}")
        except BaseException:
            procs.kill_group(proc)
            raise
        break
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        procs.kill_group(proc)
        shutil.rmtree(logdir, ignore_errors=True)


def kill_after_committed(argv: Sequence[str], env: dict[str, str], rows: int, timeout_s: float = 120.0) -> int:
    """Run ``argv`` (a curate command; ``--progress`` is added) and SIGKILL it as soon as
    its progress bar says at least ``rows`` rows were committed (the runner moves the bar
    after each batch's commit; the store itself cannot be read meanwhile: the writer
    holds DuckDB's file lock). Returns the committed count the bar last showed, or -1
    when the process had ended on its own (the kill came too late)."""
    import re
    import select
    import signal

    proc = subprocess.Popen([*argv, "--progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    seen, buf, deadline = 0, b"", time.time() + timeout_s
    try:
        while time.time() < deadline and seen < rows:
            ready, _, _ = select.select([proc.stderr], [], [], 0.05)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break
            buf = (buf + chunk)[-4096:]
            counts = re.findall(rb"(\d+)/\d+ \[", buf)
            if counts:
                seen = max(seen, int(counts[-1]))
    finally:
        ended = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    return seen if not ended else -1
