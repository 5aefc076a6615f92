"""Tail benchmarks (Let It Wag!-style): evaluation samples for a vocabulary's rarest concepts.

Udandarao et al. (2024) built "Let It Wag!" from the concepts that occur least in
pretraining data. :func:`build_tail_benchmark` does the same over a store:

1. the store's counts of the vocabulary (text: the latest ``concepts.text_match.v1`` run
   of that mode, of one variant when ``variant`` is given; or image or matched counts,
   :mod:`curate.concepts.measures`), concepts with fewer than ``min_count`` samples left
   out (a concept needs examples to be evaluated on);
2. the ``n`` least frequent of the rest, ties broken by concept name;
3. for each, at most ``cap`` of its samples, chosen by a seeded hash of the uid (the same
   store, arguments and seed give the same rows);
4. written as an evaluation manifest (parquet: concept, concept count, uid, url, image
   reference, the caption that names it and its variant) with a JSON sidecar of the
   arguments and counts, under the store's ``manifests/``.

:func:`overlap` then says how many of those samples a training manifest contains:
samples in both leak evaluation data into training. :func:`read_training_manifest`
reads every manifest format ``curate mix`` writes (parquet, JSONL and the webdataset
``.samples.jsonl`` by ``uid``; DataComp's ``.npy`` of 128-bit uids; open_clip's CSV/TSV,
which carry no uid, by ``filepath`` against the tail sample's image path or url),
webdataset ``.tar`` shards (a folder of them or one: the ``uid`` of each ``.json``
member, else a ``__key__`` that is a uid) and any table with a ``uid`` column. A uid
matches in any text form: 32 hex digits, dashed, any case.

uids in the tail manifest are 32 lower-case hex digits, the form ``curate mix`` and
DataComp write.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .. import names
from ..errors import ConfigError, InputError
from ..store import Store
from .audit import store_counts
from .match import MODES
from .measures import ImageOptions, check_measure, pairs_sql
from .vocab import check_name as check_vocabulary


@dataclass
class TailBenchmark:
    path: Path
    sidecar: Path
    concepts: pl.DataFrame  # concept, count, samples taken
    rows: int

    def summary(self) -> str:
        if not self.concepts.height:
            return f"tail benchmark: no concept qualifies -> {self.path}"
        lo, hi = self.concepts.select(pl.col("count").min().alias("lo"), pl.col("count").max().alias("hi")).row(0)
        return (f"tail benchmark: {self.concepts.height} concepts, {self.rows:,} samples -> {self.path} "
                f"(counts {lo}..{hi})")


def tail_name(vocabulary: str, mode: str, variant: str | None, n: int, measure: str = "text") -> str:
    """The default file stem of a tail benchmark: ``tail_<vocabulary>_<mode>_<variant|all>_n<n>``,
    with ``_<measure>`` before ``_n<n>`` for image and matched counts."""
    return f"tail_{vocabulary}_{mode}_{variant or 'all'}" + (f"_{measure}" if measure != "text" else "") + f"_n{n}"


def tail_path(store_path: str | Path, vocabulary: str, *, n: int = 50, variant: str | None = None, mode: str = "phrase",
              name: str | None = None, out: str | Path | None = None, measure: str = "text") -> Path:
    """Where :func:`build_tail_benchmark` writes: ``out`` (an explicit ``.parquet`` path)
    or ``manifests/<name>.parquet`` in the store at ``store_path``. Every name that becomes part of the file
    name is checked first (one :class:`ConfigError` line) and the path is kept inside the
    store's ``manifests/``."""
    check_vocabulary(vocabulary)
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if variant is not None:
        names.check_name("variant", variant)
    if out is not None:
        if name is not None:
            raise ConfigError("give a tail benchmark a name or an --out path, not both")
        out = Path(out)
        if out.suffix != ".parquet":
            raise ConfigError(f"{out.name}: a tail benchmark is a .parquet file (its sidecar is the .json beside it)")
        return out
    check_measure(measure)
    stem = names.check_name("tail benchmark",
                            name if name is not None else tail_name(vocabulary, mode, variant, n, measure), max_len=200)
    names.under(Path(store_path) / "manifests", f"{stem}.parquet")  # refuses a path leaving manifests/
    return Path(store_path) / "manifests" / f"{stem}.parquet"


