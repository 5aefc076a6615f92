"""Writing one shard: a webdataset tar, byte for byte a function of its plan.

A shard task (:class:`ShardTask`) carries its samples (:class:`Entry`) and what shapes
their bytes (:class:`Encoding`). :func:`write_shard` runs in a writer process:

1. If ``NNNNN.tar`` and ``NNNNN_stats.json`` exist, the stats name this task's plan
   hash and the tar's sha256 matches, the shard is kept (a resumed run verifies what
   an earlier run finished).
2. Otherwise the tar is written to ``.NNNNN.tar.partial`` (POSIX ustar headers with
   mode 0644, uid/gid 0, mtime 0 and no user names, so the bytes depend on the samples
   only), fsynced and renamed; then the stats file is written the same way. A run
   killed at any point leaves either a finished shard or one that is rewritten.

Each sample is three members, ``{key}.{jpg|png|webp}`` (the stored bytes, unless
re-encoding is asked), ``{key}.txt`` (the drawn caption, UTF-8) and ``{key}.json``.
Images are read with :func:`curate.images.read_images`, a chunk of samples at a time,
so a writer holds at most one chunk of images. An image that cannot be read now (gone
since the plan, or undecodable when re-encoding) leaves its sample out, counted by
reason in the stats; the shard is then that much shorter, and ``sizes.json`` says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from ..images import ImageFailure, ImageRef, decode, read_images
from .captions import Candidate, draw, slot_keys, slot_layout
from .plan import image_ext

#: samples whose images are read together (bounds a writer's memory)
CHUNK = 256
_BLOCK = 512


class Entry(NamedTuple):
    """One sample of a shard: a copy of a manifest row."""

    uid: str
    copy: int
    source: str | None
    weight: float
    image_path: str | None
    image_shard: str | None
    image_key: str | None
    caption: str              # the manifest's drawn caption (copy 0, epoch 0)
    variant: str | None
    cands: tuple[Candidate, ...]

    @property
    def key(self) -> str:
        return f"{self.uid}-{self.copy}"

    @property
    def image(self) -> ImageRef:
        return ImageRef(self.image_path, self.image_shard, self.image_key)


#: an entry as sent to a writer process: plain tuples (pickling named tuples or
#: dataclasses costs 8-25 times as much per sample)
Wire = tuple[Any, ...]


def pack(e: Entry) -> Wire:
    return (*e[:-1], tuple(tuple(c) for c in e.cands))


def unpack(w: Wire) -> Entry:
    return Entry._make((*w[:-1], tuple(Candidate._make(c) for c in w[-1])))


@dataclass(frozen=True)
class Encoding:
    """What shapes the bytes of every sample, besides the sample."""

    seed: int
    caption_epoch: int = 0
    slots: int = 1
    reencode: str | None = None
    max_size: int | None = None
    jpeg_quality: int = 90
    verify_images: bool = False


@dataclass(frozen=True)
class ShardTask:
    index: int
    name: str              # "00000"
    folder: str
    entries: tuple[Wire, ...]   # packed entries (:func:`pack`)
    encoding: Encoding
    plan: str              # the plan hash: sha256 of the entries and encoding
    fingerprint: str       # the run's (manifest, options) fingerprint


def plan_hash(entries: tuple[Wire, ...], enc: Encoding) -> str:
    """sha256 of everything a shard's bytes are made from: the encoding and the packed
    entries (their reprs: plain tuples of strings and numbers)."""
    h = hashlib.sha256(repr(dataclasses.astuple(enc)).encode())
    for w in entries:
        h.update(repr(w).encode())
    return h.hexdigest()


def _template() -> bytes:
    head = bytearray(_BLOCK)
    head[100:108] = b"0000644\0"      # mode
    head[108:116] = b"0000000\0"      # uid
    head[116:124] = b"0000000\0"      # gid
    head[136:148] = b"00000000000\0"  # mtime
    head[148:156] = b" " * 8          # the checksum field counts as spaces
    head[156:157] = b"0"              # a regular file
    head[257:265] = b"ustar\x0000"    # POSIX ustar, version 00
    return bytes(head)


_TEMPLATE = _template()
_TEMPLATE_SUM = sum(_TEMPLATE)


def tar_header(name: str, size: int) -> bytes:
    """A ustar header of a regular file ``name`` (at most 100 bytes) with fixed metadata:
    mode 0644, uid/gid 0, mtime 0, no user or group names."""
    raw = name.encode()
    if len(raw) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name}")
    sz = b"%011o\0" % size
    head = bytearray(_TEMPLATE)
    head[:len(raw)] = raw
    head[124:136] = sz
    head[148:156] = b"%06o\0 " % (_TEMPLATE_SUM + sum(raw) + sum(sz))
    return bytes(head)


def member(name: str, data: bytes) -> bytes:
    """A member's header, data and padding to the next 512-byte block."""
    return b"".join((tar_header(name, len(data)), data, b"\0" * (-len(data) % _BLOCK)))


