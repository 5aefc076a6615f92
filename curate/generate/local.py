"""In-process image captioning with transformers: BLIP, BLIP-2 and the image-text-to-text
models ``AutoModelForImageTextToText`` knows (Florence-2 and the like), on CPU or CUDA.

:class:`LocalCaptioner` loads a model once and captions batches of encoded images
(``bytes`` of a JPEG, PNG, WebP, ...): one :class:`LocalCaption` per image, in input
order. Contract:

* **Weights are never fetched** unless the caller passes ``local_files_only=False``:
  ``model`` is a folder written by ``save_pretrained`` (or ``hf download --local-dir``) or
  a hub id already in the user's Hugging Face cache. Anything else is one
  :class:`~curate.errors.ConfigError` naming the model and how to get weights.
* **One bad image costs one result**: an image PIL cannot decode, or a batch that fails
  in ``generate`` (out of memory, an image the processor refuses), gives results with
  ``text=None`` and a one-line ``error`` (a failed batch is retried image by image, so
  only the images that fail alone are lost); ``caption`` does not raise for its inputs.
* **Greedy is deterministic, and batching does not change it**: with ``num_beams=1`` the
  same image gives the same text in any batch (every image is resized to the model's
  size and every prompt is the same, so nothing is padded).
* ``text`` is the generated continuation only (the prompt, if any, is not repeated),
  stripped, special tokens removed. ``tokens_out`` counts the tokens generated, the end
  of sequence token included, padding and prompt excluded; ``finish_reason`` is
  ``"stop"`` when the model emitted its end of sequence token and ``"length"`` when it
  ran into ``max_new_tokens`` (also when ``generate`` put a forced end token there, as
  BART-based models' ``forced_eos_token_id`` does). A failed image has ``tokens_out=0`` and
  ``finish_reason="error"``.
* ``latency_s`` is the image's share (1 / batch size) of its batch's wall time, counted
  from the end of the batch before it (or the start of the call) to its own end, so the
  latencies of one ``caption`` call add up to the call's wall time. On a GPU, or on CPU
  when torch's threads leave a core free, the next batch is decoded and processed on a
  helper thread while a batch generates.

torch and transformers are imported when a captioner is built, not when this module is
imported. Nothing is printed (transformers' loading progress bars are turned off while
loading); progress and timing are the caller's. Models that need ``trust_remote_code``
are not loaded: use a checkpoint converted to transformers' own classes.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import ConfigError

__all__ = ["LocalCaption", "LocalCaptioner"]

#: where to point someone who has no weights yet
GET_WEIGHTS = ("get weights with `hf download Salesforce/blip-image-captioning-base --local-dir <folder>` "
               "(older huggingface_hub: `huggingface-cli download ...`) and pass the folder")
#: files whose bytes make up the weights, for the content hash of a folder outside the HF cache
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
DTYPES = ("auto", "float32", "float16", "bfloat16")
#: a task prompt is required by Florence-2; its plain caption task is the default
DEFAULT_PROMPTS = {"florence2": "<CAPTION>"}


@dataclass(frozen=True)
class LocalCaption:
    """One image's caption; ``text`` is None when the image failed (see ``error``)."""

    text: str | None
    tokens_out: int
    finish_reason: str
    latency_s: float
    error: str | None = None


_Result = tuple[str | None, int, str, str | None]  # text, tokens_out, finish_reason, error
#: what a batch that cannot be processed or generated raises (CUDA out of memory is a RuntimeError)
GENERATE_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


