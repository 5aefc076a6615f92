"""Reading a training manifest (:mod:`curate.mix.manifest`) as rows to shard, in its order.

Accepted formats, told by their columns (not their names):

* ``parquet`` / ``jsonl``: ``uid`` and ``caption`` are required; ``source``,
  ``weight``, ``variant``, ``image_path``, ``image_shard``, ``image_key`` and the
  ``captions`` candidate list (``{variant, text, prob}``, with ``candidates = true``)
  are read when present. Without ``captions`` the sample's one caption is ``caption``.
* ``json`` (``*.samples.jsonl``): one key per candidate plus ``caption_probs``. It has
  ``image_path`` but no ``image_shard``/``image_key``, so those are read from the
  store's ``samples`` by uid (a store is required). A key ``rewrite_2`` is a second
  caption of the variant ``rewrite``.

``csv``/``tsv`` (no uid) and ``npy`` (uids only: use DataComp's ``resharder.py``) are
refused with a one-line error. Rows come back in manifest order, in batches, so memory
stays bounded by the batch size; uids are 32 lower-case hex digits.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from ..errors import ConfigError, InputError
from .captions import Candidate

FIXED_JSON_KEYS = ("uid", "source", "url", "image_path", "image_shard", "image_key", "caption", "caption_id",
                   "variant", "weight", "caption_probs")
#: the caption slots c0..c{K-1} the json manifest writes for open_clip main's sampler
_SLOT = re.compile(r"c\d+")
_HEX32 = re.compile(r"[0-9a-f]{32}")


class Row(NamedTuple):
    """One manifest row: the sample, where its image is, its captions."""

    ord: int
    uid: str
    source: str | None
    weight: float
    image_path: str | None
    image_shard: str | None
    image_key: str | None
    caption: str
    variant: str | None
    cands: tuple[Candidate, ...]


@dataclass(frozen=True)
class Manifest:
    path: Path
    format: str            # parquet | jsonl | json
    sha256: str
    columns: tuple[str, ...]
    sidecar: dict[str, Any] | None
    json_keys: tuple[str, ...] = ()

    @property
    def needs_store(self) -> bool:
        return "image_shard" not in self.columns

    @property
    def policy_hash(self) -> str | None:
        return (self.sidecar or {}).get("policy_hash")

    @property
    def seed(self) -> int | None:
        seed = (self.sidecar or {}).get("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _scan(path: Path, fmt: str) -> str:
    if fmt == "parquet":
        return f"read_parquet({_q(str(path))})"
    return f"read_json({_q(str(path))}, format = 'newline_delimited', sample_size = -1)"


def open_manifest(path: str | Path) -> Manifest:
    """Check the manifest file and tell its format; :class:`InputError` if it is not one
    :mod:`curate.shards` can read."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"manifest {p} does not exist")
    name = p.name.lower()
    if name.endswith((".csv", ".tsv")):
        raise InputError(f"{p.name}: a {name[-3:]} manifest has no uid; write the policy's manifest as parquet "
                         "(candidates = true for every caption) or jsonl")
    if name.endswith(".npy"):
        raise InputError(f"{p.name}: an npy manifest holds uids only; shard it from the pool with DataComp's "
                         "resharder.py, or write the manifest as parquet")
    fmt = "parquet" if name.endswith(".parquet") else "jsonl" if name.endswith((".jsonl", ".json")) else ""
    if not fmt:
        raise InputError(f"{p.name}: expected a .parquet, .jsonl or .samples.jsonl manifest")
    con = duckdb.connect()
    try:
        cols = con.execute(f"DESCRIBE SELECT * FROM {_scan(p, fmt)}").fetchall()
    except duckdb.Error as e:
        raise InputError(f"{p.name}: cannot be read as {fmt}: {' '.join(str(e).split())[:300]}") from None
    finally:
        con.close()
    names = tuple(c[0] for c in cols)
    types = {c[0]: c[1] for c in cols}
    for need in ("uid", "caption"):
        if need not in names:
            raise InputError(f"{p.name}: no {need!r} column; the columns are {', '.join(names)} "
                             "(a curate mix manifest in parquet, jsonl or json format is expected)")
    keys: tuple[str, ...] = ()
    if "caption_probs" in names:
        fmt = "json"
        t = types["caption_probs"]
        if not t.startswith("STRUCT("):
            raise InputError(f"{p.name}: caption_probs must be an object of key -> probability, got {t}")
        keys = tuple(k for k in names if k not in FIXED_JSON_KEYS and not _SLOT.fullmatch(k))
    side_path = p.with_name(p.name + ".sidecar.json")
    sidecar = None
    if side_path.is_file():
        try:
            sidecar = json.loads(side_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{side_path.name}: not JSON ({e})") from None
        if not isinstance(sidecar, dict):
            raise InputError(f"{side_path.name}: expected a JSON object")
    return Manifest(p, fmt, sha256_file(p), names, sidecar, keys)


def _variant_of(key: str, keys: tuple[str, ...]) -> str:
    m = re.fullmatch(r"(.+)_(\d+)", key)
    return m.group(1) if m and m.group(1) in keys and int(m.group(2)) >= 2 else key


def _col(m: Manifest, name: str, default: str = "NULL") -> str:
    return f"m.{_ident(name)}" if name in m.columns else default


def rows_sql(m: Manifest, store_samples: bool) -> tuple[str, str]:
    """(setup SQL or "", the SQL of the normalised rows in manifest order: uid, source,
    weight, caption, variant, cands, image_path, image_shard, image_key). A plain scan
    keeps the file's order (DuckDB preserves insertion order); the store join sorts by
    the manifest's row id."""
    uid = "lower(replace(m.uid::VARCHAR, '-', ''))"
    if m.format == "json":
        items = ", ".join(f"struct_pack(variant := {_q(_variant_of(k, m.json_keys))}, text := m.{_ident(k)}::VARCHAR, "
                          f"prob := (m.caption_probs.{_ident(k)})::DOUBLE)" for k in m.json_keys)
        cands = f"list_filter([{items}], lambda x: x.text IS NOT NULL AND x.prob > 0)" if items else "[]"
    elif "captions" in m.columns:
        cands = ("list_transform(m.captions, lambda x: struct_pack(variant := x.variant::VARCHAR, text := x.text::VARCHAR, "
                 "prob := x.prob::DOUBLE))")
    else:
        cands = ("[struct_pack(variant := coalesce(" + _col(m, "variant") + "::VARCHAR, ''), "
                 "text := m.caption::VARCHAR, prob := 1.0::DOUBLE)]")
    cols = (f"{uid} AS uid, {_col(m, 'source')}::VARCHAR AS source, {_col(m, 'weight')}::DOUBLE AS weight, "
            f"{_col(m, 'caption')}::VARCHAR AS caption, {_col(m, 'variant')}::VARCHAR AS variant, {cands} AS cands")
    scan = _scan(m.path, "parquet" if m.format == "parquet" else "jsonl")
    if not m.needs_store:
        sql = (f"SELECT {cols}, {_col(m, 'image_path')}::VARCHAR AS image_path, "
               f"{_col(m, 'image_shard')}::VARCHAR AS image_shard, {_col(m, 'image_key')}::VARCHAR AS image_key "
               f"FROM {scan} m")
        return "", sql
    if not store_samples:
        raise ConfigError(f"{m.path.name}: this {m.format} manifest has no image_shard/image_key columns; give the "
                          "store it came from (--store) so they are read from its samples by uid")
    setup = f"CREATE OR REPLACE TEMP TABLE _shards_manifest AS SELECT * FROM {scan}"
    sql = (f"SELECT {cols}, coalesce({_col(m, 'image_path')}::VARCHAR, s.image_path) AS image_path, "
           "s.image_shard, s.image_key FROM _shards_manifest m "
           f"LEFT JOIN samples s ON s.uid = TRY_CAST({uid} AS UUID) ORDER BY m.rowid")
    return setup, sql


def _run(con: duckdb.DuckDBPyConnection, m: Manifest, sql: str) -> duckdb.DuckDBPyConnection:
    try:
        return con.execute(sql)
    except duckdb.Error as e:
        raise InputError(f"{m.path.name}: {' '.join(str(e).split())[:300]}") from None


def prepare(con: duckdb.DuckDBPyConnection, m: Manifest, store_samples: bool) -> tuple[duckdb.DuckDBPyConnection, str]:
    """(a cursor of ``con`` with the setup run on it, the rows SQL to run on that cursor:
    temporary tables belong to one cursor)."""
    setup, sql = rows_sql(m, store_samples)
    cur = con.cursor()
    if setup:
        _run(cur, m, setup)
    return cur, sql


def survey(con: duckdb.DuckDBPyConnection, m: Manifest, sql: str, factor: float | None,
           max_repeats: int) -> tuple[int, int, list[list[float]]]:
    """(rows, at most how many samples they become, the distinct candidate probability
    vectors): what names the shards and sizes the caption slots, without holding rows.
    ``factor`` None: one sample per row."""
    most = "count(*)" if factor is None else (
        f"sum(least(ceil(greatest(coalesce(weight, 1.0), 0.0) * {float(factor)!r}), {int(max_repeats)}))")
    n, upper = _run(con, m, f"SELECT count(*), coalesce({most}, 0) FROM ({sql})").fetchall()[0]
    vecs = _run(con, m, f"SELECT DISTINCT list_transform(cands, lambda x: x.prob) FROM ({sql})").fetchall()
    return int(n), int(upper), [list(v[0] or []) for v in vecs]


def iter_rows(con: duckdb.DuckDBPyConnection, m: Manifest, sql: str, batch_rows: int = 4096) -> Iterator[list[Row]]:
    """The rows in manifest order, ``batch_rows`` at a time (``con``: the cursor of
    :func:`prepare`, running nothing else meanwhile)."""
    try:
        reader = con.sql(sql).to_arrow_reader(batch_rows)
    except duckdb.Error as e:
        raise InputError(f"{m.path.name}: {' '.join(str(e).split())[:300]}") from None
    ord = 0
    for batch in reader:
        out = []
        for r in batch.to_pylist():
            ord += 1
            uid = r["uid"] or ""
            where = f"{m.path.name} row {ord}"
            if not _HEX32.fullmatch(uid):
                raise InputError(f"{where}: uid {uid!r} is not 32 hex digits")
            w = 1.0 if r["weight"] is None else float(r["weight"])
            if not (w >= 0 and w < float("inf")):
                raise InputError(f"{where}: weight {w!r} is not a finite number of 0 or more")
            cands = tuple(Candidate(c["variant"] or "", c["text"], float(c["prob"]))
                          for c in (r["cands"] or []) if c["text"] is not None and (c["prob"] or 0) > 0)
            caption = r["caption"]
            if not cands and caption is not None:
                cands = (Candidate(r["variant"] or "", caption, 1.0),)
            if not cands:
                raise InputError(f"{where}: uid {uid} has no caption")
            out.append(Row(ord - 1, uid, r["source"], w, r["image_path"] or None, r["image_shard"] or None,
                           r["image_key"], caption if caption is not None else cands[0].text, r["variant"], cands))
        yield out


__all__ = ["Manifest", "Row", "iter_rows", "open_manifest", "prepare", "rows_sql", "sha256_file", "survey"]
