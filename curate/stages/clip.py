"""CLIP embeddings and scores with open_clip: ``clip.score.v1`` and ``clip.embed_image.v1``.

``clip.score.v1`` runs over every caption (the view ``clip_caption_images``: captions
with their sample's image reference), ordered by ``uid`` so that the caption variants
of one sample meet in one batch and its image is decoded and embedded once. It writes

* one row per caption to ``clip_scores``: ``uid``, ``variant``, ``model`` (the
  ``model_id``, e.g. ``ViT-B-32/laion2b_s34b_b79k``), ``score`` (cosine similarity of
  the L2-normalised image and text embeddings, the DataComp "CLIP score"; NULL when the
  image failed), ``status`` (``ok`` or an image failure from :mod:`curate.images`:
  ``no image``, ``image not found``, ``unreadable shard``, ``undecodable``) and
  ``detail``. One row per caption and model: settings that change no number
  (device, precision, batch sizes, workers, threads) are not part of the config hash.
* the image embedding of every sample whose image decoded, and the text embedding of
  every caption, as float16 L2-normalised vectors, registered with
  :mod:`curate.vectors` as ``clip.<model>.image`` and ``clip.<model>.text.<variant>``
  (clip-retrieval layout) by :func:`finalize_vectors`.

**Model identity.** A checkpoint file enters the config hash by the sha256 of its
bytes, not by its path: a relative and an absolute path to one file are one model, and a
file overwritten with other weights is a new one (all its rows pending again, the vector
sets replaced). The digest is cached in ``<store>/tmp/weights-sha256.json`` by (resolved
path, size, mtime_ns), so a large file is hashed once (:func:`file_sha256`). An open_clip
tag (``openai``, ``laion2b_s34b_b79k``) stays in the hash as itself, so stores written
before weights were hashed keep their tag rows current; :meth:`_ClipStage.prepare`
records the sha256 of the file open_clip has cached for it, when it has one, and the
device the run resolved (``cpu``, ``cuda:0``) in the run's config (``weights_sha256``,
``device_used``). A vector set holds the vectors of one model identity
(:meth:`_ClipStage.vector_identity`): finalising with other weights replaces it.

``clip.embed_image.v1`` embeds the image of every sample (``samples``, key ``uid``) into
``clip_images`` (``model``, ``status``, ``detail``, ``width``, ``height``) and the same
image set, for samples without captions or image-only work (dedup).

**Kill and resume.** The runner commits each batch's rows in one transaction; vectors
cannot live in that transaction, so a batch's vectors are written *before* its rows,
as a part (``vectors/.parts/<stage>/<config hash>/{img,txt}-<digest>.npy|.parquet``,
``digest`` = hash of the batch's keys, each file written to a temporary name and
renamed). A part is therefore complete whenever its rows are committed. A SIGKILL
between the part and the commit leaves an orphan part whose rows are still pending; the
rerun embeds them again (the same batch overwrites the same part). :func:`finalize_vectors`
takes, for every committed id, the vector from the first part holding it (an id in two
parts has the same embedding in both), adds it to the registered set through
:func:`curate.vectors.write_set` (atomic), and only then deletes the parts it read. So
the rows and the registered vectors never disagree: a vector is registered only for a
committed row, and a committed row's vector is in a part until it is registered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import numpy as np
import pyarrow as pa

from .._optional import require
from ..attributes import Attribute
from ..errors import ConfigError, InputError
from ..images import ImageFailure, ImageRef, decode_loader, default_workers, read_images
from .base import Stage

if TYPE_CHECKING:
    from ..runner import RunOptions
    from ..store import Store

log = logging.getLogger("curate.clip")

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
#: fields that change no stored number: left out of the config hash, so a run resumed on
#: another device or with other batch sizes continues the same rows
RUNTIME_FIELDS = ("device", "precision", "model_batch_size", "decode_workers", "threads", "parts_dir")
#: fields prepare() fills in to record what a run used; the hash takes the weights by
#: content instead (a checkpoint) or by tag, so these stay out of it too
RECORDED_FIELDS = ("weights_sha256", "device_used")
#: the weights digest cache, under the store's tmp/ (see file_sha256)
WEIGHTS_CACHE = "weights-sha256.json"

INPUT_VIEW = """
CREATE OR REPLACE VIEW clip_caption_images AS
SELECT c.caption_id, c.uid, c.variant, c.text, s.image_shard, s.image_key, s.image_path
FROM captions c JOIN samples s USING (uid)
"""


UUID_TYPE = pa.uuid()


# -- model ------------------------------------------------------------------------------
def is_checkpoint(pretrained: str) -> bool:
    return "/" in pretrained or os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors"))


def default_model_id(model: str, pretrained: str) -> str:
    tag = Path(pretrained).stem if is_checkpoint(pretrained) else pretrained
    return f"{model}/{tag}"


def offline_hint(model: str, pretrained: str) -> str:
    return (f"download open_clip_pytorch_model.bin for {model}/{pretrained} on a machine with internet and point at it: "
            f'model = "{model}", pretrained = "/path/open_clip_pytorch_model.bin" '
            f'(CLI: --model {model} --pretrained /path/open_clip_pytorch_model.bin --model-id {model}/{pretrained})')


def check_weights(model: str, pretrained: str, model_config: str | None) -> None:
    """Fail fast, in one line, when the model or its weights cannot be had here."""
    open_clip = require("open_clip", purpose="CLIP embeddings")
    if model_config:
        if not Path(model_config).is_file():
            raise ConfigError(f"model_config {model_config!r} is not a file (an open_clip model JSON config)")
        open_clip.add_model_config(model_config)
    if model not in open_clip.list_models():
        raise ConfigError(f"open_clip has no model {model!r}; e.g. {', '.join(open_clip.list_models()[:8])}, ... "
                          "(or register a JSON config with model_config)")
    if not pretrained:
        raise ConfigError("pretrained is required: an open_clip tag (e.g. laion2b_s34b_b79k) or a local checkpoint file")
    if is_checkpoint(pretrained):
        check_checkpoint(pretrained)
        return
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise ConfigError(f"open_clip has no pretrained tag {pretrained!r} for {model}; tags: {', '.join(tags) or 'none'} "
                          "(or give a local checkpoint file)")
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if _cached(cfg):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ConfigError(f"weights for {model}/{pretrained} are not in the local cache and HF_HUB_OFFLINE is set; "
                          + offline_hint(model, pretrained))
    if not _hub_reachable():
        raise ConfigError(f"weights for {model}/{pretrained} are not in the local cache and the Hugging Face hub "
                          "cannot be reached; " + offline_hint(model, pretrained))
    try:
        open_clip.download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001 - any download failure gets the same one-line advice
        raise ConfigError(f"cannot download weights for {model}/{pretrained} ({type(e).__name__}); "
                          + offline_hint(model, pretrained)) from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection within ``timeout``
    seconds, so an offline machine fails at once instead of after the hub client's
    retries (about 45 s)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached(cfg: dict[str, Any]) -> bool:
    return _cached_file(cfg) is not None


def _cached_file(cfg: dict[str, Any]) -> str | None:
    """The file open_clip would load for a pretrained config from the local Hugging Face
    cache (its safetensors alternative first, as open_clip's download prefers), or None."""
    if cfg.get("file"):
        return str(cfg["file"]) if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    names = ["open_clip_model.safetensors"] if filename == "open_clip_pytorch_model.bin" else \
        [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
    for n in [*names, filename]:
        got = try_to_load_from_cache(repo, n)
        if isinstance(got, str):
            return got
    return None


def tag_file(model: str, pretrained: str) -> str | None:
    """The locally cached weights file of an open_clip tag, or None (not a known tag, or
    not downloaded)."""
    open_clip = require("open_clip", purpose="CLIP embeddings")
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    return _cached_file(cfg) if cfg else None


# -- weights files ------------------------------------------------------------------------
def check_checkpoint(pretrained: str) -> None:
    """Fail in one line unless ``pretrained`` is a weights file open_clip can load safely:
    a safetensors file whose header reads, or a torch file that ``torch.load`` with
    ``weights_only=True`` reads as a state dict (memory-mapped when it is a zip archive,
    so a large checkpoint costs little here). Safe loading runs no code from the file: a
    pickle payload (``__reduce__`` calling ``os.system``) is refused, not run."""
    path = checkpoint_path(pretrained)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
            obj: Any = dict.fromkeys(keys)
        else:
            torch = require("torch", purpose="CLIP embeddings")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about legacy (non-zip) files as it reads them
                try:
                    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as e:
                    if "mmap can only be used" not in str(e):
                        raise
                    obj = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except Exception as e:  # noqa: BLE001 - whatever the file holds, the answer is the same one line
        raise weights_error(pretrained, e) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state:
        what = "an empty state dict" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise InputError(f"{pretrained} is not a loadable weights file: it holds {what}, not a model's state dict")


def checkpoint_path(pretrained: str) -> Path:
    """``pretrained`` as a Path, or a one-line ConfigError when it names no file."""
    path = Path(pretrained)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"checkpoint {pretrained!r} {what}; pretrained is an open_clip tag or a local "
                          "checkpoint file")
    return path


def weights_error(pretrained: str, e: BaseException, model: str | None = None) -> InputError:
    """The one-line error for a weights file that cannot be loaded (``e``: what loading raised)."""
    import pickle

    text = str(e)
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        why = [re.sub(r"^Please file an issue.*?use case:\s*", "", ln) for ln in lines
               if not ln.startswith(("Weights only load failed", "Check the documentation"))]
        reason = " ".join(w for w in why if w) or lines[0] if lines else type(e).__name__
        if "TorchScript" in text:
            reason = "it is a TorchScript archive; save the model's state_dict() instead"
        return InputError(f"{pretrained} is not a loadable weights file: safe loading (torch.load with "
                          f"weights_only=True) refused it ({reason[:200]}); curate runs no code from a weights file")
    if isinstance(e, EOFError) or (not text and Path(pretrained).is_file() and Path(pretrained).stat().st_size == 0):
        return InputError(f"{pretrained} is not a loadable weights file: it is empty or ends too early")
    first = " ".join(text.split())
    if "Error(s) in loading state_dict" in first and model:
        found = []
        for what, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*?)(?:\.\s|\.$|$)"),
                              ("unexpected", r"Unexpected key\(s\) in state_dict: (.*?)(?:\.\s|\.$|$)")):
            hit = re.search(pattern, first)
            keys = re.findall(r'"([^"]+)"', hit.group(1)) if hit else []
            if keys:
                found.append(f"{len(keys)} {what} keys (e.g. {', '.join(keys[:3])})")
        shapes = re.findall(r"size mismatch for ([^:]+):", first)
        if shapes:
            found.append(f"{len(shapes)} tensors of another shape (e.g. {', '.join(shapes[:3])})")
        return InputError(f"{pretrained} holds weights that do not fit model {model}: "
                          + ("; ".join(found) or first[:300]))
    first = re.split(r"(?<=[.])\s", first, maxsplit=1)[0] if first else type(e).__name__
    return InputError(f"{pretrained} is not a loadable weights file (truncated or corrupt?): {first[:300]}")


