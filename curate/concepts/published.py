"""Importer for the published count tables of "No 'Zero-Shot' Without Exponential Data"
(Udandarao et al. 2024; bethgelab/frequency_determines_performance, ``search_counts/``).

Two input forms give the same rows: the raw folder of ``{downstream}_{pretrain}_{method}
_search_counts.json`` files (783 of them), or their long form as one parquet
(``derived_counts_long.parquet``, columns downstream_dataset, pretrain_dataset, method,
concept, count). Either lands in ``published_concept_counts(downstream, pretrain, method,
concept, count)`` with the concept key exactly as published (``Acadian_Flycatcher``,
``Crane``). The per-pretraining-set misalignment degrees (``misalignment_metrics/*.json``,
fractions although their keys say "percent") land in ``published_misalignment``.

The count vector of a pretraining set and method (:func:`published_counts`) follows the
paper's notebooks: one entry per distinct published concept string over the chosen
downstream sets; a string listed under several sets takes the count of the first set in
file-name order. For ``lemmatized`` counts of the classification sets the choice does
not matter (every such string has one count per pretraining set); for RAM++-based
methods it does, because the image tagger used per-dataset descriptions.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ..errors import ConfigError, InputError, StoreError
from ..runs import next_run_id, record_run
from ..store import Store
from .vocab import NOZEROSHOT_CLASSIFICATION

if TYPE_CHECKING:
    import polars as pl

COUNTS_TABLE = "published_concept_counts"
MISALIGNMENT_TABLE = "published_misalignment"
#: the ``runs.stage`` of an import (the pass concepts.import_published.v1; stored without ``.v1``)
STAGE = "concepts.import_published"
SUFFIX = "_search_counts.json"
_FILE = re.compile(
    r"^(?P<downstream>[^_]+)_(?P<pretrain>.+?)_"
    r"(?P<method>lowercased|lemmatized|(?:train_test_sim_normalized_)?rampp\d(?:\.\d+)?|integrated_t[a-z]+_i\d(?:\.\d+)?)"
    + re.escape(SUFFIX) + "$"
)
_PARQUET_COLUMNS = {"downstream_dataset": "downstream", "pretrain_dataset": "pretrain", "method": "method",
                    "concept": "concept", "count": "count"}

COUNTS_DDL = f"""CREATE TABLE IF NOT EXISTS {COUNTS_TABLE} (
    downstream VARCHAR NOT NULL,
    pretrain   VARCHAR NOT NULL,
    method     VARCHAR NOT NULL,
    concept    VARCHAR NOT NULL,
    count      BIGINT NOT NULL
)"""
MISALIGNMENT_DDL = f"""CREATE TABLE IF NOT EXISTS {MISALIGNMENT_TABLE} (
    pretrain                 VARCHAR NOT NULL,
    misaligned_samples       BIGINT,
    degree_extracted_size    DOUBLE,   -- fraction, over the dataset size the authors extracted
    degree_conservative_size DOUBLE    -- fraction, over a fixed conservative dataset size (paper, Table 3)
)"""

#: Downstream groups usable wherever a downstream set is asked for.
GROUPS = {"classification": NOZEROSHOT_CLASSIFICATION}


def parse_file_name(name: str) -> tuple[str, str, str]:
    """``imagenet_cc3m_lemmatized_search_counts.json`` → (imagenet, cc3m, lemmatized)."""
    m = _FILE.match(name)
    if not m:
        raise InputError(f"{name}: not a published count table name "
                         f"({{downstream}}_{{pretrain}}_{{method}}{SUFFIX})")
    return m.group("downstream"), m.group("pretrain"), m.group("method")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def read_search_counts(folder: Path) -> pa.Table:
    """The raw ``*_search_counts.json`` files of a folder as one table."""
    files = sorted(folder.glob("*" + SUFFIX))
    if not files:
        raise InputError(f"{folder}: no *{SUFFIX} files")
    cols: dict[str, list[Any]] = {"downstream": [], "pretrain": [], "method": [], "concept": [], "count": []}
    for f in files:
        d, p, m = parse_file_name(f.name)
        doc = _read_json(f)
        if not isinstance(doc, dict):
            raise InputError(f"{f}: expected a JSON object concept -> count, got {type(doc).__name__}")
        for concept, count in doc.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise InputError(f"{f}: count of {concept!r} is {count!r}, expected a non-negative integer")
            cols["downstream"].append(d)
            cols["pretrain"].append(p)
            cols["method"].append(m)
            cols["concept"].append(concept)
            cols["count"].append(count)
    return pa.table({k: pa.array(v, pa.int64() if k == "count" else pa.string()) for k, v in cols.items()})


def read_long_parquet(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read {path} as parquet: {str(e).splitlines()[0]}") from None
    missing = [c for c in _PARQUET_COLUMNS if c not in t.column_names]
    if missing:
        raise InputError(f"{path}: column(s) {', '.join(missing)} missing; the long form has "
                         f"{', '.join(_PARQUET_COLUMNS)} (found {', '.join(t.column_names)})")
    return pa.table({new: t.column(old).cast(pa.int64() if new == "count" else pa.string())
                     for old, new in _PARQUET_COLUMNS.items()})


def read_misalignment(folder: Path) -> pa.Table:
    rows = []
    for f in sorted(folder.glob("*_misalignment_degree.json")):
        doc = _read_json(f)
        if not isinstance(doc, dict):
            raise InputError(f"{f}: expected a JSON object")
        by_key = {k.split(";")[-1].strip(): v for k, v in doc.items()}
        rows.append((f.name[: -len("_misalignment_degree.json")], doc.get("misalignment_counts"),
                     by_key.get("extracted dataset size"), by_key.get("fixed conservative dataset size")))
    return pa.table({"pretrain": pa.array([r[0] for r in rows], pa.string()),
                     "misaligned_samples": pa.array([r[1] for r in rows], pa.int64()),
                     "degree_extracted_size": pa.array([r[2] for r in rows], pa.float64()),
                     "degree_conservative_size": pa.array([r[3] for r in rows], pa.float64())})


def locate(path: str | Path) -> tuple[str, Path, Path | None]:
    """(form, counts path, misalignment folder or None) for a parquet file, a
    ``search_counts`` folder, or the dataset folder holding ``search_counts/``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist")
    if p.is_file():
        if p.suffix.lower() != ".parquet":
            raise InputError(f"{p}: expected the long-form parquet or a folder of *{SUFFIX} files")
        form, counts = "parquet", p
        root = p.parent
    elif (p / "search_counts").is_dir():
        form, counts, root = "json", p / "search_counts", p
    else:
        form, counts, root = "json", p, p.parent
    mis = root / "misalignment_metrics"
    return form, counts, (mis if mis.is_dir() else None)


