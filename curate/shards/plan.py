"""The plan: which manifest rows become how many samples, in which order.

Everything here runs in the planning process and is cheap per row; the image bytes are
read by the shard writers (:mod:`curate.shards.write`), except with ``verify_images``.

* **Images.** :class:`Locator` tells, without reading image bytes, whether a row's
  image is where the row says: a file (``os.stat``), a member of an img2dataset tar
  (its member names, read once per tar), or a row of a parquet shard (its ``key``
  column, read once per file). A row without any reference is ``no image`` (a failed
  download); the other reasons are those of :mod:`curate.images`. With
  ``verify_images`` the bytes are read and decoded (:func:`verify`), in the writer
  processes, and an image Pillow cannot decode is ``undecodable``.
* **Copies.** :func:`copies`: a row of weight ``w`` (times ``repeat_factor``) becomes
  ``floor(w)`` copies plus one more with probability ``w - floor(w)``, drawn from a
  seeded hash of its uid (DataComp-style upsampling: the integer part as repeats, as
  ``resharder.py`` writes a uid once per occurrence in the subset file, and the fraction
  as a seeded coin), at most ``max_repeats``. The expected number of copies is ``w``;
  a MetaCLIP weight ``t / count`` below 1 keeps the row with that probability.
* **Order.** :func:`shuffled`: webdataset's buffer shuffle (fill a buffer of ``n``,
  then emit a random element and put the next one in its place), driven by
  ``random.Random(seed)``, whose ``random()`` sequence Python keeps the same across
  versions. Memory is bounded by the buffer; copies of a row land up to about ``n``
  samples apart.
"""

from __future__ import annotations

import math
import os
import random
import tarfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from ..images import IMAGE_EXTS, ImageFailure, ImageRef, decode, read_images
from .captions import unit

T = TypeVar("T")

#: why a row or a copy was left out (the first four are :data:`curate.images.REASONS`)
REASONS = ("no image", "image not found", "unreadable shard", "undecodable", "unsupported format")
#: the image formats open_clip reads from a tar (its ``jpg;png;jpeg;webp`` keys), by magic bytes
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))


def image_ext(data: bytes) -> str | None:
    """``jpg``, ``png`` or ``webp`` from the bytes' signature; None for anything else."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def copies(weight: float, factor: float, max_repeats: int, seed: int, uid: str) -> int:
    """How many samples a row of ``weight`` becomes: ``floor(x)`` plus one with
    probability ``x - floor(x)`` (``x = weight * factor``, a seeded draw per uid), at
    most ``max_repeats``."""
    x = weight * factor
    n = math.floor(x)
    if x - n > 0 and unit(seed, "repeat", uid) < x - n:
        n += 1
    return min(n, max_repeats)


def shuffled(items: Iterable[T], bufsize: int, seed: int) -> Iterator[T]:
    """``items`` in a seeded buffer-shuffled order (webdataset's ``_shuffle`` rule with
    ``initial = bufsize``); ``bufsize <= 1`` keeps the order."""
    if bufsize <= 1:
        yield from items
        return
    rng = random.Random(seed)
    buf: list[T] = []
    for x in items:
        buf.append(x)
        if len(buf) >= bufsize:
            i = int(rng.random() * len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    while buf:
        i = int(rng.random() * len(buf))
        buf[i], buf[-1] = buf[-1], buf[i]
        yield buf.pop()


class Locator:
    """Existence checks of image references, caching a few shards' member lists."""

    def __init__(self, cache: int = 16):
        self.cache = cache
        self.shards: OrderedDict[str, set[str] | tuple[int, set[str]] | ImageFailure] = OrderedDict()

    def _members(self, shard: str) -> set[str] | tuple[int, set[str]] | ImageFailure:
        if shard in self.shards:
            self.shards.move_to_end(shard)
            return self.shards[shard]
        got: set[str] | tuple[int, set[str]] | ImageFailure
        try:
            if shard.endswith(".tar"):
                with tarfile.open(shard, mode="r:") as tf:
                    got = {m.name.rpartition(".")[0] for m in tf
                           if m.isfile() and m.name.rpartition(".")[2].lower() in IMAGE_EXTS}
            elif shard.endswith(".parquet"):
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(shard)
                keys = set()
                if "key" in pf.schema_arrow.names:
                    keys = {str(k) for k in pq.read_table(shard, columns=["key"]).column("key").to_pylist()}
                got = (pf.metadata.num_rows, keys)
            else:
                got = ImageFailure("unreadable shard", f"{shard}: not a .tar or .parquet shard")
        except FileNotFoundError:
            got = ImageFailure("image not found", f"{shard}: no such file")
        except Exception as e:  # noqa: BLE001 - a broken shard is a reason for its rows, never a crash
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            got = ImageFailure("unreadable shard", f"{Path(shard).name}: {msg}")
        self.shards[shard] = got
        while len(self.shards) > self.cache:
            self.shards.popitem(last=False)
        return got

    def check(self, ref: ImageRef) -> ImageFailure | None:
        """Why the image of ``ref`` cannot be read, or None."""
        if ref.image_path:
            try:
                if not os.path.isfile(ref.image_path):
                    return ImageFailure("image not found", f"{ref.image_path}: no such file")
            except OSError as e:  # pragma: no cover - isfile swallows most
                return ImageFailure("image not found", f"{ref.image_path}: {e}")
            return None
        if not ref.image_shard:
            return ImageFailure("no image", "the sample has no image_path or image_shard (not downloaded?)")
        if ref.image_key is None:
            return ImageFailure("image not found", f"{ref.image_shard}: no image_key")
        got = self._members(ref.image_shard)
        if isinstance(got, ImageFailure):
            return got
        key = str(ref.image_key)
        if isinstance(got, tuple):
            n, keys = got
            if key.startswith("#") and key[1:].isdigit():
                return None if int(key[1:]) < n else ImageFailure("image not found", f"{ref.image_shard}: no row {key}")
            if not keys:
                return ImageFailure("unreadable shard", f"{Path(ref.image_shard).name}: no key column; use image_key '#<row>'")
            return None if key in keys else ImageFailure("image not found", f"{Path(ref.image_shard).name}: no image for key {key}")
        return None if key in got else ImageFailure("image not found",
                                                    f"{Path(ref.image_shard).name}: no image member for key {key}")


def verify(refs: list[ImageRef], reencode: bool) -> list[ImageFailure | None]:
    """Read and decode every image (a writer process runs this for ``verify_images``):
    None for a good one, else its failure (``undecodable``; ``unsupported format`` for a
    decodable image open_clip cannot read from a tar, unless it is to be re-encoded)."""
    out: list[ImageFailure | None] = []
    for got in read_images(refs):
        if isinstance(got, ImageFailure):
            out.append(got)
            continue
        try:
            decode(got)
        except ValueError as e:
            out.append(ImageFailure("undecodable", str(e)[:300]))
            continue
        if image_ext(got) is None and not reencode:
            out.append(ImageFailure("unsupported format", "not JPEG, PNG or WebP (re-encode with --reencode jpeg)"))
        else:
            out.append(None)
    return out


__all__ = ["REASONS", "Locator", "copies", "image_ext", "shuffled", "verify"]
