"""Importing and exporting embedding sets in other tools' layouts: clip-retrieval
embedding folders (:func:`import_clip_retrieval`, :func:`export_clip_retrieval`) and
DataComp embedding shards (:func:`import_datacomp`, :func:`export_datacomp`). Store ids
are found through the metadata's uid, url or img2dataset key; every write goes through
:func:`curate.vectors.write.write_set`."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, InputError
from ..store import Store
from .read import EMB_DIR, open_set
from .write import DEFAULT_SHARD_ROWS, Block, WriteResult, write_set


def _numbered(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    out = {}
    for p in folder.glob(f"{prefix}_*{suffix}"):
        m = re.fullmatch(rf"{re.escape(prefix)}_(\d+){re.escape(suffix)}", p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def _map_ids(store: Store, meta: pa.Table, kind: str, match: str, variant: str | None,
             caption_col: str | None) -> tuple[np.ndarray, pa.Array, list[tuple[int, str]]]:
    """Map metadata rows to store ids. Returns (row numbers kept, ids, [(row, reason)])."""
    n = meta.num_rows
    cols: dict[str, Any] = {"_row": pa.array(np.arange(n, dtype=np.int64))}
    cols["_key"] = meta.column(match).cast(pa.string())
    if kind == "text":
        cols["_text"] = meta.column(caption_col).cast(pa.string())
    cur = store.con.cursor()
    try:
        cur.register("_curate_vec_meta", pa.table(cols))
        if match == "uid":
            sample = ("SELECT m._row, s.uid, count(*) OVER (PARTITION BY m._row) AS n FROM _curate_vec_meta m "
                      "JOIN samples s ON s.uid = TRY_CAST(m._key AS UUID)")
        else:
            col = {"url": "url", "key": "image_key"}[match]
            sample = (f"SELECT m._row, s.uid, count(*) OVER (PARTITION BY m._row) AS n FROM _curate_vec_meta m "
                      f"JOIN samples s ON s.{col} = m._key")
        if kind == "image":
            sql = f"SELECT _row, uid::VARCHAR AS id, n FROM ({sample}) ORDER BY _row"
        else:
            sql = (f"WITH s AS ({sample}) SELECT s._row, c.caption_id::VARCHAR AS id, s.n * count(*) OVER "
                   f"(PARTITION BY s._row) AS n FROM s JOIN _curate_vec_meta m USING (_row) "
                   f"JOIN captions c ON c.uid = s.uid AND c.variant = $variant AND "
                   f"(m._text IS NULL OR c.text = m._text) ORDER BY s._row")
        rows = cur.execute(sql, {"variant": variant} if kind == "text" else None).fetchall()
    finally:
        cur.unregister("_curate_vec_meta")
        cur.close()
    found: dict[int, list[str]] = {}
    for r, i, _ in rows:
        found.setdefault(r, []).append(i)
    keep, ids, bad = [], [], []
    what = "sample" if kind == "image" else f"{variant} caption"
    for r in range(n):
        got = found.get(r)
        if not got:
            bad.append((r, f"no matching {what}"))
        elif len(set(got)) > 1:
            bad.append((r, f"ambiguous {match}"))
        else:
            keep.append(r)
            ids.append(got[0])
    return np.asarray(keep, dtype=np.int64), pa.array(ids, pa.string()), bad


_MATCH_COLUMNS: tuple[Literal["uid", "url", "key"], ...] = ("uid", "url", "key")  # the order match='auto' tries


def import_clip_retrieval(store: Store, name: str, folder: str | os.PathLike[str], *,
                          kind: Literal["image", "text"] = "image",
                          match: Literal["auto", "uid", "url", "key"] = "auto", variant: str = "raw",
                          caption_col: str = "caption", model: str | None = None,
                          on_bad: Literal["error", "quarantine"] = "quarantine", replace: bool = False,
                          normalise: Literal["auto", "error"] = "auto",
                          shard_rows: int = DEFAULT_SHARD_ROWS) -> WriteResult:
    """Import a clip-retrieval embedding folder (``img_emb/img_emb_<i>.npy`` or
    ``text_emb/text_emb_<i>.npy`` with ``metadata/metadata_<i>.parquet``).

    Rows are mapped to store ids through a metadata column: ``uid`` (a store uid, or a
    32-hex DataComp uid), ``url`` (``samples.url``) or ``key`` (img2dataset's key,
    ``samples.image_key``); ``auto`` takes the first of these the metadata has. Text
    vectors become the ``caption_id`` of the sample's caption of ``variant`` whose text
    equals ``caption_col`` (or the only one of that variant when the column is absent).
    Rows that match nothing or more than one id are rejects (``no matching sample``,
    ``ambiguous url``, ...): quarantined by default, ``on_bad='error'`` to fail instead."""
    folder = Path(folder)
    if kind not in ("image", "text"):
        raise ConfigError(f"kind must be image or text, got {kind!r}")
    sub = EMB_DIR[kind]
    embs = _numbered(folder / sub, sub, ".npy")
    metas = _numbered(folder / "metadata", "metadata", ".parquet")
    if not embs:
        raise InputError(f"{folder}: no {sub}/{sub}_<i>.npy files (a clip-retrieval embedding folder has "
                         f"img_emb/, text_emb/ and metadata/)")
    missing = sorted(set(embs) - set(metas))
    if missing:
        raise InputError(f"{folder}: {sub}_{missing[0]}.npy has no metadata/metadata_{missing[0]}.parquet")
    first_cols = pq.read_schema(metas[min(embs)]).names
    if match == "auto":
        found = next((c for c in _MATCH_COLUMNS if c in first_cols), None)
        if found is None:
            raise InputError(f"{metas[min(embs)]}: no uid, url or key column to match samples by; "
                             f"columns: {', '.join(first_cols)}")
        match = found
    if match not in ("uid", "url", "key"):
        raise ConfigError(f"match must be auto, uid, url or key, got {match!r}")
    for i in sorted(embs):  # validate every shard before any work
        try:
            shape = np.load(embs[i], mmap_mode="r").shape
        except (OSError, ValueError) as e:
            raise InputError(f"{embs[i]}: not a readable .npy file ({e})") from None
        rows = pq.read_metadata(metas[i]).num_rows
        if len(shape) != 2 or shape[0] != rows:
            raise InputError(f"{embs[i]} has shape {shape} but {metas[i].name} has {rows:,} rows; "
                             "they must be in the same row order, one row per vector")
        if match not in pq.read_schema(metas[i]).names:
            raise InputError(f"{metas[i]}: no {match!r} column to match samples by")
    pre_rejects: list[tuple[str, str, str, str]] = []

    def blocks() -> Iterator[Block]:
        for i in sorted(embs):
            cols = [match] + ([caption_col] if kind == "text" and caption_col in pq.read_schema(metas[i]).names else [])
            meta = pq.read_table(metas[i], columns=cols)
            if kind == "text" and caption_col not in meta.column_names:
                meta = meta.append_column(caption_col, pa.nulls(meta.num_rows, pa.string()))
            keep, ids, bad = _map_ids(store, meta, kind, match, variant, caption_col)
            for r, reason in bad:
                rec = str(meta.column(match)[r].as_py())
                if on_bad == "error":
                    raise InputError(f"{embs[i].name}:{r}: {reason} ({match} {rec!r}); "
                                     f"{len(bad):,} such rows in this shard; use on_bad='quarantine' to skip them")
                pre_rejects.append((f"{embs[i].name}:{r}", reason, f"{match} {rec}", rec))
            arr = np.load(embs[i], mmap_mode="r")
            for s in range(0, len(keep), 65_536):
                k = keep[s:s + 65_536]
                yield Block(np.asarray(arr[k]), ids.slice(s, len(k)), [f"{embs[i].name}:{r}" for r in k])

    return write_set(store, name, blocks(), rejects=pre_rejects, kind=kind, model=model,
                               variant=variant if kind == "text" else None, on_bad=on_bad, replace=replace,
                               normalise=normalise, shard_rows=shard_rows,
                               source=f"clip-retrieval:{folder}", stage="vectors.import_clip_retrieval.v1",
                               config={"folder": str(folder), "match": match, "caption_col": caption_col})


DATACOMP_KEYS: dict[str, tuple[Literal["image", "text"], str]] = {
    "b32_img": ("image", "ViT-B-32/openai"), "b32_txt": ("text", "ViT-B-32/openai"),
    "l14_img": ("image", "ViT-L-14/openai"), "l14_txt": ("text", "ViT-L-14/openai")}


def import_datacomp(store: Store, name: str, npz: str | os.PathLike[str], uids: str | os.PathLike[str], *,
                    key: str = "l14_img", variant: str = "raw", uid_col: str = "uid",
                    on_bad: Literal["error", "quarantine"] = "quarantine", replace: bool = False,
                    normalise: Literal["auto", "error"] = "auto", shard_rows: int = DEFAULT_SHARD_ROWS) -> WriteResult:
    """Import one array of a DataComp embedding ``.npz`` (keys ``b32_img``, ``b32_txt``,
    ``l14_img``, ``l14_txt``) whose rows follow the ``uid`` column of the parquet
    ``uids`` (DataComp's metadata shard). Image keys map to ``samples.uid`` (the 32-hex
    uid is the UUID); text keys to the sample's caption of ``variant`` (DataComp embeds
    the alt-text: ``raw``), which must be unique per sample. Unmatched rows are rejects."""
    npz, uids = Path(npz), Path(uids)
    if key not in DATACOMP_KEYS:
        raise ConfigError(f"key must be one of {', '.join(DATACOMP_KEYS)}, got {key!r}")
    kind, model = DATACOMP_KEYS[key]
    try:
        with np.load(npz) as z:
            if key not in z.files:
                raise InputError(f"{npz}: no array {key!r}; it has {', '.join(z.files)}")
            arr = z[key]
    except (OSError, ValueError) as e:
        raise InputError(f"{npz}: not a readable .npz file ({e})") from None
    try:
        meta = pq.read_table(uids, columns=[uid_col])
    except (OSError, pa.ArrowInvalid, KeyError) as e:
        raise InputError(f"{uids}: cannot read column {uid_col!r} ({str(e).splitlines()[0]})") from None
    if arr.ndim != 2 or arr.shape[0] != meta.num_rows:
        raise InputError(f"{npz}[{key}] has shape {arr.shape} but {uids.name} has {meta.num_rows:,} uids; "
                         "they must be in the same row order")
    meta = meta.rename_columns(["uid"])
    if kind == "text":
        meta = meta.append_column("caption", pa.nulls(meta.num_rows, pa.string()))
    keep, ids, bad = _map_ids(store, meta, kind, "uid", variant, "caption")
    pre = []
    for r, reason in bad:
        rec = str(meta.column("uid")[r].as_py())
        if on_bad == "error":
            raise InputError(f"{npz.name}[{key}]:{r}: {reason} (uid {rec!r}); {len(bad):,} such rows; "
                             "use on_bad='quarantine' to skip them")
        pre.append((f"{npz.name}[{key}]:{r}", reason.replace("ambiguous uid", "ambiguous caption"), f"uid {rec}", rec))
    blocks = [Block(arr[keep], ids, [f"{npz.name}[{key}]:{r}" for r in keep])]
    return write_set(store, name, blocks, rejects=pre, kind=kind, model=model,
                     variant=variant if kind == "text" else None, on_bad=on_bad, replace=replace,
                     normalise=normalise, shard_rows=shard_rows, source=f"datacomp:{npz}[{key}]",
                     stage="vectors.import_datacomp.v1", config={"npz": str(npz), "uids": str(uids), "key": key})


def export_datacomp(store: Store, out: str | os.PathLike[str], sets: dict[str, str]) -> tuple[Path, Path, int]:
    """Write vector sets as one DataComp embedding shard: ``out`` (an ``.npz`` with one
    float16 array per key of :data:`DATACOMP_KEYS`, e.g. ``{"l14_img": "clip.x.image",
    "l14_txt": "clip.x.text.raw"}``) and, beside it, ``out`` with suffix ``.parquet``
    holding the ``uid`` column (32 hex digits, DataComp's form), ``url`` and ``text`` in
    the same row order, which is what :func:`import_datacomp` and DataComp's tooling read.

    Rows are the samples every given set covers, in ascending uid. A text set maps each
    caption to its sample; a sample with several captions in one text set is an error
    (export a set of one variant). Returns (npz path, parquet path, rows)."""
    if not sets:
        raise ConfigError("export_datacomp needs at least one KEY=SET (keys: " + ", ".join(DATACOMP_KEYS) + ")")
    out = Path(out)
    if out.suffix.lower() != ".npz":
        raise ConfigError(f"{out.name}: a DataComp shard is an .npz file")
    meta_path = out.with_suffix(".parquet")
    per_key: dict[str, tuple[np.ndarray, pa.Array]] = {}
    texts: dict[str, str] = {}
    cur = store.con.cursor()
    try:
        for key, name in sets.items():
            if key not in DATACOMP_KEYS:
                raise ConfigError(f"key must be one of {', '.join(DATACOMP_KEYS)}, got {key!r}")
            vs = open_set(store, name)
            want = DATACOMP_KEYS[key][0]
            if vs.kind != want:
                raise ConfigError(f"{key} holds {want} vectors, but set {name!r} holds {vs.kind} vectors")
            ids = vs.ids()
            if vs.kind == "text":
                cur.register("_curate_vec_ids", pa.table({"caption_id": ids, "_row": np.arange(len(ids))}))
                rows = cur.sql("SELECT c.uid::VARCHAR, c.text FROM _curate_vec_ids i JOIN captions c "
                               "ON c.caption_id = i.caption_id::UUID ORDER BY i._row").fetchall()
                cur.unregister("_curate_vec_ids")
                if len(rows) != len(ids):
                    raise ConfigError(f"set {name!r}: {len(ids) - len(rows):,} caption ids are not in the store")
                uids = [r[0] for r in rows]
                if len(set(uids)) != len(uids):
                    raise ConfigError(f"set {name!r} has several captions of one sample; DataComp keeps one text "
                                      "per sample: export a set of one variant")
                texts.update({u: t for u, t in rows})
                ids = pa.array(uids)
            per_key[key] = (vs.matrix(np.float16), ids)
        common = set.intersection(*(set(ids.to_pylist()) for _, ids in per_key.values()))
        order = sorted(common, key=lambda u: uuid.UUID(u).int)
        if not order:
            raise ConfigError("the given sets share no sample")
        arrays = {}
        for key, (mat, ids) in per_key.items():
            pos = {u: i for i, u in enumerate(ids.to_pylist())}
            arrays[key] = mat[[pos[u] for u in order]]
        cur.register("_curate_uids", pa.table({"uid": order, "_row": np.arange(len(order))}))
        meta = cur.sql("SELECT replace(i.uid, '-', '') AS uid, s.url FROM _curate_uids i "
                       "LEFT JOIN samples s ON s.uid = i.uid::UUID ORDER BY i._row").to_arrow_table()
        cur.unregister("_curate_uids")
    finally:
        cur.close()
    if texts:
        meta = meta.append_column("text", pa.array([texts.get(u) for u in order], pa.string()))
    out.parent.mkdir(parents=True, exist_ok=True)
    # allow_pickle=True is numpy's default, spelled out so that mypy does not match **arrays against it
    np.savez(out, allow_pickle=True, **arrays)
    pq.write_table(meta, meta_path)
    return out, meta_path, len(order)


def export_clip_retrieval(store: Store, name: str, out: str | os.PathLike[str]) -> Path:
    """Write the set as a clip-retrieval embedding folder: the float16 shards as they are,
    and ``metadata_<i>.parquet`` with the id column plus ``url`` and ``caption``
    (image sets: the sample's url and its smallest ``raw`` caption; text sets: the
    caption's text), so ``clip-retrieval index`` and :func:`import_clip_retrieval` read it."""
    vs = open_set(store, name)
    out = Path(out)
    sub = EMB_DIR[vs.kind]
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new folder")
    (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "metadata").mkdir(exist_ok=True)
    cur = store.con.cursor()
    try:
        for i, (emb, meta, _) in enumerate(vs.shards):
            shutil.copyfile(vs.path / emb, out / sub / f"{sub}_{i}.npy")
            ids = pq.read_table(vs.path / meta)
            cur.register("_curate_vec_ids", ids.append_column("_row", pa.array(np.arange(ids.num_rows))))
            if vs.kind == "image":
                sql = ("SELECT i.uid, s.url, (SELECT min(c.text) FROM captions c WHERE c.uid = s.uid AND "
                       "c.variant = 'raw') AS caption FROM _curate_vec_ids i LEFT JOIN samples s ON s.uid = i.uid::UUID "
                       "ORDER BY i._row")
            elif vs.kind == "text":
                sql = ("SELECT i.caption_id, c.uid::VARCHAR AS uid, s.url, c.text AS caption FROM _curate_vec_ids i "
                       "LEFT JOIN captions c ON c.caption_id = i.caption_id::UUID LEFT JOIN samples s ON s.uid = c.uid "
                       "ORDER BY i._row")
            else:
                sql = "SELECT concept, concept AS caption FROM _curate_vec_ids ORDER BY _row"
            tbl = cur.sql(sql).to_arrow_table()
            cur.unregister("_curate_vec_ids")
            pq.write_table(tbl, out / "metadata" / f"metadata_{i}.parquet")
    finally:
        cur.close()
    return out