@dataclass
class _Batch:
    """One batch between the helper thread (decode, processor) and generate."""

    results: list[_Result]
    images: list[Any] = field(default_factory=list)
    where: list[int] = field(default_factory=list)  # each decoded image's index in the batch
    inputs: dict[str, Any] | None = None
    failure: Exception | None = None  # what the processor raised


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    # PIL names the BytesIO it could not read by its address: noise that differs per run
    first = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", msg[0]) if msg else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _resolve_model(model: str, revision: str | None, local_files_only: bool) -> Path:
    """The folder holding ``model``'s files: ``model`` itself, or its snapshot in the HF cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ConfigError(f"model {model!r} is a folder; revision={revision!r} applies to hub ids only")
        return path
    if path.exists():
        raise ConfigError(f"model {model!r} is a file, expected a folder written by save_pretrained; {GET_WEIGHTS}")
    hub = require("huggingface_hub", purpose="resolving a hub model id in the Hugging Face cache")
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(hub.snapshot_download(model, revision=revision, local_files_only=local_files_only))
    except HFValidationError:
        raise ConfigError(f"model {model!r}: no such folder, and not a valid hub id; {GET_WEIGHTS}") from None
    except Exception as e:  # noqa: BLE001 - not in the cache, no such repo, no network: the same one line
        where = "in the local Hugging Face cache" if local_files_only else "on the hub"
        raise ConfigError(f"model {model!r}: no such folder, and not found {where} ({_one_line(e)}); "
                          f"{GET_WEIGHTS}") from None


def _revision(folder: Path) -> str:
    """The commit of an HF cache snapshot (``.../models--org--name/snapshots/<commit>``), else
    the first 16 hex digits of a sha256 over the weight files' names and bytes."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.name
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    for p in files:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def _decode_image(data: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")  # convert() loads the pixels: truncated files fail here


class LocalCaptioner:
    """A captioning model loaded in this process (see the module docstring for the contract).

    ``device``: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    ``dtype``: ``"auto"`` (bfloat16 on a GPU that supports it, else float16; float32 on
    CPU), or one of ``float32``/``float16``/``bfloat16``. ``prompt`` is a text prefix the
    caption continues (BLIP: ``"a photography of"``); Florence-2 models default to their
    ``"<CAPTION>"`` task. Decoding is greedy for ``num_beams=1``, beam search above.
    """

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                 max_new_tokens: int = 40, num_beams: int = 1, prompt: str | None = None,
                 min_new_tokens: int = 0, local_files_only: bool = True, revision: str | None = None):
        for name, value, low in (("batch_size", batch_size, 1), ("max_new_tokens", max_new_tokens, 1),
                                 ("num_beams", num_beams, 1), ("min_new_tokens", min_new_tokens, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"LocalCaptioner: {name} must be an integer >= {low}, got {value!r}")
        if min_new_tokens > max_new_tokens:
            raise ConfigError(f"LocalCaptioner: min_new_tokens ({min_new_tokens}) exceeds "
                              f"max_new_tokens ({max_new_tokens})")
        if dtype not in DTYPES:
            raise ConfigError(f"LocalCaptioner: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        torch = require("torch", purpose="the local captioner")
        require("transformers", purpose="the local captioner")
        require("PIL", purpose="the local captioner")

        self._torch = torch
        self.model_name = str(model)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.num_beams = num_beams
        self.device = self._pick_device(device)
        self.dtype = self._pick_dtype(dtype)
        self.folder = _resolve_model(self.model_name, revision, local_files_only)
        self._revision: str | None = None
        self._load()
        model_type = self.model.config.model_type
        self.prompt = prompt if prompt is not None else DEFAULT_PROMPTS.get(model_type)
        self._is_blip = model_type == "blip"
        self._encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False) or getattr(
            getattr(self.model.config, "text_config", None), "is_encoder_decoder", False))
        # past its learned position embeddings a decoder fails on every image: say so now
        used = None
        if self._is_blip:
            used = len(self.processor.tokenizer(self.prompt)["input_ids"]) - 1 if self.prompt else 1
        elif model_type == "blip-2" and self.model.config.text_config.model_type == "opt":
            # the query placeholders, </s> and the prompt; the last new token is never fed back
            used = self.model.config.num_query_tokens + len(self.processor.tokenizer(self.prompt or "")["input_ids"]) - 1
        if used is not None:
            limit = self.model.config.text_config.max_position_embeddings
            if used + max_new_tokens > limit:
                raise ConfigError(f"LocalCaptioner: max_new_tokens={max_new_tokens} plus {used} start/prompt "
                                  f"token(s) exceeds the {limit} text positions of model {self.model_name!r}; "
                                  f"lower max_new_tokens")
        gen = self.model.generation_config
        # BLIP's generate() ends a caption on [SEP], whatever its generation config says
        eos: Any = self.model.config.text_config.sep_token_id if self._is_blip else gen.eos_token_id
        self._eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        # generate() then ends every caption that reaches max_new_tokens with an end token
        self._forced_eos = getattr(gen, "forced_eos_token_id", None) is not None

    # -- set-up -------------------------------------------------------------------------

    def _pick_device(self, device: str) -> str:
        torch = self._torch
        if device == "auto":
            return "cuda:0" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            return "cpu"
        if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
            if not torch.cuda.is_available():
                raise ConfigError(f"LocalCaptioner: device {device!r} asked for, but torch sees no CUDA GPU "
                                  f"(torch {torch.__version__}); use device='cpu' or 'auto'")
            index = int(device[5:]) if ":" in device else 0
            if index >= torch.cuda.device_count():
                raise ConfigError(f"LocalCaptioner: device {device!r}: only {torch.cuda.device_count()} "
                                  f"CUDA device(s) visible")
            return f"cuda:{index}"
        raise ConfigError(f"LocalCaptioner: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")

    def _pick_dtype(self, dtype: str) -> Any:
        torch = self._torch
        if dtype == "auto":
            if self.device == "cpu":
                return torch.float32
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return getattr(torch, dtype)

    def _model_class(self, config: Any) -> Any:
        import transformers

        if config.model_type == "blip":
            return transformers.BlipForConditionalGeneration
        if config.model_type == "blip-2":
            return transformers.Blip2ForConditionalGeneration
        for auto in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):  # the second: transformers 4
            cls = getattr(transformers, auto, None)
            if cls is not None and type(config) in cls._model_mapping:
                return cls
        raise ConfigError(f"model {self.model_name!r}: model type {config.model_type!r} is not an image-to-text "
                          f"model transformers {transformers.__version__} knows (expected BLIP, BLIP-2 or an "
                          f"AutoModelForImageTextToText type such as Florence-2)")

    def _load(self) -> None:
        import transformers
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            try:
                config = transformers.AutoConfig.from_pretrained(self.folder, local_files_only=True)
            except (OSError, ValueError, KeyError) as e:
                raise ConfigError(f"model {self.model_name!r}: {self.folder} holds no model transformers can "
                                  f"read ({_one_line(e)}); {GET_WEIGHTS}") from None
            cls = self._model_class(config)
            try:
                self.processor = transformers.AutoProcessor.from_pretrained(self.folder, local_files_only=True)  # type: ignore[no-untyped-call]
                model = cls.from_pretrained(self.folder, dtype=self.dtype, local_files_only=True)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"model {self.model_name!r}: cannot load {cls.__name__} and its processor "
                                  f"from {self.folder} ({_one_line(e)})") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        self.model = model.to(self.device).eval()
        self._closed = False

    # -- the contract ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What produced the captions: backend, model, class, revision, device, dtype, version."""
        import transformers

        if self._revision is None:
            self._revision = _revision(self.folder)
        return {"backend": "transformers", "model": self.model_name,
                "model_class": type(self.model).__name__ if not self._closed else None,
                "revision": self._revision, "device": self.device,
                "dtype": str(self.dtype).removeprefix("torch."), "transformers": transformers.__version__}

    def caption(self, images: Sequence[bytes]) -> list[LocalCaption]:
        """One caption per encoded image, in order, in batches of ``batch_size``. While a
        batch generates, the next one may be decoded and run through the processor on a
        helper thread (see ``_spare_core``), so pass many batches' worth of images per call."""
        if self._closed:
            raise ConfigError("LocalCaptioner: caption() called after close()")
        chunks = [images[s:s + self.batch_size] for s in range(0, len(images), self.batch_size)]
        out: list[LocalCaption] = []
        if not chunks:
            return out
        if not self._spare_core():  # the helper thread would only take CPU from torch's own threads
            last = time.perf_counter()
            for chunk in chunks:
                results = self._finish(self._prepare(chunk))
                now = time.perf_counter()
                share, last = (now - last) / len(results), now
                out.extend(LocalCaption(text=t, tokens_out=n, finish_reason=f, latency_s=share, error=err)
                           for t, n, f, err in results)
            return out
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="curate-caption-prepare") as pool:
            ahead = pool.submit(self._prepare, chunks[0])
            last = time.perf_counter()
            for k in range(len(chunks)):
                batch = ahead.result()
                if k + 1 < len(chunks):
                    ahead = pool.submit(self._prepare, chunks[k + 1])
                results = self._finish(batch)
                now = time.perf_counter()
                share, last = (now - last) / len(results), now
                out.extend(LocalCaption(text=t, tokens_out=n, finish_reason=f, latency_s=share, error=err)
                           for t, n, f, err in results)
        return out

    def _spare_core(self) -> bool:
        """Whether preparing the next batch on a helper thread can overlap with generate: on
        a GPU always; on CPU only when torch's intra-op threads leave a core free (with
        every core busy in torch, a third thread made captioning 0.8x as fast)."""
        if self.device != "cpu":
            return True
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return bool(self._torch.get_num_threads() < cores)

    def close(self) -> None:
        """Free the model (and the GPU memory it holds); the captioner cannot be used after."""
        if self._closed:
            return
        self._closed = True
        del self.model, self.processor
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    def __enter__(self) -> LocalCaptioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one batch ------------------------------------------------------------------------

    def _prepare(self, chunk: Sequence[bytes]) -> _Batch:
        """Decode and process one batch (runs on the helper thread: no model calls here)."""
        batch = _Batch(results=[(None, 0, "error", None)] * len(chunk))
        for i, data in enumerate(chunk):
            try:
                batch.images.append(_decode_image(bytes(data)))
                batch.where.append(i)
            except Exception as e:  # noqa: BLE001 - PIL raises many types; a bad image is a result, never a crash
                batch.results[i] = (None, 0, "error", f"cannot decode image: {_one_line(e)}")
        if batch.images:
            try:
                batch.inputs = self._process(batch.images)
            except GENERATE_ERRORS as e:
                batch.failure = e
        return batch

    def _finish(self, batch: _Batch) -> list[_Result]:
        """Generate one prepared batch; a failing batch is retried image by image."""
        if not batch.images:
            return batch.results
        try:
            if batch.failure is not None:
                raise batch.failure
            assert batch.inputs is not None  # processed when there are images and no failure
            generated = self._generate(batch.inputs)
        except GENERATE_ERRORS as e:
            if len(batch.images) == 1:
                generated = [(None, 0, "error", f"generation failed: {_one_line(e)}")]
            else:  # find the images that fail alone; the others still get their captions
                if self.device.startswith("cuda"):
                    self._torch.cuda.empty_cache()
                generated = []
                for im in batch.images:
                    try:
                        generated.extend(self._generate(self._process([im])))
                    except GENERATE_ERRORS as e1:
                        generated.append((None, 0, "error", f"generation failed: {_one_line(e1)}"))
        for i, r in zip(batch.where, generated, strict=True):
            batch.results[i] = r
        return batch.results

    def _process(self, pil_images: list[Any]) -> dict[str, Any]:
        torch = self._torch
        n = len(pil_images)
        text = [self.prompt] * n if self.prompt is not None else None
        if text is None and not self._is_blip:
            text = [""] * n  # processors that put image tokens into input_ids do it only with text
        inputs = self.processor(images=pil_images, text=text, return_tensors="pt")
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items() if isinstance(v, torch.Tensor)}

    def _generate(self, inputs: dict[str, Any]) -> list[_Result]:
        torch = self._torch
        prompt_len = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
        with torch.inference_mode():
            seqs = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                       min_new_tokens=self.min_new_tokens, num_beams=self.num_beams,
                                       do_sample=False)
        # where the generated tokens start in the returned sequences
        if self._is_blip:  # [bos] + prompt without its trailing [SEP]
            start = prompt_len - 1 if prompt_len else 1
        elif self._encoder_decoder:  # the decoder's start token
            start = 1
        else:  # decoder-only models return the prompt too
            start = prompt_len
        new = seqs[:, start:].tolist()
        kept, counts, reasons = [], [], []
        for row in new:
            end = next((j for j, t in enumerate(row) if t in self._eos), None)
            if end is None:  # ran until max_new_tokens: no padding in this row
                kept.append(row)
                counts.append(len(row))
                reasons.append("length")
            else:
                kept.append(row[:end])
                counts.append(end + 1)
                reasons.append("length" if self._forced_eos and end + 1 == self.max_new_tokens else "stop")
        texts = self.processor.batch_decode(kept, skip_special_tokens=True)
        return [(t.strip(), c, r, None) for t, c, r in zip(texts, counts, reasons, strict=True)]

