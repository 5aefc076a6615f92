"""Small helpers the JSON-shaped readers (CapsFusion, COCO, GBC, LaCLIP) share: whole-document
and line-by-line JSON reading with one-line errors, typed field access that raises
:class:`BadRecord` (a reject with a reason), :class:`ImageRoot`, which resolves an input's
image paths and refuses those that leave its root, and :class:`Collected`, which gathers
sample rows, long captions and rejects as Arrow tables and turns them into a :class:`Prepared`.

JSON nested deeper than :data:`MAX_JSON_DEPTH` arrays/objects is refused: a whole
document with one :class:`InputError`, a JSONL line as a ``too deeply nested`` reject.
Python's parser would otherwise raise ``RecursionError`` (at about 1,000 levels, fewer
the deeper the caller's stack), and values just under that limit would fail later, in
``json.dumps``; a fixed limit far above any real record makes the outcome the same
everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import InputError
from .core import Prepared

#: Arrays/objects nested deeper than this are refused (``{}`` is 1 level, ``{"a": [1]}`` 2).
#: Real records nest a few levels (a GBC graph 7); Python's parser gives up near 1,000.
MAX_JSON_DEPTH = 100


class _TooDeep(Exception):
    pass


def _parse(text: str) -> Any:
    """``json.loads`` that raises :class:`_TooDeep` for nesting beyond :data:`MAX_JSON_DEPTH`."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _TooDeep from None
    if json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise _TooDeep
    return value


def json_depth(value: Any, limit: int | None = None) -> int:
    """How many arrays/objects deep ``value`` nests (a scalar is 0), without recursion;
    with ``limit``, stops as soon as the depth exceeds it (and returns ``limit + 1``).
    Level by level: a third of the time ``json.loads`` took on COCO val2017's captions."""
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if limit is not None and depth > limit:
            return limit + 1
        deeper = []
        for v in level:
            for child in (v.values() if isinstance(v, dict) else v):
                if isinstance(child, (dict, list)):
                    deeper.append(child)
        level = deeper
    return depth


def read_json_document(path: Path) -> Any:
    """Parse a whole JSON file. Not UTF-8, not JSON or nested deeper than
    :data:`MAX_JSON_DEPTH` is an :class:`InputError` naming the file."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path.name} is not valid UTF-8 (invalid byte at offset {e.start}); nothing was written") from None
    del data
    try:
        return _parse(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path.name} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); nothing was written"
        ) from None
    except _TooDeep:
        raise InputError(f"{path.name} nests arrays/objects more than {MAX_JSON_DEPTH} levels deep; "
                         "nothing was written") from None


def iter_text_lines(path: Path) -> Iterator[tuple[int, str | None, tuple[str, str, str] | None]]:
    """Yield ``(line number, text, None)`` per non-blank line, or ``(line, None, ("not UTF-8",
    detail, record))`` for a line that does not decode. A UTF-8 byte-order mark at the
    start of the file is dropped."""
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, start=1):
            raw = raw.rstrip(b"\r\n")
            if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark (Windows editors write one) is not data
            if not raw.strip():
                continue
            try:
                yield i, raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield i, None, ("not UTF-8", f"invalid byte at position {e.start}", raw[:1000].decode("utf-8", "replace"))


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any, tuple[str, str, str] | None]]:
    """Yield ``(line number, value, None)`` per JSONL line, or ``(line, None, (reason, detail,
    record))`` for a line that is not UTF-8, not JSON (``malformed JSON``) or nested more than
    :data:`MAX_JSON_DEPTH` levels (``too deeply nested``). Blank lines are skipped."""
    for i, text, bad in iter_text_lines(path):
        if bad is not None:
            yield i, None, bad
            continue
        assert text is not None  # iter_text_lines gives text exactly when there is no problem
        try:
            value = _parse(text)
        except json.JSONDecodeError as e:
            yield i, None, ("malformed JSON", f"line is not valid JSON ({e.msg}, column {e.colno})", text[:1000])
        except _TooDeep:
            yield i, None, ("too deeply nested", f"line nests arrays/objects more than {MAX_JSON_DEPTH} levels deep",
                            text[:1000])
        else:
            yield i, value, None


def input_file(path: str | Path, what: str = "input") -> Path:
    """``path`` as a Path, or an :class:`InputError` when it is missing or not a file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    if not p.is_file():
        raise InputError(f"{what} {p} is not a file")
    return p