def _reading_error(e: BaseException) -> bool:
    """Whether ``e``, raised while open_clip built a model from a checkpoint, came from
    reading the file (not, say, from CUDA running out of memory)."""
    import pickle

    if isinstance(e, (pickle.UnpicklingError, EOFError)) or type(e).__name__ == "SafetensorError":
        return True
    markers = ("state_dict", "PytorchStreamReader", "weights_only", "zip archive", "TorchScript", "deserializ")
    return isinstance(e, (RuntimeError, ValueError, KeyError, AttributeError)) and any(m in str(e) for m in markers)


def file_sha256(path: str | os.PathLike[str], cache: Path | None = None) -> str:
    """The sha256 (hex) of a file's bytes. With ``cache`` (a JSON file; the stages use
    ``<store>/tmp/weights-sha256.json``), the digest is remembered by (resolved path,
    size, mtime_ns) and a file whose entry matches is not read again. A cache is not the
    store's data: a missing or unreadable one is rebuilt, and a file changed while it
    was read is hashed but not remembered. (Caveat: a file rewritten to the same size
    within one mtime tick of the filesystem keeps its old entry; delete the cache file
    then.)"""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as e:
        raise InputError(f"cannot read weights file {path}: {e.strerror}") from None
    key = str(p)
    entries = _read_cache(cache) if cache is not None else {}
    hit = entries.get(key)
    if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns \
            and isinstance(hit.get("sha256"), str):
        return str(hit["sha256"])
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        after = p.stat()
    except OSError as e:
        raise InputError(f"cannot read weights file {path}: {e.strerror}") from None
    digest = h.hexdigest()
    if cache is not None and (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
        entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        _write_cache(cache, entries)
    return digest


def _read_cache(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _write_cache(cache: Path, entries: dict[str, Any]) -> None:
    tmp = cache.with_name(f".{cache.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": 1, "files": entries}, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError as e:  # a cache that cannot be written costs a re-hash next time, nothing else
        log.warning("cannot write the weights hash cache %s: %s", cache, e)
        tmp.unlink(missing_ok=True)


def device_name(device: str) -> str:
    """The device a stage with ``device`` runs on in this process: ``cpu`` or ``cuda:N``
    (``auto``: CUDA when present; ``cuda``: the current CUDA device, ``cuda:0`` when
    this process sees none)."""
    if device == "cpu" or re.fullmatch(r"cuda:\d+", device):
        return device
    torch = require("torch", purpose="CLIP embeddings")
    if device == "auto" and not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{torch.cuda.current_device() if torch.cuda.is_available() else 0}"


def resolve_device(device: str, precision: str) -> tuple[Any, Any]:
    """(torch.device, autocast dtype or None). ``auto``: CUDA when present, else CPU.
    On CUDA, ``precision='auto'`` autocasts to bf16 where supported, else fp16; on the
    CPU everything is float32 (the CPU twin the tests exercise)."""
    torch = require("torch", purpose="CLIP embeddings")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device; use device='auto' or 'cpu'")
    if precision == "fp32" or (dev.type != "cuda" and precision == "auto"):
        return dev, None
    if precision == "auto":
        return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return dev, {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


class ClipModel:
    """An open_clip model in eval mode with its preprocessing and tokenizer."""

    def __init__(self, model: str, pretrained: str, model_config: str | None = None, device: str = "auto",
                 precision: str = "auto", threads: int | None = None):
        torch = require("torch", purpose="CLIP embeddings")
        open_clip = require("open_clip", purpose="CLIP embeddings")
        if threads:
            torch.set_num_threads(threads)
        if model_config:
            open_clip.add_model_config(model_config)
        self.device, self.autocast = resolve_device(device, precision)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's legacy-format note while it reads a file
                m, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained,
                                                                         device=self.device)
        except Exception as e:  # a checkpoint that cannot be read is one line; anything else is re-raised
            if is_checkpoint(pretrained) and Path(pretrained).is_file() and _reading_error(e):
                raise weights_error(pretrained, e, model) from None
            if isinstance(e, RuntimeError) and "download" in str(e).lower():
                raise ConfigError(f"cannot load weights for {model}/{pretrained}; " + offline_hint(model, pretrained)) from None
            raise
        self.model = m.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model)
        self.torch = torch

    def _ctx(self) -> Any:  # a torch.autocast context
        torch = self.torch
        if self.autocast is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)

    def encode_images(self, pixels: Any) -> np.ndarray:
        """(n, C, H, W) tensor -> (n, dim) float32, L2-normalised."""
        torch = self.torch
        with torch.inference_mode(), self._ctx():
            x = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return _normalise(x.float().cpu().numpy())

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> (n, dim) float32, L2-normalised (tokenised with the model's tokenizer)."""
        torch = self.torch
        out = []
        for s in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[s:s + batch_size])
            with torch.inference_mode(), self._ctx():
                x = self.model.encode_text(tokens.to(self.device, non_blocking=True))
            out.append(_normalise(x.float().cpu().numpy()))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1, n)