class TarOut:
    """Appends members to a binary file and hashes what it writes."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b: bytes) -> None:
        self.f.write(b)
        self.sha.update(b)
        self.size += len(b)

    def add(self, *members: tuple[str, bytes]) -> None:
        """Append members (one write for all of them: a sample's three)."""
        self.write(b"".join(member(name, data) for name, data in members))

    def close(self) -> None:
        """The end-of-archive marker: two zero blocks."""
        self.write(b"\0" * (2 * _BLOCK))


def _reencode(data: bytes, enc: Encoding) -> bytes | ImageFailure:
    """JPEG bytes at most ``max_size`` pixels on the longer side. A JPEG already within
    the size is kept as it is (re-encoding it would only lose quality)."""
    from PIL import Image

    if image_ext(data) == "jpg":
        if enc.max_size is None:
            return data
        try:
            with Image.open(io.BytesIO(data)) as im:  # the header only: no decode
                if max(im.size) <= enc.max_size:
                    return data
        except Exception:  # noqa: BLE001 - decode() below reports it as undecodable
            pass
    try:
        img = decode(data)
    except ValueError as e:
        return ImageFailure("undecodable", str(e)[:300])
    if enc.max_size is not None and max(img.size) > enc.max_size:
        s = enc.max_size / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=enc.jpeg_quality)
    return buf.getvalue()


def sample_json(e: Entry, text: str, variant: str | None, enc: Encoding) -> bytes:
    doc: dict[str, Any] = {"uid": e.uid, "key": e.key, "copy": e.copy, "source": e.source, "weight": e.weight,
                           "caption": text, "variant": variant,
                           "captions": [{"variant": c.variant, "text": c.text, "prob": c.prob} for c in e.cands]}
    doc.update(zip(slot_keys(enc.slots), slot_layout(e.cands, enc.slots)))
    return json.dumps(doc, ensure_ascii=False).encode()


def caption_of(e: Entry, enc: Encoding) -> tuple[str, str | None]:
    """The ``.txt`` caption and its variant: the manifest's own draw for copy 0 of epoch
    0, a seeded draw (:func:`curate.shards.captions.draw`) for every other (copy, epoch)."""
    if e.copy == 0 and enc.caption_epoch == 0:
        return e.caption, e.variant
    c = draw(e.cands, enc.seed, e.uid, e.copy, enc.caption_epoch)
    return c.text, c.variant


def _atomic_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def kept(task: ShardTask) -> dict[str, Any] | None:
    """The stats of the shard if a finished shard of this very plan is on disk."""
    folder = Path(task.folder)
    tar, stats = folder / f"{task.name}.tar", folder / f"{task.name}_stats.json"
    if not (tar.is_file() and stats.is_file()):
        return None
    try:
        doc = json.loads(stats.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("plan") != task.plan or doc.get("bytes") != tar.stat().st_size:
        return None
    if doc.get("sha256") != _sha256(tar):
        return None
    return doc


def write_shard(task: ShardTask) -> dict[str, Any]:
    """Keep the shard if it is finished and verified, else write it; its stats (with
    ``kept``)."""
    done = kept(task)
    if done is not None:
        return {**done, "kept": True}
    folder = Path(task.folder)
    enc = task.encoding
    failed: dict[str, int] = {}
    variants: dict[str, int] = {}
    n = 0
    partial = folder / f".{task.name}.tar.partial"
    with partial.open("wb") as f:
        out = TarOut(f)
        entries = [unpack(w) for w in task.entries]
        for start in range(0, len(entries), CHUNK):
            chunk = entries[start:start + CHUNK]
            images = read_images([e.image for e in chunk])
            for e, got in zip(chunk, images):
                data: bytes | ImageFailure = got
                if isinstance(data, bytes) and enc.reencode:
                    data = _reencode(data, enc)
                ext = image_ext(data) if isinstance(data, bytes) else None
                if isinstance(data, bytes) and ext is None:
                    data = ImageFailure("unsupported format", "not JPEG, PNG or WebP")
                if isinstance(data, ImageFailure):
                    failed[data.reason] = failed.get(data.reason, 0) + 1
                    continue
                text, variant = caption_of(e, enc)
                out.add((f"{e.key}.{ext}", data), (f"{e.key}.txt", text.encode()),
                        (f"{e.key}.json", sample_json(e, text, variant, enc)))
                variants[variant or ""] = variants.get(variant or "", 0) + 1
                n += 1
        out.close()
        f.flush()
        os.fsync(f.fileno())
    tar = folder / f"{task.name}.tar"
    os.replace(partial, tar)
    stats = {"shard": f"{task.name}.tar", "count": len(task.entries), "successes": n,
             "failed": dict(sorted(failed.items())), "txt_variants": dict(sorted(variants.items())), "bytes": out.size, "sha256": out.sha.hexdigest(),
             "plan": task.plan, "fingerprint": task.fingerprint}
    _atomic_json(folder / f"{task.name}_stats.json", stats)
    return {**stats, "kept": False}


__all__ = ["CHUNK", "Encoding", "Entry", "ShardTask", "TarOut", "caption_of", "kept", "plan_hash", "sample_json",
           "member", "pack", "tar_header", "unpack", "write_shard"]