def build_tail_benchmark(store: Store, vocabulary: str, *, n: int = 50, min_count: int = 1, cap: int = 50,
                         variant: str | None = None, mode: str = "phrase", seed: int = 0,
                         out: str | Path | None = None, name: str | None = None, measure: str = "text",
                         image: ImageOptions | None = None) -> TailBenchmark:
    """The tail benchmark of a vocabulary by ``measure`` (text, image or matched counts,
    :mod:`curate.concepts.measures`). Each sample's caption is the first (by caption_id)
    that names the concept, for text and matched; for image, the sample's first caption
    of ``variant`` (or of any variant), NULL if it has none."""
    if n < 1 or cap < 1 or min_count < 1:
        raise ConfigError(f"n, cap and min_count must be at least 1 (got n={n}, cap={cap}, min_count={min_count})")
    check_measure(measure)
    out = tail_path(store.path, vocabulary, n=n, variant=variant, mode=mode, name=name, out=out, measure=measure)
    counts = store_counts(store, vocabulary, mode=mode, variant=variant, measure=measure, image=image)
    tail = (counts.filter(pl.col("count") >= min_count).sort(["count", "concept"]).head(n))
    out.parent.mkdir(parents=True, exist_ok=True)
    pairs, params = pairs_sql(store, measure, vocabulary, mode=mode, variant=variant, image=image)
    if measure == "image":
        caption = ("(SELECT min(c.caption_id) FROM captions c WHERE c.uid = p.uid "
                   "AND ($variant = '' OR c.variant = $variant))")
    else:
        caption = ("(SELECT min(h.caption_id) FROM concept_hits h WHERE h.uid = p.uid AND h.concept = p.concept "
                   "AND h.vocabulary = $vocabulary AND h.mode = $mode AND ($variant = '' OR h.variant = $variant))")
    params = {**params, "vocabulary": vocabulary, "mode": mode, "variant": variant or "", "seed": str(seed), "cap": cap}
    if measure == "image":
        params.pop("mode")  # image tags and the sample's caption do not depend on the matching mode
    store.con.register("_tail", tail.to_arrow())
    try:
        rel = store.relation(
            f"WITH p AS ({pairs}), "
            "hits AS (SELECT p.concept, p.uid, " + caption + " AS caption_id FROM p SEMI JOIN _tail t USING (concept)), "
            "picked AS (SELECT *, row_number() OVER (PARTITION BY concept ORDER BY hash(uid::VARCHAR || $seed), uid) AS rn"
            "  FROM hits) "
            "SELECT p.concept, t.count AS concept_count, replace(p.uid::VARCHAR, '-', '') AS uid, s.url, s.image_shard, "
            "  s.image_key, s.image_path, c.variant, c.text AS caption "
            "FROM picked p JOIN _tail t USING (concept) JOIN samples s USING (uid) LEFT JOIN captions c USING (caption_id) "
            "WHERE p.rn <= $cap ORDER BY t.count, p.concept, p.rn",
            params)
        rows = rel.pl()
    finally:
        store.con.unregister("_tail")
    rows.write_parquet(out)
    taken = rows.group_by("concept").len("samples")
    concepts = tail.join(taken, on="concept", how="left").with_columns(pl.col("samples").fill_null(0))
    sidecar = out.with_suffix(".json")
    meta: dict[str, Any] = {
        "kind": "tail_benchmark", "vocabulary": vocabulary, "mode": mode, "measure": measure, "variant": variant,
        "n": n, "min_count": min_count, "cap": cap, "seed": seed, "rows": rows.height,
        "concepts": [{"concept": c, "count": k, "samples": m} for c, k, m in concepts.iter_rows()],
    }
    if measure != "text":
        o = image or ImageOptions()
        meta["image"] = {"image_set": params.get("iset"), "concept_set": params.get("cset"), "k": o.k,
                         "min_score": o.min_score}
    sidecar.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return TailBenchmark(out, sidecar, concepts, rows.height)


