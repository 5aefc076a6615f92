"""Importing and exporting embedding sets in other tools' layouts: clip-retrieval
embedding folders (:func:`import_clip_retrieval`, :func:`export_clip_retrieval`),
DataComp embedding shards (:func:`import_datacomp`, :func:`export_datacomp`) and plain
``.npy`` arrays with an id file (:func:`import_npy`). Store ids are found through the
metadata's uid, url or img2dataset key; every write goes through
:func:`curate.vectors.write.write_set`. Input files are read through :func:`load_npy`,
:func:`read_ids` and the npz and parquet readers here, which turn an empty, truncated,
mis-shaped or non-UTF-8 file into one :class:`InputError` line naming it, for every
shard before anything is written."""

from __future__ import annotations

import os
import re
import shutil
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, InputError
from ..store import Store
from .read import EMB_DIR, check_name, open_set
from .write import DEFAULT_SHARD_ROWS, Block, WriteResult, shard_width, write_set


def _numbered(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    """``<prefix>_<i><suffix>`` files by shard number, in numeric order: padded
    (``img_emb_07.npy``, as clip-retrieval and curate write them) and unpadded
    (``img_emb_7.npy``) names alike, so shard 10 comes after shard 9 either way."""
    out: dict[int, Path] = {}
    for p in sorted(folder.glob(f"{prefix}_*{suffix}")):
        m = re.fullmatch(rf"{re.escape(prefix)}_(\d+){re.escape(suffix)}", p.name)
        if m:
            i = int(m.group(1))
            if i in out:
                raise InputError(f"{folder}: {out[i].name} and {p.name} are both shard {i}; keep one of them")
            out[i] = p
    return dict(sorted(out.items()))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """A 2-D floating-point ``.npy`` array, memory-mapped; an empty, truncated or
    otherwise unreadable file, or an array of another shape or type, is one
    :class:`InputError` line naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror})") from None
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes), not a .npy array")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # EOFError: a file cut inside its header
        raise InputError(f"{path}: not a readable .npy file ({_first_line(e)})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path}: an .npz archive, not a .npy array (import it with --format datacomp)")
    if arr.ndim != 2:
        raise InputError(f"{path}: shape {arr.shape}; embeddings are a 2-D array (rows, dim)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{path}: dtype {arr.dtype}; embeddings are floating point")
    return arr


def _parquet_schema(path: Path) -> tuple[list[str], int]:
    """(column names, rows) of a parquet file, or one InputError line."""
    try:
        meta = pq.read_metadata(path)
        return meta.schema.to_arrow_schema().names, meta.num_rows
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: not a readable parquet file ({_first_line(e)})") from None


def read_ids(path: str | os.PathLike[str]) -> pa.Array | list[str]:
    """Ids in row order: a ``.parquet`` (its first column) or UTF-8 text, one id a line
    (blank lines skipped). Unreadable files and non-UTF-8 bytes are one InputError line."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        try:
            table = pq.read_table(path)
            if not table.num_columns:
                raise InputError(f"{path}: no columns; the ids are its first column")
            return table.column(0).combine_chunks().cast(pa.string())
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{path}: cannot read ids from its first column ({_first_line(e)})") from None
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise InputError(f"{path}: not UTF-8 text (line {line}, byte {e.start}: {e.reason}); "
                         "ids are one per line in UTF-8, or a parquet column") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def import_npy(store: Store, name: str, npy: str | os.PathLike[str], ids: str | os.PathLike[str], *,
               kind: Literal["image", "text", "concept"] = "image", model: str | None = None,
               variant: str | None = None, on_bad: Literal["error", "quarantine"] = "error",
               replace: bool = False, normalise: Literal["auto", "error"] = "auto",
               shard_rows: int = DEFAULT_SHARD_ROWS) -> WriteResult:
    """Import a plain ``(rows, dim)`` float ``.npy`` whose rows follow ``ids`` (see
    :func:`read_ids`): sample uids (image), caption ids (text) or free-text concepts.
    Every check of :func:`load_npy`, :func:`read_ids` and
    :func:`~curate.vectors.write.write_set` runs before anything is written."""
    check_name(name)
    npy = Path(npy)
    arr = load_npy(npy)
    id_values = read_ids(ids)
    if len(id_values) != arr.shape[0]:
        raise InputError(f"{npy.name} has {arr.shape[0]:,} rows but {Path(ids).name} has {len(id_values):,} ids; "
                         "they must be in the same order, one id per row")
    id_arr = id_values if isinstance(id_values, pa.Array) else pa.array(id_values, pa.string())

    def blocks() -> Iterator[Block]:
        for s in range(0, arr.shape[0], 65_536):
            e = min(s + 65_536, arr.shape[0])
            yield Block(np.asarray(arr[s:e]), id_arr.slice(s, e - s), [f"{npy.name}:{r}" for r in range(s, e)])

    return write_set(store, name, blocks(), kind=kind, model=model, variant=variant if kind == "text" else None,
                     on_bad=on_bad, replace=replace, normalise=normalise, shard_rows=shard_rows,
                     source=f"npy:{npy}", stage="vectors.import_npy.v1", config={"npy": str(npy), "ids": str(ids)},
                     dim=int(arr.shape[1]))


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
    check_name(name)
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
    first_cols = _parquet_schema(metas[min(embs)])[0]
    if match == "auto":
        found = next((c for c in _MATCH_COLUMNS if c in first_cols), None)
        if found is None:
            raise InputError(f"{metas[min(embs)]}: no uid, url or key column to match samples by; "
                             f"columns: {', '.join(first_cols)}")
        match = found
    if match not in ("uid", "url", "key"):
        raise ConfigError(f"match must be auto, uid, url or key, got {match!r}")
    dim = None
    for i in sorted(embs):  # validate every shard before any work
        shape = load_npy(embs[i]).shape
        cols, rows = _parquet_schema(metas[i])
        if shape[0] != rows:
            raise InputError(f"{embs[i]} has shape {shape} but {metas[i].name} has {rows:,} rows; "
                             "they must be in the same row order, one row per vector")
        if dim is None:
            dim = (shape[1], embs[i].name)
        elif shape[1] != dim[0]:
            raise InputError(f"{embs[i]}: wrong dimension {shape[1]}; {dim[1]} has {dim[0]} "
                             "(every shard of a set has one dimension)")
        if match not in cols:
            raise InputError(f"{metas[i]}: no {match!r} column to match samples by")
    pre_rejects: list[tuple[str, str, str, str]] = []

    def blocks() -> Iterator[Block]:
        for i in sorted(embs):
            cols = [match] + ([caption_col] if kind == "text" and caption_col in _parquet_schema(metas[i])[0] else [])
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
            arr = load_npy(embs[i])
            for s in range(0, len(keep), 65_536):
                k = keep[s:s + 65_536]
                yield Block(np.asarray(arr[k]), ids.slice(s, len(k)), [f"{embs[i].name}:{r}" for r in k])

    return write_set(store, name, blocks(), rejects=pre_rejects, kind=kind, model=model,
                               variant=variant if kind == "text" else None, on_bad=on_bad, replace=replace,
                               normalise=normalise, shard_rows=shard_rows,
                               source=f"clip-retrieval:{folder}", stage="vectors.import_clip_retrieval.v1",
                               config={"folder": str(folder), "match": match, "caption_col": caption_col})


def _load_npz_array(npz: Path, key: str) -> np.ndarray:
    """Array ``key`` of an ``.npz``, 2-D floating point; anything else is one InputError line."""
    try:
        if npz.stat().st_size == 0:
            raise InputError(f"{npz}: empty file (0 bytes), not an .npz archive")
        z = np.load(npz, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise InputError(f"{npz}: a .npy array, not an .npz archive (import it with --format npy --ids FILE)")
        with z:
            if key not in z.files:
                raise InputError(f"{npz}: no array {key!r}; it has {', '.join(z.files) or 'none'}")
            arr = z[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise InputError(f"{npz}: not a readable .npz file ({_first_line(e)})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{npz}[{key}]: shape {arr.shape}, dtype {arr.dtype}; embeddings are a 2-D floating-point array")
    return arr


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
    check_name(name)
    npz, uids = Path(npz), Path(uids)
    if key not in DATACOMP_KEYS:
        raise ConfigError(f"key must be one of {', '.join(DATACOMP_KEYS)}, got {key!r}")
    kind, model = DATACOMP_KEYS[key]
    arr = _load_npz_array(npz, key)
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
        meta = cur.sql("SELECT replace(i.uid::UUID::VARCHAR, '-', '') AS uid, s.url FROM _curate_uids i "
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


#: metadata columns of an export, per kind of set; ``uid`` is 32 hex digits (the form
#: ``curate mix`` and DataComp write), ``caption_id`` the canonical UUID as in manifests
_EXPORT_SQL = {
    "image": ("SELECT replace(i.id::UUID::VARCHAR, '-', '') AS uid, s.url, (SELECT min(c.text) FROM captions c "
              "WHERE c.uid = s.uid AND c.variant = 'raw') AS caption FROM _curate_vec_ids i "
              "LEFT JOIN samples s ON s.uid = i.id::UUID ORDER BY i._row"),
    "text": ("SELECT i.id::UUID::VARCHAR AS caption_id, replace(c.uid::VARCHAR, '-', '') AS uid, s.url, "
             "c.text AS caption FROM _curate_vec_ids i LEFT JOIN captions c ON c.caption_id = i.id::UUID "
             "LEFT JOIN samples s ON s.uid = c.uid ORDER BY i._row"),
    "concept": "SELECT id AS concept, id AS caption FROM _curate_vec_ids ORDER BY _row",
}


def _export_meta(store: Store, vs: Any) -> pa.Table:
    cur = store.con.cursor()
    try:
        cur.register("_curate_vec_ids", pa.table({"id": vs.ids(), "_row": pa.array(np.arange(vs.count))}))
        return cur.sql(_EXPORT_SQL[vs.kind]).to_arrow_table()
    finally:
        cur.close()


def _pair_rows(store: Store, img: Any, txt: Any) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """(image rows, text rows, metadata) of the samples both sets cover, in image-set order."""
    cur = store.con.cursor()
    try:
        cur.register("_curate_img", pa.table({"id": img.ids(), "_row": pa.array(np.arange(img.count))}))
        cur.register("_curate_txt", pa.table({"id": txt.ids(), "_trow": pa.array(np.arange(txt.count))}))
        dup = cur.sql("SELECT c.uid::VARCHAR, count(*) FROM _curate_txt t JOIN captions c ON c.caption_id = t.id::UUID "
                      "GROUP BY 1 HAVING count(*) > 1 LIMIT 1").fetchall()
        if dup:
            raise ConfigError(f"text set {txt.name!r} has {dup[0][1]} captions of sample {dup[0][0]}; one export row "
                              "pairs an image with one text: export a text set of one variant")
        tbl = cur.sql("SELECT i._row, t._trow, replace(c.uid::VARCHAR, '-', '') AS uid, c.caption_id::VARCHAR AS caption_id, "
                      "s.url, c.text AS caption FROM _curate_img i JOIN samples s ON s.uid = i.id::UUID "
                      "JOIN captions c ON c.uid = s.uid JOIN _curate_txt t ON t.id::UUID = c.caption_id "
                      "ORDER BY i._row").to_arrow_table()
    finally:
        cur.close()
    return (tbl.column("_row").to_numpy().astype(np.int64), tbl.column("_trow").to_numpy().astype(np.int64),
            tbl.select(["uid", "caption_id", "url", "caption"]))


def export_clip_retrieval(store: Store, name: str, out: str | os.PathLike[str], *, text_set: str | None = None,
                          shard_rows: int | None = None) -> Path:
    """Write set ``name`` as a clip-retrieval embedding folder ``out``: ``img_emb/`` (or
    ``text_emb/``) with float16 shards and ``metadata/metadata_<i>.parquet`` with the id
    (``uid`` as 32 hex digits; text sets also ``caption_id``), ``url`` and ``caption``
    (image sets: the sample's smallest ``raw`` caption; text sets: the caption's text), so
    ``clip-retrieval index``, embedding-reader and :func:`import_clip_retrieval` read it.

    Shard numbers are zero-padded as clip-retrieval pads them (``img_emb_00.npy`` ...
    ``img_emb_10.npy`` for 11 shards), so name order is row order. ``text_set`` (a text
    set, ``name`` an image set) writes the combined layout clip-retrieval inference writes:
    ``img_emb_<i>.npy``, ``text_emb_<i>.npy`` and ``metadata_<i>.parquet`` row-aligned, one
    row per sample both sets cover (with one caption in the text set), in the image set's
    order. Shards keep the set's boundaries unless ``shard_rows`` is given (for a pair:
    the image set's largest shard). The folder is written beside ``out`` and renamed into
    place, so a failure leaves nothing."""
    vs = open_set(store, name)
    ts = open_set(store, text_set) if text_set is not None else None
    if ts is not None and (vs.kind != "image" or ts.kind != "text"):
        raise ConfigError(f"a combined export pairs an image set with a text set; {name!r} holds {vs.kind} vectors "
                          f"and {text_set!r} {ts.kind} vectors")
    if shard_rows is not None and shard_rows < 1:
        raise ConfigError(f"shard_rows must be at least 1, got {shard_rows}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose a new folder")
    if ts is not None:
        img_rows, txt_rows, meta = _pair_rows(store, vs, ts)
        if not len(img_rows):
            raise ConfigError(f"sets {name!r} and {text_set!r} share no sample")
        size = shard_rows or max(r for _, _, r in vs.shards)
        bounds = [(a, min(a + size, len(img_rows))) for a in range(0, len(img_rows), size)]
    else:
        meta = _export_meta(store, vs)
        offs = vs.offsets
        bounds = ([(int(offs[k]), int(offs[k + 1])) for k in range(len(vs.shards))] if shard_rows is None else
                  [(a, min(a + shard_rows, vs.count)) for a in range(0, vs.count, shard_rows)])
    width = shard_width(len(bounds))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        subs = [EMB_DIR[vs.kind]] + (["text_emb"] if ts is not None else [])
        for sub in subs + ["metadata"]:
            (tmp / sub).mkdir(parents=True)
        for k, (a, b) in enumerate(bounds):
            num = f"{k:0{width}d}"
            if ts is not None:
                np.save(tmp / "img_emb" / f"img_emb_{num}.npy", vs.rows(img_rows[a:b], np.float16))
                np.save(tmp / "text_emb" / f"text_emb_{num}.npy", ts.rows(txt_rows[a:b], np.float16))
            elif shard_rows is None:
                shutil.copyfile(vs.path / vs.shards[k][0], tmp / subs[0] / f"{subs[0]}_{num}.npy")
            else:
                np.save(tmp / subs[0] / f"{subs[0]}_{num}.npy", vs.rows(np.arange(a, b), np.float16))
            pq.write_table(meta.slice(a, b - a), tmp / "metadata" / f"metadata_{num}.parquet")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
