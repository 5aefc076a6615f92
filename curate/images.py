"""Image access: the bytes behind a sample's image reference, and decoding them.

A sample points at its image in one of these ways (``samples`` columns, as written by
the ingest formats):

* ``image_path``: a plain image file (JPEG, PNG, WebP, ... anything Pillow opens);
* ``image_shard`` ending in ``.tar`` + ``image_key``: a webdataset tar (img2dataset's
  ``webdataset`` output), member ``{image_key}.{jpg,jpeg,png,webp,...}``;
* ``image_shard`` ending in ``.parquet`` + ``image_key``: a parquet file with the image
  bytes in a binary column (img2dataset's ``parquet`` output: column ``jpg``, row
  found by its ``key`` column) or HF-style image structs (``{bytes, path}``, the
  ``datasets.Image`` feature), row found by a ``key`` column or, when ``image_key`` is
  ``#<n>``, by row number ``n`` (0-based).

:func:`read_images` returns, for each reference, the bytes or an :class:`ImageFailure`
with a short fixed ``reason`` and a ``detail``; :func:`decode_loader` decodes and
preprocesses bytes in a torch ``DataLoader`` with worker processes. A bad image is
never an exception and never dropped: it comes back as a failure with its reason.

Reasons (fixed phrases, the ``status`` of the CLIP tables):

* ``no image``: the sample has no image reference (not downloaded);
* ``image not found``: the file, tar member or parquet row does not exist;
* ``unreadable shard``: the tar or parquet file cannot be read;
* ``undecodable``: the bytes are not an image Pillow can decode (``detail`` has
  Pillow's message).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
#: binary columns tried, in order, for the image bytes of a parquet shard
PARQUET_IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "bytes")
REASONS = ("no image", "image not found", "unreadable shard", "undecodable")


@dataclass(frozen=True)
class ImageRef:
    """Where one image is (the ``samples`` columns)."""

    image_path: str | None = None
    image_shard: str | None = None
    image_key: str | None = None


@dataclass(frozen=True)
class ImageFailure:
    reason: str  # one of REASONS
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class _ShardCache:
    """Per-process caches: tar member indexes and parquet layouts, a few shards at a time."""

    def __init__(self, size: int = 8):
        self.size = size
        self.tars: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()

    def tar_index(self, path: str) -> dict[str, tuple[int, int]]:
        """key -> (data offset, size) of the image member, for every image in the tar."""
        if path in self.tars:
            self.tars.move_to_end(path)
            return self.tars[path]
        index: dict[str, tuple[int, int]] = {}
        with tarfile.open(path, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                stem, dot, ext = m.name.rpartition(".")
                if dot and ext.lower() in IMAGE_EXTS:
                    index.setdefault(stem, (m.offset_data, m.size))
        self.tars[path] = index
        while len(self.tars) > self.size:
            self.tars.popitem(last=False)
        return index


_CACHE = _ShardCache()


def read_images(refs: Sequence[ImageRef]) -> list[bytes | ImageFailure]:
    """The bytes of each image, in order; shards are opened once per call, each
    referenced image read once."""
    out: list[bytes | ImageFailure | None] = [None] * len(refs)
    by_shard: dict[str, list[int]] = {}
    for i, r in enumerate(refs):
        if r.image_path:
            out[i] = _read_file(r.image_path)
        elif r.image_shard:
            if r.image_key is None:
                out[i] = ImageFailure("image not found", f"{r.image_shard}: no image_key")
            else:
                by_shard.setdefault(r.image_shard, []).append(i)
        else:
            out[i] = ImageFailure("no image", "the sample has no image_path or image_shard (not downloaded?)")
    for shard, idx in by_shard.items():
        keys = [str(refs[i].image_key) for i in idx]
        if shard.endswith(".tar"):
            got = _read_tar(shard, keys)
        elif shard.endswith(".parquet"):
            got = _read_parquet(shard, keys)
        else:
            got = [ImageFailure("unreadable shard", f"{shard}: not a .tar or .parquet shard")] * len(keys)
        for i, g in zip(idx, got):
            out[i] = g
    return out  # type: ignore[return-value]


def _read_file(path: str) -> bytes | ImageFailure:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return ImageFailure("image not found", f"{path}: no such file")
    except OSError as e:
        return ImageFailure("image not found", f"{path}: {e.strerror or e}")


def _read_tar(shard: str, keys: list[str]) -> list[bytes | ImageFailure]:
    try:
        index = _CACHE.tar_index(shard)
        out: list[bytes | ImageFailure] = []
        with open(shard, "rb") as f:
            for k in keys:
                loc = index.get(k)
                if loc is None:
                    out.append(ImageFailure("image not found", f"{Path(shard).name}: no image member for key {k}"))
                    continue
                f.seek(loc[0])
                out.append(f.read(loc[1]))
        return out
    except FileNotFoundError:
        return [ImageFailure("image not found", f"{shard}: no such file")] * len(keys)
    except (OSError, tarfile.TarError) as e:
        return [ImageFailure("unreadable shard", f"{Path(shard).name}: {e}")] * len(keys)


def _image_column(schema: Any) -> tuple[str, bool] | None:
    """(column, is_struct) of the image bytes in a parquet schema."""
    import pyarrow as pa

    def is_bin(t: Any) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    fields = {f.name: f.type for f in schema}
    for name in PARQUET_IMAGE_COLUMNS + tuple(fields):
        t = fields.get(name)
        if t is None:
            continue
        if is_bin(t):
            return name, False
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and is_bin(t.field("bytes").type):
            return name, True
    return None


def _read_parquet(shard: str, keys: list[str]) -> list[bytes | ImageFailure]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    name = Path(shard).name
    try:
        pf = pq.ParquetFile(shard)
    except FileNotFoundError:
        return [ImageFailure("image not found", f"{shard}: no such file")] * len(keys)
    except (OSError, pa.ArrowException) as e:
        return [ImageFailure("unreadable shard", f"{name}: {str(e).splitlines()[0]}")] * len(keys)
    col = _image_column(pf.schema_arrow)
    if col is None:
        return [ImageFailure("unreadable shard", f"{name}: no image bytes column ({', '.join(PARQUET_IMAGE_COLUMNS)} "
                             "or an HF image struct)")] * len(keys)
    column, is_struct = col
    try:
        found: dict[str, Any] = {}
        by_row = [k for k in keys if k.startswith("#")]
        by_key = [k for k in keys if not k.startswith("#")]
        if by_key:
            if "key" not in pf.schema_arrow.names:
                return [ImageFailure("unreadable shard", f"{name}: no key column; use image_key '#<row>'")] * len(keys)
            t = pq.read_table(shard, columns=["key", column], filters=pc.field("key").isin(by_key))
            for k, v in zip(t.column("key").to_pylist(), _bytes_of(t.column(column), is_struct)):
                found.setdefault(str(k), v)
        if by_row:
            rows = sorted({int(k[1:]) for k in by_row if k[1:].isdigit()})
            n = pf.metadata.num_rows
            ok = [r for r in rows if r < n]
            if ok:
                t = pq.read_table(shard, columns=[column]).take(pa.array(ok, pa.int64()))
                for r, v in zip(ok, _bytes_of(t.column(column), is_struct)):
                    found[f"#{r}"] = v
    except (OSError, pa.ArrowException) as e:
        return [ImageFailure("unreadable shard", f"{name}: {str(e).splitlines()[0]}")] * len(keys)
    out: list[bytes | ImageFailure] = []
    for k in keys:
        v = found.get(k)
        out.append(v if v is not None else ImageFailure("image not found", f"{name}: no image for key {k}"))
    return out


def _bytes_of(col: Any, is_struct: bool) -> list[bytes | None]:
    import pyarrow.compute as pc

    if is_struct:
        col = pc.struct_field(col, "bytes")
    return col.to_pylist()


# -- decoding ------------------------------------------------------------------------
def decode(data: bytes) -> Any:
    """Pillow RGB image from bytes; raises :class:`ValueError` with Pillow's message."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ValueError(f"decompression bomb: {e}") from None
    except (OSError, ValueError, SyntaxError, TypeError, EOFError) as e:  # what Pillow raises on bad bytes
        msg = re.sub(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e))  # the same bytes, the same detail
        raise ValueError(f"{type(e).__name__}: {msg}") from None