@dataclass
class ImportResult:
    form: str
    path: Path
    rows: int
    tables: int  # distinct (downstream, pretrain, method)
    misalignment: int
    run_id: int

    def summary(self) -> str:
        mis = f"; {self.misalignment} misalignment degrees" if self.misalignment else "; no misalignment_metrics folder"
        return (f"imported {self.rows:,} published counts ({self.tables} tables, {self.form}) from {self.path} "
                f"into {COUNTS_TABLE}{mis}; run {self.run_id}")


def import_published(store: Store, path: str | Path) -> ImportResult:
    """Replace the published tables with the contents of ``path`` (one transaction)."""
    if store.read_only:
        raise StoreError(f"store {store.path} is open read-only")
    form, counts_path, mis_path = locate(path)
    table = read_long_parquet(counts_path) if form == "parquet" else read_search_counts(counts_path)
    mis = read_misalignment(mis_path) if mis_path else None
    con = store.con
    con.execute(COUNTS_DDL)
    con.execute(MISALIGNMENT_DDL)
    config = {"path": str(Path(path).resolve()), "form": form}
    con.begin()
    try:
        run_id = next_run_id(con)
        now = _dt.datetime.now()
        con.register("_curate_published_in", table)
        try:
            con.execute(f"DELETE FROM {COUNTS_TABLE}")
            con.execute(f"INSERT INTO {COUNTS_TABLE} SELECT downstream, pretrain, method, concept, count "
                        "FROM _curate_published_in")
            dup = con.execute(f"SELECT downstream, pretrain, method, concept, count(*) FROM {COUNTS_TABLE} "
                              "GROUP BY ALL HAVING count(*) > 1 LIMIT 1").fetchall()
            if dup:
                raise InputError(f"{counts_path}: concept {dup[0][3]!r} appears {dup[0][4]} times in "
                                 f"{dup[0][0]}/{dup[0][1]}/{dup[0][2]}")
        finally:
            con.unregister("_curate_published_in")
        if mis is not None:
            con.register("_curate_misalignment_in", mis)
            try:
                con.execute(f"DELETE FROM {MISALIGNMENT_TABLE}")
                con.execute(f"INSERT INTO {MISALIGNMENT_TABLE} SELECT * FROM _curate_misalignment_in")
            finally:
                con.unregister("_curate_misalignment_in")
        tables = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT downstream, pretrain, method "
                             f"FROM {COUNTS_TABLE})").fetchall()[0][0]
        record_run(con, "concepts", STAGE, config, hashlib.sha256(json.dumps(config).encode()).hexdigest()[:16],
                   rows_in=table.num_rows, rows_out=table.num_rows, started_at=now, run_id=run_id)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return ImportResult(form, Path(path), table.num_rows, tables, 0 if mis is None else mis.num_rows, run_id)