# -- training manifests ----------------------------------------------------------------
def uid_hex(expr: pl.Expr) -> pl.Expr:
    """A uid in any text form (32 hex digits, 8-4-4-4-12, braces, any case) as 32 lower-case
    hex digits; null where the text is not a uid."""
    h = expr.cast(pl.String).str.strip_chars().str.to_lowercase().str.replace_all(r"[-{}]", "")
    return pl.when(h.str.contains(r"^[0-9a-f]{32}$")).then(h).otherwise(None)


@dataclass
class TrainingManifest:
    """What a training manifest says about which samples it holds: ``uids`` (32 lower-case
    hex digits) or, for open_clip CSV/TSV manifests, which carry no uid, ``paths`` (the
    ``filepath`` column: a local image path or a url)."""

    path: Path
    form: str                    # parquet, jsonl, csv, tsv, npy, webdataset
    rows: int
    uids: pl.Series | None = None
    paths: pl.Series | None = None
    halves: tuple[np.ndarray, np.ndarray] | None = None  # DataComp .npy: (upper, lower) 64 bits of each uid

    @property
    def key(self) -> str:
        return "filepath" if self.paths is not None else "uid"

    def contains(self, tail: pl.DataFrame) -> pl.Series:
        """Per tail row: is its sample in this manifest (by uid, or by image path / url)?"""
        if self.halves is not None:
            hexes = tail.select(uid_hex(pl.col("uid")))["uid"].to_list()
            want = [(int(h[:16], 16), int(h[16:], 16)) if h else (-1, -1) for h in hexes]
            hi, lo = self.halves
            cand = np.isin(hi, np.array([w[0] for w in want if w[0] >= 0], np.uint64))
            have = set(zip(hi[cand].tolist(), lo[cand].tolist()))
            return pl.Series("in_train", [w in have for w in want], pl.Boolean)
        if self.uids is not None:
            return tail.select(uid_hex(pl.col("uid")).is_in(self.uids.implode()).fill_null(False).alias("in_train"))[
                "in_train"]
        assert self.paths is not None
        paths = self.paths.implode()
        hit = pl.col("url").is_in(paths).fill_null(False)
        if "image_path" in tail.columns:
            hit = hit | pl.col("image_path").is_in(paths).fill_null(False)
        return tail.select(hit.alias("in_train"))["in_train"]


def _bad(p: Path, what: str) -> InputError:
    return InputError(f"training manifest {p}: {what}")


def _uid_series(p: Path, raw: pl.Series) -> pl.Series:
    hexes = raw.to_frame("uid").select(uid_hex(pl.col("uid")))["uid"]
    bad = hexes.is_null() & raw.is_not_null()
    if bad.any():
        first = int(bad.arg_max() or 0)
        raise _bad(p, f"uid {raw[first]!r} (row {first + 1}) is not a uid (32 hex digits, with or without dashes)")
    return hexes.drop_nulls().unique()


def _table(p: Path, df: pl.DataFrame, form: str) -> TrainingManifest:
    if "uid" in df.columns:
        return TrainingManifest(p, form, df.height, uids=_uid_series(p, df["uid"]))
    if "filepath" in df.columns:
        return TrainingManifest(p, form, df.height, paths=df["filepath"].cast(pl.String).drop_nulls().unique())
    raise _bad(p, f"no uid column (nor open_clip's filepath); columns: {', '.join(df.columns) or 'none'}")