class _DecodeDataset:
    """Map-style dataset over bytes: item i -> (i, CHW tensor | None, failure | None)."""

    def __init__(self, items: Sequence[bytes | ImageFailure], transform: Callable[[Any], Any]):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Any, ImageFailure | None]:
        item = self.items[i]
        if isinstance(item, ImageFailure):
            return i, None, item
        try:
            img = decode(item)
            return i, self.transform(img), None
        except Exception as e:  # noqa: BLE001 - a bad image is a row with its reason, never a crash
            detail = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            return i, None, ImageFailure("undecodable", detail[:500])


def _collate(batch: list[tuple[int, Any, ImageFailure | None]]) -> tuple[list[int], Any, list[tuple[int, ImageFailure]]]:
    import torch

    ok = [(i, t) for i, t, f in batch if f is None]
    bad = [(i, f) for i, _, f in batch if f is not None]
    tensors = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], tensors, bad


def decode_loader(items: Sequence[bytes | ImageFailure], transform: Callable[[Any], Any], *, batch_size: int = 256,
                  workers: int = 0, pin_memory: bool = False
                  ) -> Iterator[tuple[list[int], Any, list[tuple[int, ImageFailure]]]]:
    """Decode and preprocess ``items`` in a torch DataLoader (``workers`` processes).

    Yields ``(indices, tensor (n, C, H, W) or None, [(index, failure)])`` per batch, in
    order; every index comes back exactly once, as a tensor row or as a failure."""
    from torch.utils.data import DataLoader, Dataset

    if not items:
        return
    workers = max(0, min(workers, (len(items) + 31) // 32))  # no worker processes for a handful of images
    kw: dict[str, Any] = {}
    if workers:
        # fork: the workers inherit the bytes instead of receiving them pickled; on CUDA
        # forkserver avoids forking a process that holds a CUDA context.
        kw["multiprocessing_context"] = "forkserver" if pin_memory else "fork"
        kw["prefetch_factor"] = 2
    # A map-style dataset is anything with __len__ and __getitem__; _DecodeDataset does not
    # subclass torch's Dataset so that this module imports without torch.
    dataset = cast("Dataset[tuple[int, Any, ImageFailure | None]]", _DecodeDataset(items, transform))
    loader: DataLoader[tuple[int, Any, ImageFailure | None]] = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate, pin_memory=pin_memory,
        **kw)
    yield from loader


def default_workers() -> int:
    """Decode workers when not configured: the cores beyond the one running the model, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


__all__ = ["REASONS", "ImageFailure", "ImageRef", "decode", "decode_loader", "default_workers", "read_images"]