class ImageRoot:
    """The folder an input's image paths are relative to, and the check that keeps them in it.

    :meth:`path` joins a relative path to the root and normalises it (``a/../b`` is
    ``b``); the result must lie strictly inside the root, else the record is rejected
    (``image path escapes the input root``). An absolute path is taken only when it lies
    inside the root (named as given or with its symlinks resolved). The check is on the
    path's text, not on the file system: the file need not exist (images may be fetched
    later), and a symlink *inside* the root is followed wherever it points, since whoever
    owns the root put it there (dataset caches such as Hugging Face's link every file to a
    blob store elsewhere). The stored ``image_path`` is the absolute, normalised path.
    """

    def __init__(self, root: str | Path):
        self.root = os.path.abspath(root)
        self.real = os.path.realpath(root)

    @classmethod
    def of(cls, image_root: str | Path | None, input_path: Path) -> ImageRoot:
        """The reader option ``image_root`` (an existing folder), else the input file's folder."""
        if image_root is None:
            return cls(input_path.parent)
        p = Path(image_root)
        if not p.is_dir():
            raise InputError(f"image_root {p} is not a folder" if p.exists() else f"image_root {p} does not exist")
        return cls(p)

    def _inside(self, path: str) -> bool:
        return any(path.startswith(base.rstrip(os.sep) + os.sep) for base in (self.root, self.real))

    def path(self, value: str, key: str) -> str:
        """``value`` (the record's ``key``) resolved against the root; :class:`BadRecord` if
        it is empty, has a NUL character, names the root itself or leaves it."""
        if not value.strip():
            raise BadRecord("bad image path", f"{key} is empty")
        if "\x00" in value:
            raise BadRecord("bad image path", f"{key} {value[:200]!r} contains a NUL character")
        resolved = os.path.normpath(os.path.join(self.root, value))  # join keeps an absolute value as is
        if not self._inside(resolved):
            if resolved in (self.root, self.real):
                raise BadRecord("bad image path", f"{key} {value[:200]!r} names the image root {self.root} itself")
            raise BadRecord("image path escapes the input root",
                            f"{key} {value[:200]!r} resolves to {resolved[:300]}, outside {self.root}")
        return resolved


def _first_char(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1].decode("ascii", "replace")


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def dump_record(value: Any) -> str:
    """A parsed record as compact JSON text (for fingerprints and reject records)."""
    return json.dumps(value, ensure_ascii=False)