# -- parts (vectors written before their rows commit) ------------------------------------
def _digest(keys: pa.Array) -> str:
    h = hashlib.sha256()
    for k in sorted(str(x) for x in keys.to_pylist()):
        h.update(k.encode())
    return h.hexdigest()[:24]


def write_part(folder: Path, prefix: str, id_col: str, ids: list[str], vectors: np.ndarray) -> None:
    """One part: ``<prefix>.npy`` (float16) then ``<prefix>.parquet`` (ids), each renamed
    into place, so a listed parquet always has its complete npy beside it."""
    import pyarrow.parquet as pq

    if not ids:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = f".{uuid.uuid4().hex[:8]}.tmp"
    npy, meta = folder / f"{prefix}.npy", folder / f"{prefix}.parquet"
    with open(folder / (prefix + tmp + ".npy"), "wb") as f:
        np.save(f, vectors.astype(np.float16))
    os.replace(folder / (prefix + tmp + ".npy"), npy)
    pq.write_table(pa.table({id_col: pa.array(ids, pa.string())}), folder / (prefix + tmp + ".parquet"))
    os.replace(folder / (prefix + tmp + ".parquet"), meta)


# -- stages ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ClipStage(Stage):
    #: open_clip model name (``open_clip.list_models()``), or the stem of ``model_config``
    model: str = DEFAULT_MODEL
    #: an open_clip pretrained tag, or a local checkpoint file (offline machines)
    pretrained: str = DEFAULT_PRETRAINED
    #: an open_clip model JSON config to register first (``open_clip.add_model_config``)
    model_config: str | None = None
    #: the ``model`` column and vector set model; default ``<model>/<tag or checkpoint stem>``
    model_id: str | None = None
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    #: images / texts per forward pass
    model_batch_size: int = 256
    #: DataLoader decode processes; -1: cores - 1 (at most 8)
    decode_workers: int = -1
    #: torch CPU threads (None: torch's default)
    threads: int | None = None
    #: filled in by prepare(): where this configuration's vector parts go
    parts_dir: str | None = None
    #: filled in by prepare(): sha256 of the weights file (a checkpoint, or the file
    #: open_clip has cached for a tag; None when it has none). Given, prepare() checks it.
    weights_sha256: str | None = None
    #: filled in by prepare(): the device ``device`` resolves to where the run starts
    #: (``cpu``, ``cuda:0``); every worker must resolve it alike (see setup)
    device_used: str | None = None

    def __post_init__(self) -> None:
        if self.model_batch_size < 1:
            raise ValueError(f"model_batch_size must be at least 1, got {self.model_batch_size}")
        if not (self.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?", self.device)):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.weights_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.weights_sha256):
            raise ValueError(f"weights_sha256 must be 64 lowercase hex digits, got {self.weights_sha256!r}")

    @property
    def label(self) -> str:
        return self.model_id or default_model_id(self.model, self.pretrained)

    def weights_identity(self) -> str:
        """The weights as the config hash sees them: ``sha256:<hex>`` of a checkpoint
        file's bytes (the path does not count), or the open_clip tag itself."""
        if not is_checkpoint(self.pretrained):
            return self.pretrained
        return "sha256:" + (self.weights_sha256 or file_sha256(checkpoint_path(self.pretrained)))

    def model_config_identity(self) -> str | None:
        """``sha256:<hex>`` of the model JSON config's bytes (None without one)."""
        if self.model_config is None:
            return None
        if not Path(self.model_config).is_file():
            raise ConfigError(f"model_config {self.model_config!r} is not a file (an open_clip model JSON config)")
        return "sha256:" + file_sha256(self.model_config)

    def vector_identity(self) -> str:
        """What the embeddings depend on (model, weights, model config), as 16 hex
        digits: the sets of one ``model_id`` hold vectors of one identity."""
        payload = json.dumps({"model": self.model, "weights": self.weights_identity(),
                              "model_config": self.model_config_identity()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def config_hash(self) -> str:
        """The hash of the fields that change a number, with the weights and the model
        config by content (:meth:`weights_identity`): an unchanged tag configuration
        hashes as it did before checkpoints were hashed by content."""
        cfg = {k: v for k, v in self.config().items() if k not in RUNTIME_FIELDS + RECORDED_FIELDS}
        cfg["model_id"] = self.label
        cfg["pretrained"] = self.weights_identity()
        cfg["model_config"] = self.model_config_identity()
        payload = json.dumps({"stage": self.registry_name(), "config": cfg}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["model_id"] = self.label
        return cfg

    def preflight(self) -> None:
        check_weights(self.model, self.pretrained, self.model_config)

    def resolved(self, cache: Path | None = None) -> Self:
        """This stage with what a run records filled in: the checkpoint and model config as
        resolved paths, ``weights_sha256`` (``cache``: see :func:`file_sha256`) and
        ``device_used``."""
        pretrained, digest = self.pretrained, None
        if is_checkpoint(pretrained):  # preflight() has checked that it loads safely
            pretrained = str(checkpoint_path(pretrained).resolve())
            digest = file_sha256(pretrained, cache)
        else:
            found = tag_file(self.model, pretrained)
            digest = file_sha256(found, cache) if found else None
        if self.weights_sha256 is not None and digest != self.weights_sha256:
            raise ConfigError(f"weights for {self.label} ({pretrained}) have sha256 {digest or 'unknown (not cached)'}, "
                              f"but the configuration asks for weights_sha256 = {self.weights_sha256}")
        model_config = str(Path(self.model_config).resolve()) if self.model_config else None
        return dataclasses.replace(self, model_id=self.label, pretrained=pretrained, model_config=model_config,
                                   weights_sha256=digest, device_used=device_name(self.device))

    def prepare(self, store: Store) -> Self:
        stage = self.resolved(store.path / "tmp" / WEIGHTS_CACHE)
        parts = store.path / "vectors" / ".parts" / stage.registry_name() / stage.config_hash()
        return dataclasses.replace(stage, parts_dir=str(parts.resolve()))

    def setup(self) -> None:
        m = ClipModel(self.model, self.pretrained, self.model_config, self.device, self.precision, self.threads)
        used = device_name(str(m.device))
        if self.device_used is not None and used != self.device_used:
            raise ConfigError(f"device {self.device!r} is {used} in this worker but {self.device_used} where the run "
                              f"started, which the run records; pass the device explicitly (--device {used})")
        object.__setattr__(self, "_clip", m)
        object.__setattr__(self, "_pin", m.device.type == "cuda")

    def set_prefix(self) -> str:
        """The vector set names' prefix: ``clip.<model_id with / as ->``."""
        return "clip." + re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label).strip("-")

    # -- shared maths --------------------------------------------------------------------
    def _embed_images(self, refs: list[ImageRef]) -> tuple[np.ndarray | None, list[ImageFailure | None]]:
        """Embeddings (rows in ``refs`` order, NaN rows for failures) and failures."""
        clip: ClipModel = self._clip  # type: ignore[attr-defined]
        items = read_images(refs)
        failures: list[ImageFailure | None] = [i if isinstance(i, ImageFailure) else None for i in items]
        out: np.ndarray | None = None
        workers = default_workers() if self.decode_workers < 0 else self.decode_workers
        for idx, pixels, bad in decode_loader(items, clip.preprocess, batch_size=self.model_batch_size,
                                              workers=workers, pin_memory=self._pin):  # type: ignore[attr-defined]
            for i, f in bad:
                failures[i] = f
            if pixels is None:
                continue
            emb = clip.encode_images(pixels)
            if out is None:
                out = np.full((len(refs), emb.shape[1]), np.nan, np.float32)
            out[idx] = emb
        return out, failures


def _uuids(values: list[str]) -> pa.Array:
    return pa.ExtensionArray.from_storage(UUID_TYPE, pa.array([uuid.UUID(v).bytes for v in values], pa.binary(16)))


@dataclasses.dataclass(frozen=True)
class ClipScore(_ClipStage):
    """Image and text embeddings and the CLIP score of every caption (see the module docstring)."""

    name: ClassVar[str] = "clip.score"
    version: ClassVar[int] = 1
    input_table: ClassVar[str] = "clip_caption_images"
    key: ClassVar[str] = "caption_id"
    reads: ClassVar[tuple[str, ...]] = ("uid", "variant", "text", "image_shard", "image_key", "image_path")
    input_order: ClassVar[str | None] = "uid"
    output_table: ClassVar[str] = "clip_scores"
    output_schema: ClassVar[pa.Schema] = pa.schema([
        ("uid", UUID_TYPE), ("variant", pa.string()), ("model", pa.string()), ("score", pa.float64()),
        ("status", pa.string()), ("detail", pa.string()),
    ])
    #: clip_scores_latest: the scores of the latest configuration run per model, with the
    #: caption and sample
    latest_view: ClassVar[str | None] = "clip_scores_latest"
    latest_by: ClassVar[tuple[str, ...]] = ("model_id",)
    latest_columns: ClassVar[str] = "k.caption_id, k.uid, k.variant, k.model, k.score, k.status, k.detail, c.source, c.text"
    attributes: ClassVar[tuple[Attribute, ...]] = (
        Attribute("clip_score", "caption", "number", "CLIP image-caption similarity (clip_scores.score)",
                  sql="SELECT caption_id, score AS value FROM clip_scores_latest WHERE model = $model AND status = 'ok'",
                  params=("model",), latest="clip_scores_latest (latest run per model)"),
    )
    produced_by: ClassVar[str | None] = ("the CLIP embedding stage (curate embed ...), clip.score.v1; "
                                         "see docs/mixing.md for the table contract")

    def prepare(self, store: Store) -> Self:
        store.con.execute(INPUT_VIEW)
        return super().prepare(store)

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        clip: ClipModel = self._clip  # type: ignore[attr-defined]
        cols = {n: batch.column(n).to_pylist() for n in ("caption_id", "uid", "variant", "text", "image_shard",
                                                         "image_key", "image_path")}
        uids = list(dict.fromkeys(cols["uid"]))
        first: dict[str, int] = {}
        for j, u in enumerate(cols["uid"]):
            first.setdefault(u, j)
        refs = [ImageRef(cols["image_path"][first[u]], cols["image_shard"][first[u]], cols["image_key"][first[u]])
                for u in uids]
        img, failures = self._embed_images(refs)
        texts = list(dict.fromkeys(cols["text"]))
        temb = clip.encode_texts(texts, self.model_batch_size)
        trow = {t: i for i, t in enumerate(texts)}
        urow = {u: i for i, u in enumerate(uids)}
        t_all = temb[[trow[t] for t in cols["text"]]]
        scores: list[float | None] = []
        status: list[str] = []
        detail: list[str | None] = []
        for j, u in enumerate(cols["uid"]):
            f = failures[urow[u]]
            if f is None and img is not None:
                scores.append(float(np.dot(img[urow[u]], t_all[j])))
                status.append("ok")
                detail.append(None)
            else:
                f = f or ImageFailure("undecodable", "no embedding")
                scores.append(None)
                status.append(f.reason)
                detail.append(f.detail)
        if self.parts_dir:  # vectors first, rows after (the runner commits them when this returns)
            d = _digest(batch.column("caption_id"))
            ok_u = [u for u in uids if failures[urow[u]] is None]
            if ok_u and img is not None:
                write_part(Path(self.parts_dir), f"img-{d}", "uid", ok_u, img[[urow[u] for u in ok_u]])
            write_part(Path(self.parts_dir), f"txt-{d}", "caption_id", cols["caption_id"], t_all)
        return pa.table({
            "caption_id": batch.column("caption_id"), "uid": _uuids(cols["uid"]),
            "variant": pa.array(cols["variant"], pa.string()),
            "model": pa.array([self.label] * batch.num_rows, pa.string()),
            "score": pa.array(scores, pa.float64()), "status": pa.array(status, pa.string()),
            "detail": pa.array(detail, pa.string()),
        })


#: The scores of the latest configuration run per model, with the caption and sample.
SCORES_LATEST_VIEW = ClipScore.view_statements()[0]


@dataclasses.dataclass(frozen=True)
class ClipImage(_ClipStage):
    """Image embeddings of every sample (``clip_images`` + the image vector set)."""

    name: ClassVar[str] = "clip.embed_image"
    version: ClassVar[int] = 1
    input_table: ClassVar[str] = "samples"
    key: ClassVar[str] = "uid"
    reads: ClassVar[tuple[str, ...]] = ("image_shard", "image_key", "image_path")
    output_table: ClassVar[str] = "clip_images"
    output_schema: ClassVar[pa.Schema] = pa.schema([
        ("model", pa.string()), ("status", pa.string()), ("detail", pa.string()),
    ])

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        uids = [str(u) for u in batch.column("uid").to_pylist()]
        refs = [ImageRef(p, s, k) for p, s, k in zip(batch.column("image_path").to_pylist(),
                                                     batch.column("image_shard").to_pylist(),
                                                     batch.column("image_key").to_pylist())]
        img, failures = self._embed_images(refs)
        if self.parts_dir:
            ok = [i for i, f in enumerate(failures) if f is None]
            if ok and img is not None:
                write_part(Path(self.parts_dir), f"img-{_digest(batch.column('uid'))}", "uid", [uids[i] for i in ok],
                           img[ok])
        return pa.table({
            "uid": batch.column("uid"), "model": pa.array([self.label] * batch.num_rows, pa.string()),
            "status": pa.array(["ok" if f is None else f.reason for f in failures], pa.string()),
            "detail": pa.array([None if f is None else f.detail for f in failures], pa.string()),
        })


# -- finalising vector sets --------------------------------------------------------------------
def finalize_vectors(store: Store, stage: _ClipStage, prefix: str | None = None) -> list[Any]:
    """Register the committed rows' vectors of ``stage`` (its parts) as vector sets, and
    delete the parts read. Idempotent; safe after a kill at any point (module docstring).
    Returns the :class:`curate.vectors.WriteResult` of every set written."""
    from .. import vectors as V

    stage = stage.prepare(store) if stage.parts_dir is None else stage
    h = stage.config_hash()
    parts = Path(stage.parts_dir or "")
    prefix = prefix or stage.set_prefix()
    if not store.has_table(stage.output_table):
        return []
    files = {p: sorted(str(f) for f in parts.glob(f"{p}-*.parquet") if not f.name.startswith(".")) if parts.is_dir()
             else [] for p in ("img", "txt")}
    results = []
    if isinstance(stage, ClipScore):
        committed_img = "SELECT DISTINCT uid::VARCHAR AS id FROM clip_scores WHERE config_hash = $h AND status = 'ok'"
        results += _finalize_one(store, V, f"{prefix}.image", "image", "uid", files["img"], committed_img, {"h": h},
                                 stage, None)
        variants = [r[0] for r in store.con.execute(
            "SELECT DISTINCT variant FROM clip_scores WHERE config_hash = ? ORDER BY 1", [h]).fetchall()]
        for v in variants:
            committed = ("SELECT caption_id::VARCHAR AS id FROM clip_scores WHERE config_hash = $h "
                         "AND variant = $variant")
            results += _finalize_one(store, V, f"{prefix}.text.{v}", "text", "caption_id", files["txt"], committed,
                                     {"h": h, "variant": v}, stage, v)
    else:
        committed_img = "SELECT uid::VARCHAR AS id FROM clip_images WHERE config_hash = $h AND status = 'ok'"
        results += _finalize_one(store, V, f"{prefix}.image", "image", "uid", files["img"], committed_img, {"h": h},
                                 stage, None)
    for f in files["img"] + files["txt"]:  # read (or orphans of uncommitted rows): the set has them now
        Path(f).unlink(missing_ok=True)
        Path(f[:-len(".parquet")] + ".npy").unlink(missing_ok=True)
    return results


def _finalize_one(store: Store, V: Any, name: str, kind: str, id_col: str, files: list[str], committed: str,
                  params: dict[str, Any], stage: _ClipStage, variant: str | None) -> list[Any]:
    registered = name in V.list_sets(store)
    keep = registered and _same_vectors(store, name, stage)  # else: other weights' vectors, replaced
    if not files and keep:
        return []  # nothing new, and the set is this identity's (its ids are not read: a no-op stays cheap)
    existing = V.open_set(store, name) if registered else None
    have = pa.table({"id": existing.ids() if existing is not None and keep else pa.array([], pa.string())})
    cur = store.con.cursor()
    try:
        cur.register("_clip_have", have)
        rows = cur.execute(
            f"""WITH p AS (SELECT "{id_col}" AS id, filename, file_row_number AS row
                           FROM read_parquet($files, filename = true, file_row_number = true))
                SELECT filename, row, id FROM p SEMI JOIN ({committed}) c USING (id) ANTI JOIN _clip_have USING (id)
                QUALIFY row_number() OVER (PARTITION BY id ORDER BY filename, row) = 1
                ORDER BY filename, row""", {"files": files, **params}).fetchall() if files else []
        missing = cur.execute(f"SELECT count(*) FROM ({committed}) c ANTI JOIN _clip_have USING (id)",
                              params).fetchall()[0][0] - len(rows)
    finally:
        cur.unregister("_clip_have")
        cur.close()
    if missing > 0:
        log.warning("vector set %s: %s committed rows of %s (%s, config %s) have no vector: the set was replaced with "
                    "other weights' vectors, or dropped, after they were registered; give each weights file its own "
                    "model_id, or delete those rows and embed again (docs/clip.md, Model identity)", name,
                    f"{missing:,}", stage.label, stage.registry_name(), stage.config_hash())
    if not rows:
        return []
    by_file: dict[str, tuple[list[int], list[str]]] = {}
    for f, r, i in rows:
        by_file.setdefault(f, ([], []))[0].append(r)
        by_file[f][1].append(i)

    def blocks() -> Iterator[Any]:  # curate.vectors.Block
        if existing is not None and keep:
            ids = existing.ids()
            offs = existing.offsets
            for k, arr in enumerate(existing.arrays()):
                yield V.Block(np.asarray(arr), ids.slice(int(offs[k]), int(offs[k + 1] - offs[k])))
        for f, (r, i) in by_file.items():
            arr = np.load(f[:-len(".parquet")] + ".npy", mmap_mode="r")
            yield V.Block(np.asarray(arr[np.asarray(r, np.int64)]), i)

    res = V.write_set(store, name, blocks(), kind=kind, model=stage.label, variant=variant, replace=existing is not None,
                      source=f"{stage.registry_name()}:{stage.config_hash()}", stage=f"{stage.registry_name()}.vectors",
                      config={"config_hash": stage.config_hash(), "added": len(rows),
                              "vector_identity": stage.vector_identity(), "weights_sha256": stage.weights_sha256,
                              "replaced": existing is not None and not keep})
    return [res]


def _same_vectors(store: Store, name: str, stage: _ClipStage) -> bool:
    """Whether the registered set ``name`` holds vectors of ``stage``'s model identity.
    A set registered before identities were recorded (no ``vector_identity`` in its
    run's config) counts as the same only when it came from this very configuration
    (its ``source`` names the stage and config hash): true for an unchanged tag, false
    for a checkpoint, whose old hash was of its path."""
    got = store.con.execute(
        "SELECT v.source, json_extract_string(r.config, '$.config.vector_identity') FROM vector_sets v "
        "LEFT JOIN runs r USING (run_id) WHERE v.name = ?", [name]).fetchall()
    if not got:
        return False
    source, identity = got[0]
    if identity is not None:
        return bool(identity == stage.vector_identity())
    return bool(source == f"{stage.registry_name()}:{stage.config_hash()}")


# -- the API --------------------------------------------------------------------------------------
def embed(store: Store, stage: _ClipStage, options: RunOptions | None = None, *, finalize: bool = True) -> dict[str, Any]:
    """Run ``stage`` over its pending rows, then register its vectors. Returns the run
    result, the vector sets written, the images/s and texts/s of this run, and the
    weights' sha256 and the device the run recorded (``weights_sha256``, ``device``)."""
    from ..runner import RunOptions, run_stage

    options = options or RunOptions(batch_size=1024)
    t0 = time.perf_counter()
    result = run_stage(store, stage, options)
    seconds = time.perf_counter() - t0
    if isinstance(stage, ClipScore):
        n_img, n_txt = store.con.execute(
            "SELECT count(DISTINCT uid) FILTER (status = 'ok'), count(*) FROM clip_scores WHERE run_id = ?",
            [result.run_id]).fetchall()[0]
    else:
        n_img = store.con.execute("SELECT count(*) FILTER (status = 'ok') FROM clip_images WHERE run_id = ?",
                                  [result.run_id]).fetchall()[0][0]
        n_txt = 0
    sha, device = store.con.execute(
        "SELECT json_extract_string(config, '$.config.weights_sha256'), json_extract_string(config, "
        "'$.config.device_used') FROM runs WHERE run_id = ?", [result.run_id]).fetchall()[0]
    sets = finalize_vectors(store, stage) if finalize else []
    return {"run": result, "sets": sets, "images": n_img, "texts": n_txt, "seconds": seconds,
            "images_per_s": n_img / seconds if seconds else 0.0, "texts_per_s": n_txt / seconds if seconds else 0.0,
            "weights_sha256": sha, "device": device}


__all__ = ["ClipImage", "ClipModel", "ClipScore", "check_checkpoint", "check_weights", "device_name", "embed",
           "file_sha256", "finalize_vectors", "resolve_device"]