def require_published(store: Store) -> None:
    if not store.has_table(COUNTS_TABLE):
        raise ConfigError(f"store {store.path} has no published counts; run `curate concepts import-published PATH` "
                          "(PATH: the nozeroshot-frequencies folder or derived_counts_long.parquet)")


def downstream_sets(downstream: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """A downstream name, a comma list, a group (``classification``), or None for all."""
    if downstream is None or downstream == "all":
        return None
    items = downstream.split(",") if isinstance(downstream, str) else list(downstream)
    out: list[str] = []
    for d in (x.strip() for x in items):
        out.extend(GROUPS.get(d, (d,)))
    return out


def published_counts(store: Store, pretrain: str, method: str = "lemmatized",
                     downstream: str | list[str] | None = "classification") -> pl.DataFrame:
    """The published count vector of one pretraining set and method as a polars
    DataFrame (concept, count): one row per distinct published concept string over the
    downstream sets; a string in several sets takes the first set's count in file-name
    order (``{downstream}_`` sorted). Unknown names are a :class:`ConfigError` listing the valid ones."""
    require_published(store)
    sets = downstream_sets(downstream)
    have = store.con.execute(f"SELECT DISTINCT pretrain, method, downstream FROM {COUNTS_TABLE}").fetchall()
    if not any(p == pretrain for p, _, _ in have):
        raise ConfigError(f"no published counts for pretraining set {pretrain!r}; "
                          f"known: {', '.join(sorted({p for p, _, _ in have}))}")
    methods = sorted({m for p, m, _ in have if p == pretrain})
    if method not in methods:
        raise ConfigError(f"no published {method!r} counts for {pretrain}; methods: {', '.join(methods)}")
    if sets is not None:
        known = sorted({d for _, _, d in have})
        bad = [d for d in sets if d not in known]
        if bad:
            raise ConfigError(f"unknown downstream set(s) {', '.join(bad)}; known: classification, {', '.join(known)}")
    df = store.df(
        f"SELECT concept, arg_min(count, downstream || '_') AS count FROM {COUNTS_TABLE} "
        "WHERE pretrain = $pretrain AND method = $method "
        + ("AND downstream IN (SELECT unnest($sets)) " if sets is not None else "")
        + "GROUP BY concept ORDER BY min(downstream || '_'), concept",
        {"pretrain": pretrain, "method": method, **({"sets": sets} if sets is not None else {})},
    )
    if df.height == 0:
        raise ConfigError(f"no published {method} counts for {pretrain} on {downstream}")
    return df