def _npy(p: Path) -> TrainingManifest:
    """DataComp's subset file: uids as (upper 64 bits, lower 64 bits), dtype ``u8,u8``."""
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _bad(p, f"not a readable .npy file ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if arr.dtype.names and len(arr.dtype.names) == 2 and all(arr.dtype[k].kind == "u" for k in range(2)):
        hi, lo = arr[arr.dtype.names[0]], arr[arr.dtype.names[1]]
    elif arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype.kind == "u":
        hi, lo = arr[:, 0], arr[:, 1]
    else:
        raise _bad(p, f"dtype {arr.dtype}, shape {arr.shape}; a DataComp subset file holds uids as dtype u8,u8")
    return TrainingManifest(p, "npy", len(arr), halves=(np.asarray(hi, np.uint64), np.asarray(lo, np.uint64)))


def _webdataset(p: Path) -> TrainingManifest:
    """uids of webdataset shards: each ``.json`` member's ``uid``, else the sample's
    ``__key__`` (the member name up to its first dot) when that is a uid."""
    shards = sorted(p.glob("*.tar")) if p.is_dir() else [p]
    if not shards:
        raise _bad(p, "a folder without .tar shards")
    keys: dict[str, str | None] = {}
    for shard in shards:
        try:
            with tarfile.open(shard) as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    folder, _, base = m.name.rpartition("/")
                    key = (folder + "/" if folder else "") + base.split(".", 1)[0]
                    keys.setdefault(key, None)
                    if base.endswith(".json"):
                        f = tar.extractfile(m)
                        doc = json.loads(f.read().decode("utf-8")) if f is not None else None
                        if isinstance(doc, dict) and doc.get("uid") is not None:
                            keys[key] = str(doc["uid"])
        except (OSError, tarfile.TarError, UnicodeDecodeError, ValueError) as e:
            raise _bad(shard, f"not a readable webdataset shard ({(str(e).splitlines() or [type(e).__name__])[0]})") \
                from None
    raw = pl.Series("uid", [u if u is not None else k.rpartition("/")[2] for k, u in keys.items()], pl.String)
    return TrainingManifest(p, "webdataset", len(keys), uids=_uid_series(p, raw))


def read_training_manifest(path: str | Path) -> TrainingManifest:
    """The samples a training manifest holds, in any format ``curate mix`` writes (see the
    module docstring); a missing or unreadable manifest is one :class:`InputError` line."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"training manifest {p} does not exist")
    name = p.name.lower()
    try:
        if p.is_dir() or name.endswith(".tar"):
            return _webdataset(p)
        if name.endswith(".parquet"):
            return _table(p, pl.read_parquet(p), "parquet")
        if name.endswith((".csv", ".tsv")):
            sep = "\t" if name.endswith(".tsv") else ","
            return _table(p, pl.read_csv(p, separator=sep, infer_schema=False), name[-3:])
        if name.endswith((".jsonl", ".json", ".ndjson")):
            return _table(p, pl.read_ndjson(p, infer_schema_length=None), "jsonl")
        if name.endswith(".npy"):
            return _npy(p)
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as e:
        raise _bad(p, f"not readable ({(str(e).strip().splitlines() or [type(e).__name__])[0]})") from None
    raise _bad(p, "expected .parquet, .jsonl, .csv, .tsv, .npy (DataComp uids) or webdataset .tar shards")


def overlap(tail_path: str | Path, train_manifest: str | Path | TrainingManifest) -> pl.DataFrame:
    """Per tail concept: samples, and how many of them the training manifest holds."""
    tail = pl.read_parquet(tail_path)
    train = train_manifest if isinstance(train_manifest, TrainingManifest) else read_training_manifest(train_manifest)
    return (tail.with_columns(train.contains(tail).alias("in_train"))
            .group_by("concept", "concept_count").agg(pl.len().alias("samples"), pl.col("in_train").sum())
            .sort("concept_count", "concept"))