CHUNK = 65_536
ROW_SCHEMA = pa.schema([
    ("row_ref", pa.string()), ("row_ord", pa.int64()), ("uid", pa.string()), ("url", pa.string()),
    ("image_path", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("extra", pa.string()),
])
LONG_SCHEMA = pa.schema([
    ("uid", pa.string()), ("row_ref", pa.string()), ("variant", pa.string()), ("text", pa.string()),
    ("generator", pa.string()), ("provenance", pa.string()),
])
#: ``whole``: the reject is a whole input record (counted as a row read and rejected), not
#: a part of one (a COCO annotation, a GBC vertex); NULL lets run_ingest decide by row_ref.
REJECT_SCHEMA = pa.schema([
    ("row_ref", pa.string()), ("reason", pa.string()), ("detail", pa.string()), ("record", pa.string()),
    ("whole", pa.bool_()),
])


class ArrowRows:
    """Append-only rows kept as Arrow record batches (compact, unlike lists of dicts)."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.pending: list[tuple[Any, ...]] = []
        self.batches: list[pa.RecordBatch] = []

    def add(self, *values: Any) -> None:
        self.pending.append(values)
        if len(self.pending) >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            cols = list(zip(*self.pending))
            self.batches.append(pa.record_batch([pa.array(c, f.type) for c, f in zip(cols, self.schema)], schema=self.schema))
            self.pending = []

    def table(self) -> pa.Table:
        self._flush()
        return pa.Table.from_batches(self.batches, schema=self.schema)


class Collected:
    """Samples, captions and rejects parsed in Python, handed to :func:`run_ingest` as Arrow.

    Every sample caption goes to the *long captions* relation. Repeated uids are rejected
    here (``duplicate row`` / ``duplicate id``, first kept) rather than by run_ingest, so a
    repeated record's captions are dropped with it; a caption repeating the same text in
    the same variant of one sample is rejected as ``duplicate caption`` (run_ingest would
    collapse it silently). Captions of a sample must follow its :meth:`row` call.
    """

    def __init__(self) -> None:
        self.rows = ArrowRows(ROW_SCHEMA)
        self.long = ArrowRows(LONG_SCHEMA)
        self.rejects = ArrowRows(REJECT_SCHEMA)
        self._uids: dict[str, tuple[str, bytes]] = {}
        self._texts: dict[tuple[str, str], str] = {}  # (variant, text md5) -> row_ref, of the current sample
        self._ord = 0

    def reject(self, row_ref: str, reason: str, detail: str | None = None, record: str | None = None,
               whole: bool | None = None) -> None:
        """Record a reject; ``whole`` says whether it is a whole input record (None: decided
        by run_ingest from its row_ref)."""
        self.rejects.add(row_ref, reason, detail, None if record is None else record[:1000], whole)

    def row(self, row_ref: str, uid: str, fingerprint: str, url: str | None = None, image_path: str | None = None,
            width: int | None = None, height: int | None = None, extra: dict[str, Any] | None = None) -> bool:
        """Add a sample; False (and a reject) when its uid already came in this input."""
        fp = hashlib.md5(fingerprint.encode("utf-8")).digest()
        first = self._uids.get(uid)
        if first is not None:
            reason = "duplicate row" if first[1] == fp else "duplicate id"
            self.reject(row_ref, reason, f"same uid as {first[0]}", fingerprint)
            return False
        self._uids[uid] = (row_ref, fp)
        self._texts = {}
        self._ord += 1
        self.rows.add(row_ref, self._ord, uid, url, image_path, width, height,
                      json.dumps(extra, ensure_ascii=False) if extra else None)
        return True

    def caption(self, uid: str, row_ref: str, variant: str, text: Any, generator: str | None,
                provenance: dict[str, Any] | None, what: str = "caption") -> None:
        """Add a caption; a non-string (other than null, which run_ingest rejects) is ``wrong type``."""
        if text is not None and not isinstance(text, str):
            self.reject(row_ref, "wrong type", f"{what} is {json_type(text)}, expected a string (variant {variant})",
                        dump_record(text), whole=False)  # a caption of a sample, not a record
            return
        if text is not None:
            key = (variant, hashlib.md5(text.encode("utf-8")).hexdigest())
            if key in self._texts:
                self.reject(row_ref, "duplicate caption", f"same {variant} text as {self._texts[key]}", text, whole=False)
                return
            self._texts[key] = row_ref
        prov = json.dumps(provenance, ensure_ascii=False) if provenance else None
        self.long.add(uid, row_ref, variant, text, generator, prov)

    def plan(self, fmt: str, source: str, config: dict[str, Any], records_in: int | None = None) -> Prepared:
        """``records_in``: the records the reader went through, its own rejects included."""
        p = f"_curate_{fmt}"
        return Prepared(
            records_in=records_in,
            fmt=fmt, source=source, config=config,
            rows_sql=(
                "SELECT row_ref, row_ord, uid::UUID AS uid, url, NULL::VARCHAR AS image_shard, "
                "NULL::VARCHAR AS image_key, image_path, NULL::VARCHAR AS sha256, width, height, "
                f"extra::JSON AS extra FROM {p}_rows"
            ),
            long_captions_sql=(
                f"SELECT uid::UUID AS uid, row_ref, variant, text, generator, provenance::JSON AS provenance FROM {p}_long"
            ),
            reader_rejects_sql=f"SELECT row_ref, reason, detail, record, whole FROM {p}_rejects",
            register={f"{p}_rows": self.rows.table(), f"{p}_long": self.long.table(),
                      f"{p}_rejects": self.rejects.table()},
        )


def field(obj: dict[str, Any], key: str, kinds: type | tuple[type, ...], required: bool = True) -> Any:
    """``obj[key]`` checked against ``kinds``; raises :class:`BadRecord` (``missing key`` or
    ``wrong type``). An absent or null optional key gives None."""
    value = obj.get(key)
    if value is None:
        if required:
            raise BadRecord("missing key", f"no {key!r}" if key not in obj else f"{key!r} is null")
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
        names = " or ".join(json_type(k()) for k in _tuple(kinds))
        raise BadRecord("wrong type", f"{key!r} is {json_type(value)}, expected {names}")
    return value


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


class BadRecord(Exception):
    """A record (or part of one) to reject: ``reason`` is the fixed phrase, ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str, record: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.record = record


__all__ = ["read_json_document", "iter_json_lines", "Collected", "ImageRoot", "MAX_JSON_DEPTH",
           "ArrowRows", "BadRecord", "field", "json_type", "json_depth", "dump_record", "input_file"]
