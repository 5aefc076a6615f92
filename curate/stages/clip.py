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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import numpy as np
import pyarrow as pa

from .._optional import require
from ..attributes import Attribute
from ..errors import ConfigError
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
        if not Path(pretrained).is_file():
            raise ConfigError(f"checkpoint {pretrained!r} does not exist; pretrained is an open_clip tag or a local "
                              "checkpoint file")
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
    hub = cfg.get("hf_hub", "")
    if not hub:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    repo, filename = os.path.split(hub)
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)


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
            m, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=self.device)
        except RuntimeError as e:
            if "download" in str(e).lower():
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

    def __post_init__(self) -> None:
        if self.model_batch_size < 1:
            raise ValueError(f"model_batch_size must be at least 1, got {self.model_batch_size}")
        if not (self.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?", self.device)):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def label(self) -> str:
        return self.model_id or default_model_id(self.model, self.pretrained)

    def config_hash(self) -> str:
        cfg = {k: v for k, v in self.config().items() if k not in RUNTIME_FIELDS}
        cfg["model_id"] = self.label
        payload = json.dumps({"stage": self.registry_name(), "config": cfg}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["model_id"] = self.label
        return cfg

    def preflight(self) -> None:
        check_weights(self.model, self.pretrained, self.model_config)

    def prepare(self, store: Store) -> Self:
        parts = store.path / "vectors" / ".parts" / self.registry_name() / self.config_hash()
        return dataclasses.replace(self, parts_dir=str(parts.resolve()), model_id=self.label)

    def setup(self) -> None:
        m = ClipModel(self.model, self.pretrained, self.model_config, self.device, self.precision, self.threads)
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
    if not parts.is_dir() or not store.has_table(stage.output_table):
        return []
    files = {p: sorted(str(f) for f in parts.glob(f"{p}-*.parquet") if not f.name.startswith("."))
             for p in ("img", "txt")}
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
    if not files:
        return []
    existing = V.open_set(store, name) if name in V.list_sets(store) else None
    have = pa.table({"id": existing.ids() if existing is not None else pa.array([], pa.string())})
    cur = store.con.cursor()
    try:
        cur.register("_clip_have", have)
        rows = cur.execute(
            f"""WITH p AS (SELECT "{id_col}" AS id, filename, file_row_number AS row
                           FROM read_parquet($files, filename = true, file_row_number = true))
                SELECT filename, row, id FROM p SEMI JOIN ({committed}) c USING (id) ANTI JOIN _clip_have USING (id)
                QUALIFY row_number() OVER (PARTITION BY id ORDER BY filename, row) = 1
                ORDER BY filename, row""", {"files": files, **params}).fetchall()
    finally:
        cur.unregister("_clip_have")
        cur.close()
    if not rows:
        return []
    by_file: dict[str, tuple[list[int], list[str]]] = {}
    for f, r, i in rows:
        by_file.setdefault(f, ([], []))[0].append(r)
        by_file[f][1].append(i)

    def blocks() -> Iterator[Any]:  # curate.vectors.Block
        if existing is not None:
            ids = existing.ids()
            offs = existing.offsets
            for k, arr in enumerate(existing.arrays()):
                yield V.Block(np.asarray(arr), ids.slice(int(offs[k]), int(offs[k + 1] - offs[k])))
        for f, (r, i) in by_file.items():
            arr = np.load(f[:-len(".parquet")] + ".npy", mmap_mode="r")
            yield V.Block(np.asarray(arr[np.asarray(r, np.int64)]), i)

    res = V.write_set(store, name, blocks(), kind=kind, model=stage.label, variant=variant, replace=existing is not None,
                      source=f"{stage.registry_name()}:{stage.config_hash()}", stage=f"{stage.registry_name()}.vectors",
                      config={"config_hash": stage.config_hash(), "added": len(rows)})
    return [res]


# -- the API --------------------------------------------------------------------------------------
def embed(store: Store, stage: _ClipStage, options: RunOptions | None = None, *, finalize: bool = True) -> dict[str, Any]:
    """Run ``stage`` over its pending rows, then register its vectors. Returns the run
    result, the vector sets written and the images/s and texts/s of this run."""
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
    sets = finalize_vectors(store, stage) if finalize else []
    return {"run": result, "sets": sets, "images": n_img, "texts": n_txt, "seconds": seconds,
            "images_per_s": n_img / seconds if seconds else 0.0, "texts_per_s": n_txt / seconds if seconds else 0.0}


__all__ = ["ClipImage", "ClipModel", "ClipScore", "check_weights", "embed", "finalize_vectors", "resolve_device"]
