"""Benchmark: ingesting a LAION-style caption parquet (10M rows by default).

Methods, each run in its own subprocess (so peak RSS is per method) on the same file:

* ``curate``         -- ``ingest_table(Store, parquet, mapping=resolve_mapping("laion"))`` into a
                        fresh store (DuckDB's default memory_limit, 80% of RAM);
* ``curate@<LIMIT>`` -- the same with ``Store.open(dir, create=True, memory_limit=LIMIT)``
                        (one per ``--memory-limit`` value; default ``1GB``);
* ``duckdb``         -- DuckDB alone: ``CREATE TABLE t (...)`` then
                        ``INSERT INTO t SELECT * FROM read_parquet(...)`` into a fresh database file;
* ``pandas``         -- ``pd.read_parquet`` then ``INSERT INTO t SELECT * FROM df`` into a fresh
                        DuckDB file (what a user would write by hand).

Every timed interval runs from opening the database to closing it (so the checkpoint
that writes the data to disk is included for every method); curate's own
``IngestResult.seconds`` is reported beside it. The order of methods rotates from one
repetition to the next; the table shows medians, the spread ((max-min)/median) and
ratios of speeds. JSON lines (prefix-free, one object per line) follow the table.

Options: ``--memory-limit`` (repeatable) adds curate and duckdb under that limit;
``--variant [METHOD+]LABEL[@LIMIT]:KEY=VALUE,...`` adds runs with DuckDB settings (e.g.
``pio:preserve_insertion_order=false``); ``--compare-ref REF`` adds curate as of a git
commit (exported with ``git archive``), to see regressions side by side. A run that fails
(out of memory) is reported as FAILED with the time it took to fail.

``--profile`` runs one more curate ingest with every SQL statement timed (the store's
connection is wrapped; curate itself is not changed); ``--operators`` adds a run with
DuckDB's JSON profiler on each statement (top operators, operator time summed over
threads). ``--experiments`` times the per-row expressions and alternative formulations of
the transaction that produce the same rows (``--experiment-groups`` picks some).

Usage::

    python benchmarks/bench_ingest.py                  # 10M rows, 3 reps (generates the file if missing)
    python benchmarks/bench_ingest.py --rows 200000 --reps 1          # quick check
    python benchmarks/bench_ingest.py --profile --operators --experiments --reps 0
    # the recorded run (RESULTS.md):
    python benchmarks/bench_ingest.py --reps 3 --memory-limit 2GB --memory-limit 1500MB --memory-limit 1GB \
        --variant pio:preserve_insertion_order=false --variant pio@1GB:preserve_insertion_order=false \
        --variant duckdb+v14:storage_compatibility_version=v1.4.0 --variant curate+v2:storage_compatibility_version=latest \
        --compare-ref bff4485 --profile --operators --experiments
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE_METHODS = ("curate", "duckdb", "pandas")


def rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def dir_size_mb(p: Path) -> float:
    if p.is_file():
        return p.stat().st_size / 2**20
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20


def parquet_columns(path: str) -> list[tuple[str, str]]:
    import duckdb

    con = duckdb.connect()
    try:
        return [(r[0], r[1]) for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()]
    finally:
        con.close()


def create_table_sql(cols: list[tuple[str, str]]) -> str:
    return "CREATE TABLE t (" + ", ".join(f'"{n}" {t}' for n, t in cols) + ")"


def duck_config(memory_limit: str | None, threads: int | None) -> dict:
    cfg: dict = {}
    if memory_limit:
        cfg["memory_limit"] = memory_limit
    if threads:
        cfg["threads"] = threads
    return cfg


# --------------------------------------------------------------------------- children
def child(method: str, path: str, work: Path, memory_limit: str | None, threads: int | None,
          settings: dict | None = None) -> dict:
    """Run one method once, in this (fresh) process; return its measurements.

    ``settings`` are DuckDB settings of a ``--variant``: connect-time config for the baselines;
    for curate, ``SET`` right after ``Store.open`` (a storage version is applied by creating
    the empty catalog file with it first, untimed; Store.open keeps an existing file's format).
    """
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"method": method}
    settings = dict(settings or {})
    if settings:
        out["settings"] = settings
    if method.startswith("curate"):
        from curate import Store
        from curate.ingest.tables import ingest_table, resolve_mapping

        store_dir = work / "store"
        storage = settings.pop("storage_compatibility_version", None)
        if storage:
            import duckdb

            store_dir.mkdir(parents=True, exist_ok=True)
            duckdb.connect(str(store_dir / "catalog.duckdb"), config={"storage_compatibility_version": storage}).close()
        out["rss_before_MB"] = round(rss_now_mb())
        t0 = time.perf_counter()
        if memory_limit or threads:
            s = Store.open(store_dir, create=True, memory_limit=memory_limit, threads=threads)
        else:
            s = Store.init(store_dir)
        for k, v in settings.items():
            s.con.execute(f"SET {k} = '{v}'")
        try:
            res = ingest_table(s, path, source="bench", mapping=resolve_mapping("laion"))
        except Exception as e:  # noqa: BLE001 (e.g. DuckDB out of memory under a small memory_limit)
            out.update(error=" ".join(str(e).split())[:300], seconds=time.perf_counter() - t0,
                       peak_rss_MB=round(peak_rss_mb()))
            s.close()
            return out
        t1 = time.perf_counter()
        s.close()
        t2 = time.perf_counter()
        out.update(seconds=t2 - t0, ingest_s=res.seconds, close_s=t2 - t1, rows_in=res.rows_in,
                   samples_added=res.samples_added, captions_added=res.captions_added, rejected=res.rejected,
                   reject_reasons=res.reject_reasons, db_MB=round(dir_size_mb(store_dir / "catalog.duckdb")))
    elif method.startswith("duckdb"):
        import duckdb

        cols = parquet_columns(path)
        db = work / "raw.duckdb"
        out["rss_before_MB"] = round(rss_now_mb())
        t0 = time.perf_counter()
        con = duckdb.connect(str(db), config={**duck_config(memory_limit, threads), **settings})
        con.execute(create_table_sql(cols))
        try:
            con.execute("INSERT INTO t SELECT * FROM read_parquet(?)", [path])
        except Exception as e:  # noqa: BLE001
            out.update(error=" ".join(str(e).split())[:300], seconds=time.perf_counter() - t0,
                       peak_rss_MB=round(peak_rss_mb()))
            con.close()
            return out
        t1 = time.perf_counter()
        rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
        t1b = time.perf_counter()
        con.close()
        t2 = time.perf_counter()
        out.update(seconds=(t2 - t0) - (t1b - t1), insert_s=t1 - t0, close_s=t2 - t1b, rows_in=rows,
                   db_MB=round(dir_size_mb(db)))
    elif method.startswith("pandas"):
        import duckdb
        import pandas as pd

        cols = parquet_columns(path)
        db = work / "pandas.duckdb"
        out["rss_before_MB"] = round(rss_now_mb())
        t0 = time.perf_counter()
        df = pd.read_parquet(path)
        t1 = time.perf_counter()
        out["after_read_rss_MB"] = round(rss_now_mb())
        con = duckdb.connect(str(db), config={**duck_config(memory_limit, threads), **settings})
        con.execute(create_table_sql(cols))
        con.execute("INSERT INTO t SELECT * FROM df")
        t2 = time.perf_counter()
        con.close()
        t3 = time.perf_counter()
        out.update(seconds=t3 - t0, read_s=t1 - t0, insert_s=t2 - t1, close_s=t3 - t2, rows_in=len(df),
                   db_MB=round(dir_size_mb(db)), pandas=pd.__version__)
        del df
    else:
        raise SystemExit(f"unknown method {method}")
    out["peak_rss_MB"] = round(peak_rss_mb())
    return out


def run_child(method: str, path: Path, work: Path, memory_limit: str | None, threads: int | None,
              keep: bool, src: Path | None = None, settings: dict | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--path", str(path),
           "--work", str(work)]
    if settings:
        cmd += ["--settings", json.dumps(settings)]
    if memory_limit:
        cmd += ["--memory-limit", memory_limit]
    if threads:
        cmd += ["--threads", str(threads)]
    env = None
    if src is not None:  # import curate from another source tree (--compare-ref)
        env = {**os.environ, "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    try:
        if p.returncode != 0:
            raise RuntimeError(f"{method} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1]
        return json.loads(line)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- profiling
def _label(sql: str) -> str:
    s = " ".join(sql.split())
    rules = [
        ("DESCRIBE", "describe input (prepare)"),
        ("SELECT nextval", "next run id"),
        ("INSERT INTO runs", "insert runs row"),
        ("CREATE OR REPLACE TEMP TABLE _in_rej", "create _in_rej"),
        ("CREATE OR REPLACE TEMP TABLE _in_dups", "1. duplicate-uid check -> _in_dups"),
        ("INSERT INTO _in_rej SELECT row_ref, reason, detail, record FROM (SELECT", "2a. caption rejects (NULL/empty/long)"),
        ("INSERT INTO _in_rej SELECT row_ref, reason, detail, NULL FROM _in_dups", "2b. duplicate rejects"),
        ("SELECT count(*) FROM _in_rej", "count dropped"),
        ("unnest(list_filter(", "2. all per-row rejects (one scan)"),
        ("'no url or id', 'the record", "2d. 'no url or id' rejects"),
        ("'no valid caption'", "2c. 'no valid caption' rejects"),
        ("INSERT INTO samples", "3a. append samples (anti-join)"),
        ("INSERT INTO captions", "3b. append captions (anti-join)"),
        ("INSERT INTO rejects", "4. write rejects (NOT EXISTS)"),
        ("SELECT reason, count(*) FROM _in_rej", "reject counts"),
        ("UPDATE runs", "update runs row"),
        ("SELECT count(*) FROM samples", "count samples"),
        ("SELECT count(*) FROM captions", "count captions"),
        ("SELECT count(*) FROM (SELECT", "0. count input rows"),
        ("DROP TABLE", "drop temp tables"),
        ("SET ", "settings"),
    ]
    for pat, lab in rules:
        if pat in s:
            return lab
    return s[:60]


class TimedConnection:
    """Forwards everything to a DuckDB connection, timing execute/begin/commit."""

    def __init__(self, con, log: list, profile_dir: Path | None = None):
        self._con = con
        self._log = log
        self._profile_dir = profile_dir
        self._n = 0

    def execute(self, sql, params=None):
        prof = None
        if self._profile_dir is not None:
            # Profiling stays on; each statement gets its own output file. Nothing may run
            # after the statement (its caller fetches from the connection's result).
            self._n += 1
            prof = self._profile_dir / f"stmt_{self._n:02d}.json"
            if self._n == 1:
                self._con.execute("SET enable_profiling = 'json'")
            self._con.execute(f"SET profiling_output = '{prof}'")
        t = time.perf_counter()
        try:
            r = self._con.execute(sql, params) if params is not None else self._con.execute(sql)
        except Exception:
            self._log.append({"label": _label(sql) + " [FAILED]", "seconds": time.perf_counter() - t, "sql": sql,
                              "profile": None})
            raise
        dt = time.perf_counter() - t
        self._log.append({"label": _label(sql), "seconds": dt, "sql": sql, "profile": str(prof) if prof else None})
        return r

    def begin(self):
        t = time.perf_counter()
        r = self._con.begin()
        self._log.append({"label": "BEGIN", "seconds": time.perf_counter() - t, "sql": "BEGIN", "profile": None})
        return r

    def commit(self):
        t = time.perf_counter()
        r = self._con.commit()
        self._log.append({"label": "COMMIT", "seconds": time.perf_counter() - t, "sql": "COMMIT", "profile": None})
        return r

    def __getattr__(self, name):
        return getattr(self._con, name)


def _walk_ops(node: dict, acc: list) -> None:
    """Flatten DuckDB's JSON profile (2.x: name/timing/intermediate_rows; 1.x: operator_*)."""
    name = node.get("name") or node.get("operator_name") or node.get("operator_type")
    timing = node.get("timing", node.get("operator_timing"))
    if name and timing is not None:
        rows = node.get("intermediate_rows", node.get("operator_cardinality"))
        acc.append({"op": name.strip(), "s": timing, "rows": rows, "info": node.get("extra_info") or {}})
    for c in node.get("children", []):
        _walk_ops(c, acc)


def profile_child(path: str, work: Path, memory_limit: str | None, threads: int | None, operators: bool) -> dict:
    """One curate ingest with every statement timed (and, optionally, DuckDB-profiled)."""
    from curate import Store
    from curate.ingest.tables import ingest_table, resolve_mapping

    work.mkdir(parents=True, exist_ok=True)
    prof_dir = work / "profiles" if operators else None
    if prof_dir:
        prof_dir.mkdir(exist_ok=True)
    log: list = []
    t0 = time.perf_counter()
    s = Store.open(work / "store", create=True, memory_limit=memory_limit, threads=threads)
    t_open = time.perf_counter() - t0
    s.con = TimedConnection(s.con, log, prof_dir)
    error = None
    try:
        res = ingest_table(s, path, source="bench", mapping=resolve_mapping("laion"))
    except Exception as e:  # noqa: BLE001
        error = " ".join(str(e).split())[:300]
        res = None
    t1 = time.perf_counter()
    s.con._con.close()
    t_close = time.perf_counter() - t1
    stmts = []
    for e in log:
        item = {"label": e["label"], "seconds": round(e["seconds"], 3)}
        if e["profile"] and Path(e["profile"]).exists():
            tree = json.loads(Path(e["profile"]).read_text())
            ops: list = []
            for root in tree.get("operator", [tree]):
                _walk_ops(root, ops)
            ops.sort(key=lambda o: -o["s"])
            item["top_operators"] = [
                {"op": o["op"], "s": round(o["s"], 3), "rows": o["rows"],
                 "info": {k: v for k, v in o["info"].items() if k in ("Join Type", "Conditions", "Function", "Aggregates", "Groups", "Table") and v}}
                for o in ops[:4]]
            item["operator_s"] = round(sum(o["s"] for o in ops), 3)
        stmts.append(item)
    out = {"mode": "profile" + ("+operators" if operators else ""), "memory_limit": memory_limit,
           "open_s": round(t_open, 3), "close_s": round(t_close, 3), "statements": stmts,
           "peak_rss_MB": round(peak_rss_mb())}
    if res is not None:
        out.update(ingest_s=round(res.seconds, 3), rows_in=res.rows_in, samples_added=res.samples_added,
                   captions_added=res.captions_added)
    else:
        out.update(ingest_s=round(t1 - t0 - t_open, 3), error=error)
    return out


def _ws_class() -> str:
    """A regex class of every character curate counts as whitespace (RE2 syntax)."""
    try:
        from curate.ingest.core import WHITESPACE
    except ImportError:  # older curate: trim() of ASCII space only
        WHITESPACE = " "
    return "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE)


EXPERIMENT_GROUPS = ("scan", "valid", "dups", "floor", "lean", "lean2", "temp", "keep", "columns")


def experiments_child(path: str, work: Path, memory_limit: str | None, threads: int | None,
                      groups: tuple[str, ...] = EXPERIMENT_GROUPS) -> dict:
    """Time alternative formulations of the heavy steps (10M rows: a few minutes).

    Groups: what the per-row predicates and derived columns cost on a plain scan; the
    duplicate check; the floor (the two appends with no check at all); and a prototype
    of a leaner transaction with the same results (see RESULTS.md).
    """
    from curate import Store
    from curate.ingest.tables import input_files, prepare_table, resolve_mapping

    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"mode": "experiments"}
    n_store = [0]

    def fresh_store():
        n_store[0] += 1
        st = Store.open(work / f"store{n_store[0]}", create=True, memory_limit=memory_limit, threads=threads)
        files, fmt = input_files(path, None)
        plan = prepare_table(st, files, fmt, "bench", resolve_mapping("laion"))
        return st, plan

    s, plan = fresh_store()
    con = s.con
    rows = f"({plan.rows_sql})"
    try:
        from curate.ingest.core import WHITESPACE
    except ImportError:
        WHITESPACE = " "
    P = {"source": "bench", "files": plan.params["files"], "ws": WHITESPACE, "max_chars": 20000, "run_id": 1}
    ws_re = "[^" + _ws_class() + "]"
    valid_trim = "(_caption IS NOT NULL AND trim(_caption, $ws) <> '' AND length(_caption) <= $max_chars)"
    valid_re = f"(_caption IS NOT NULL AND regexp_matches(_caption, '{ws_re}') AND length(_caption) <= $max_chars)"

    def t(label: str, sql: str, c=None) -> float:
        c = c or con
        p = {k: v for k, v in P.items() if f"${k}" in sql}
        t0 = time.perf_counter()
        r = c.execute(sql, p)
        try:
            res = r.fetchall()
            res = res[0][0] if len(res) == 1 and len(res[0]) == 1 else None
        except Exception:  # noqa: BLE001
            res = None
        dt = time.perf_counter() - t0
        out[label] = round(dt, 3)
        print(json.dumps({"experiment": label, "seconds": round(dt, 3), "result": res}), file=sys.stderr, flush=True)
        return dt

    if "scan" in groups:  # 1. Plain scans: the input, and each derived column of curate's rows relation.
        t("scan: read_parquet, all 5 columns", "SELECT count(*), sum(length(URL)), sum(length(TEXT)), sum(WIDTH), "
          "sum(similarity) FROM read_parquet($files)")
        t("scan: rows relation, uid (md5 of url)", f"SELECT sum(hash(uid)) FROM {rows}")
        t("scan: uid, filtered on uid IS NOT NULL", f"SELECT sum(hash(uid)) FROM {rows} WHERE uid IS NOT NULL")
        t("scan: uid, filtered on url IS NOT NULL", f"SELECT sum(hash(uid)) FROM {rows} WHERE url IS NOT NULL")
        t("scan: rows relation, extra (json_object)", f"SELECT sum(length(extra::VARCHAR)) FROM {rows}")
        t("scan: rows relation, row_ref + row_ord", f"SELECT sum(length(row_ref)), sum(row_ord) FROM {rows}")
        t("scan: rows relation, every column", f"SELECT sum(hash(uid)), sum(length(url)), sum(length(_caption)), "
          f"sum(width), sum(length(extra::VARCHAR)), sum(length(row_ref)) FROM {rows}")
        t("scan: caption_id (md5 of uid::VARCHAR, variant, text)",
          f"SELECT sum(hash(md5_number(uid::VARCHAR || chr(31) || 'raw' || chr(31) || _caption)::UUID)) FROM {rows}")
    if "valid" in groups:  # 2. The caption-validity predicate, evaluated once over all rows.
        t("valid(): trim(text, $ws) [current]", f"SELECT count(*) FILTER {valid_trim} FROM {rows}")
        t("valid(): regexp_matches(text, '[^ws]')", f"SELECT count(*) FILTER {valid_re} FROM {rows}")
        t("valid(): trim(text) [ASCII space only]",
          f"SELECT count(*) FILTER (_caption IS NOT NULL AND trim(_caption) <> '' AND length(_caption) <= $max_chars) FROM {rows}")
    if "dups" in groups:  # 3. The duplicate check.
        t("dups: GROUP BY uid HAVING count(*) > 1", f"SELECT count(*) FROM (SELECT uid FROM {rows} GROUP BY uid HAVING count(*) > 1)")
        t("dups: GROUP BY hash(uid) (64-bit) HAVING count(*) > 1",
          f"SELECT count(*) FROM (SELECT hash(uid) AS h FROM {rows} GROUP BY h HAVING count(*) > 1)")
        t("dups: WHERE uid IS NOT NULL GROUP BY uid (00fe7e8)",
          f"SELECT count(*) FROM (SELECT uid FROM {rows} WHERE uid IS NOT NULL GROUP BY uid HAVING count(*) > 1)")
        # count(uid) is 0 for the NULL group, so this drops it without a filter on uid (a filter
        # on the key, even in HAVING, is pushed below the aggregate and recomputes the md5).
        t("dups: GROUP BY uid HAVING count(uid) > 1",
          f"SELECT count(*) FROM (SELECT uid FROM {rows} GROUP BY uid HAVING count(uid) > 1)")
    s.close()

    if "floor" in groups:  # 4. The floor: both appends with no check, no filter, no anti-join, then COMMIT.
        s, plan = fresh_store()
        con = s.con
        con.execute("BEGIN")
        t0 = time.perf_counter()
        t("floor: INSERT samples (no filter, no anti-join)", f"INSERT INTO samples (uid, source, url, image_shard, image_key, "
          f"image_path, sha256, width, height, extra, run_id) SELECT uid, $source, url, image_shard, image_key, image_path, "
          f"sha256, width, height, extra, 1 FROM {rows}", con)
        t("floor: INSERT captions (caption_id md5, no anti-join)", "INSERT INTO captions (caption_id, uid, variant, text, "
          "generator, provenance, source, run_id) SELECT md5_number(uid::VARCHAR || chr(31) || 'raw' || chr(31) || _caption)"
          f"::UUID, uid, 'raw', _caption, 'alt-text', NULL::JSON, $source, 1 FROM {rows} WHERE _caption IS NOT NULL", con)
        t("floor: COMMIT", "COMMIT", con)
        out["floor: total"] = round(time.perf_counter() - t0, 3)
        s.close()

    # 5. A leaner transaction with the same outcome (prototype): the dup check as curate does
    #    it, ONE pass for every reject reason, validity by regexp, the two anti-join appends.
    #    "lean" keeps curate's `uid IS NOT NULL` (the filter recomputes the md5 the projection
    #    computes again); "lean2" tests the uid's input (`url IS NOT NULL`) instead, which is
    #    equivalent because md5_number(NULL) is NULL.
    def lean(tag: str, key_ok: str) -> None:
        st, _ = fresh_store()
        c = st.con
        fp = "coalesce(url, '') || chr(30) || coalesce(_caption, '')"
        c.execute("BEGIN")
        t0 = time.perf_counter()
        c.execute("CREATE OR REPLACE TEMP TABLE _in_rej (row_ref VARCHAR, reason VARCHAR, detail VARCHAR, record VARCHAR)")
        t(f"{tag}: dup check (as curate)", f"""
            CREATE OR REPLACE TEMP TABLE _in_dups AS
            WITH d AS (SELECT uid FROM {rows} GROUP BY uid HAVING count(*) > 1),
            r AS (SELECT r.row_ref, r.row_ord, r.uid, {fp} AS fp,
                         row_number() OVER (PARTITION BY r.uid ORDER BY r.row_ord) AS k
                  FROM {rows} AS r SEMI JOIN d USING (uid))
            SELECT r.row_ref, r.row_ord, r.uid, CASE WHEN r.fp = f.fp THEN 'duplicate row' ELSE 'duplicate id' END AS reason,
                   'same uid as ' || f.row_ref AS detail
            FROM r JOIN r AS f ON f.uid = r.uid AND f.k = 1 WHERE r.k > 1""", c)
        bad = (f"CASE WHEN _caption IS NULL THEN 'null caption' WHEN NOT regexp_matches(_caption, '{ws_re}') "
               f"THEN 'empty caption' WHEN length(_caption) > $max_chars THEN 'caption too long' END")
        t(f"{tag}: all rejects in one pass", f"""
            INSERT INTO _in_rej
            SELECT row_ref, reason, detail, record FROM (
                SELECT row_ref, {key_ok} AS key_ok, {bad} AS cap_reason,
                       'variant raw' || CASE WHEN _caption IS NOT NULL THEN ' (' || length(_caption) || ' characters)' ELSE '' END AS cap_detail,
                       left(_caption, 1000) AS rec
                FROM {rows} WHERE NOT ({key_ok}) OR NOT {valid_re}) x,
            LATERAL (SELECT * FROM (VALUES
                ('no url or id', 'the record has no url and no id to key it', NULL, NOT key_ok),
                (cap_reason, cap_detail, rec, cap_reason IS NOT NULL),
                ('no valid caption', NULL, NULL, cap_reason IS NOT NULL AND key_ok)) v(reason, detail, record, on_)
                WHERE on_)
            WHERE x.row_ref NOT IN (SELECT row_ref FROM _in_dups)""", c)
        c.execute("INSERT INTO _in_rej SELECT row_ref, reason, detail, NULL FROM _in_dups")
        keep = f"{key_ok} AND row_ord NOT IN (SELECT row_ord FROM _in_dups) AND {valid_re}"
        t(f"{tag}: INSERT samples (anti-join)", f"""
            INSERT INTO samples (uid, source, url, image_shard, image_key, image_path, sha256, width, height, extra, run_id)
            SELECT uid, $source, url, image_shard, image_key, image_path, sha256, width, height, extra, $run_id
            FROM (SELECT * FROM {rows} WHERE {keep}) n ANTI JOIN samples s USING (uid)""", c)
        t(f"{tag}: INSERT captions (anti-join)", f"""
            INSERT INTO captions (caption_id, uid, variant, text, generator, provenance, source, run_id)
            SELECT n.* FROM (
                SELECT md5_number(uid::VARCHAR || chr(31) || 'raw' || chr(31) || _caption)::UUID AS caption_id, uid,
                       'raw' AS variant, _caption AS text, 'alt-text' AS generator, NULL::JSON AS provenance,
                       $source AS source, $run_id AS run_id
                FROM {rows} WHERE {keep}) n ANTI JOIN captions c USING (caption_id)""", c)
        t(f"{tag}: COMMIT", "COMMIT", c)
        out[f"{tag}: total"] = round(time.perf_counter() - t0, 3)
        out[f"{tag}: counts"] = {r[0]: r[1] for r in c.execute(
            "SELECT 'samples', count(*) FROM samples UNION ALL SELECT 'captions', count(*) FROM captions "
            "UNION ALL SELECT 'rejects ' || reason, count(*) FROM _in_rej GROUP BY reason ORDER BY 1").fetchall()}
        st.close()

    def keep_filters() -> None:
        """The samples append with curate's per-row `keep` predicates vs an anti-join on the
        (small) list of dropped rows, vs no filter at all; each rolled back, alternated twice."""
        nonspace = "'" + "[^" + _ws_class() + "]" + "'"
        valid = f"(_caption IS NOT NULL AND length(_caption) <= 20000 AND regexp_matches(_caption, {nonspace}))"
        for rep in range(2):
            for name in ("no filter (floor)", "curate keep (uid IS NOT NULL AND row_ord NOT IN dups AND valid)",
                         "ANTI JOIN _drop USING (row_ord)"):
                st, _ = fresh_store()
                c = st.con
                c.execute(f"CREATE TEMP TABLE _in_dups AS SELECT row_ord FROM {rows} WHERE uid IN "
                          f"(SELECT uid FROM {rows} GROUP BY uid HAVING count(*) > 1) "
                          "QUALIFY row_number() OVER (PARTITION BY uid ORDER BY row_ord) > 1",
                          {"files": P["files"], "source": P["source"]})
                c.execute(f"CREATE TEMP TABLE _drop AS SELECT row_ord FROM {rows} WHERE uid IS NULL OR NOT {valid} "
                          "UNION SELECT row_ord FROM _in_dups", {"files": P["files"], "source": P["source"]})
                src = {"no filter (floor)": f"{rows} r",
                       "ANTI JOIN _drop USING (row_ord)": f"{rows} r ANTI JOIN _drop d USING (row_ord)"}.get(
                    name, f"(SELECT * FROM {rows} WHERE uid IS NOT NULL AND row_ord NOT IN (SELECT row_ord FROM _in_dups) "
                          f"AND {valid}) r")
                c.execute("BEGIN")
                t(f"keep: {name} [{rep}]", "INSERT INTO samples (uid, source, url, image_shard, image_key, image_path, "
                  "sha256, width, height, extra, run_id) SELECT uid, 'bench', url, image_shard, image_key, image_path, "
                  f"sha256, width, height, extra, 1 FROM {src} ANTI JOIN samples s USING (uid)", c)
                out[f"keep: {name} [{rep}] rows"] = c.execute("SELECT count(*) FROM samples").fetchone()[0]
                c.execute("ROLLBACK")
                st.close()

    def materialised(tag: str) -> None:
        """Derive every column once into a temp table; every later statement reads that."""
        st, _ = fresh_store()
        c = st.con
        fp = "coalesce(url, '') || chr(30) || coalesce(_caption, '')"
        c.execute("BEGIN")
        t0 = time.perf_counter()
        t(f"{tag}: CREATE TEMP TABLE _in (uid, caption_id, flags computed once)", f"""
            CREATE TEMP TABLE _in AS
            SELECT row_ref, row_ord, uid, url, image_shard, image_key, image_path, sha256, width, height, extra, _caption,
                   uid IS NOT NULL AS key_ok, {valid_re} AS cap_ok,
                   md5_number(uid::VARCHAR || chr(31) || 'raw' || chr(31) || _caption)::UUID AS caption_id
            FROM {rows}""", c)
        c.execute("CREATE OR REPLACE TEMP TABLE _in_rej (row_ref VARCHAR, reason VARCHAR, detail VARCHAR, record VARCHAR)")
        t(f"{tag}: dup check from _in", f"""
            CREATE OR REPLACE TEMP TABLE _in_dups AS
            WITH d AS (SELECT uid FROM _in GROUP BY uid HAVING count(*) > 1),
            r AS (SELECT r.row_ref, r.row_ord, r.uid, {fp} AS fp,
                         row_number() OVER (PARTITION BY r.uid ORDER BY r.row_ord) AS k
                  FROM _in AS r SEMI JOIN d USING (uid))
            SELECT r.row_ref, r.row_ord, r.uid, CASE WHEN r.fp = f.fp THEN 'duplicate row' ELSE 'duplicate id' END AS reason,
                   'same uid as ' || f.row_ref AS detail
            FROM r JOIN r AS f ON f.uid = r.uid AND f.k = 1 WHERE r.k > 1""", c)
        bad = (f"CASE WHEN _caption IS NULL THEN 'null caption' WHEN NOT regexp_matches(_caption, '{ws_re}') "
               f"THEN 'empty caption' WHEN length(_caption) > $max_chars THEN 'caption too long' END")
        t(f"{tag}: all rejects in one pass from _in", f"""
            INSERT INTO _in_rej
            SELECT row_ref, reason, detail, record FROM (
                SELECT row_ref, key_ok, {bad} AS cap_reason,
                       'variant raw' || CASE WHEN _caption IS NOT NULL THEN ' (' || length(_caption) || ' characters)' ELSE '' END AS cap_detail,
                       left(_caption, 1000) AS rec
                FROM _in WHERE NOT key_ok OR NOT cap_ok) x,
            LATERAL (SELECT * FROM (VALUES
                ('no url or id', 'the record has no url and no id to key it', NULL, NOT key_ok),
                (cap_reason, cap_detail, rec, cap_reason IS NOT NULL),
                ('no valid caption', NULL, NULL, cap_reason IS NOT NULL AND key_ok)) v(reason, detail, record, on_)
                WHERE on_)
            WHERE x.row_ref NOT IN (SELECT row_ref FROM _in_dups)""", c)
        c.execute("INSERT INTO _in_rej SELECT row_ref, reason, detail, NULL FROM _in_dups")
        keep = "key_ok AND cap_ok AND row_ord NOT IN (SELECT row_ord FROM _in_dups)"
        t(f"{tag}: INSERT samples from _in (anti-join)", f"""
            INSERT INTO samples (uid, source, url, image_shard, image_key, image_path, sha256, width, height, extra, run_id)
            SELECT uid, $source, url, image_shard, image_key, image_path, sha256, width, height, extra, $run_id
            FROM (SELECT * FROM _in WHERE {keep}) n ANTI JOIN samples s USING (uid)""", c)
        t(f"{tag}: INSERT captions from _in (anti-join)", f"""
            INSERT INTO captions (caption_id, uid, variant, text, generator, provenance, source, run_id)
            SELECT n.* FROM (
                SELECT caption_id, uid, 'raw' AS variant, _caption AS text, 'alt-text' AS generator, NULL::JSON AS provenance,
                       $source AS source, $run_id AS run_id
                FROM _in WHERE {keep}) n ANTI JOIN captions c USING (caption_id)""", c)
        t(f"{tag}: COMMIT", "COMMIT", c)
        c.execute("DROP TABLE _in")
        out[f"{tag}: total"] = round(time.perf_counter() - t0, 3)
        out[f"{tag}: counts"] = {r[0]: r[1] for r in c.execute(
            "SELECT 'samples', count(*) FROM samples UNION ALL SELECT 'captions', count(*) FROM captions "
            "UNION ALL SELECT 'rejects ' || reason, count(*) FROM _in_rej GROUP BY reason ORDER BY 1").fetchall()}
        st.close()

    if "columns" in groups:
        columns_floor(path, work, memory_limit, threads, out)

    if "lean" in groups:
        lean("lean", "uid IS NOT NULL")
    if "lean2" in groups:
        lean("lean2", "url IS NOT NULL")
    if "temp" in groups:
        materialised("temp")
    if "keep" in groups:
        keep_filters()
    out["peak_rss_MB"] = round(peak_rss_mb())
    return out


def columns_floor(path: str, work: Path, memory_limit: str | None, threads: int | None, out: dict) -> None:
    """What each column curate writes costs: ``CREATE TABLE`` + ``INSERT ... SELECT`` of one
    column set from the parquet into a fresh DuckDB file, then close (the checkpoint), with
    wall and CPU seconds. No checks, no anti-joins: the cost of the data model alone.
    The tables mirror curate's schema (uid and caption_id as in curate/ids.py)."""
    import duckdb

    src = f"read_parquet('{path}')"
    uid = "md5_number('bench' || chr(31) || URL)::UUID"
    cid = f"md5_number(({uid})::VARCHAR || chr(31) || 'raw' || chr(31) || TEXT)::UUID"
    extra = "json_object('similarity', similarity)::JSON"
    sets = [
        ("raw copy: every input column", "*"),
        ("url", "URL"),
        ("text", "TEXT"),
        ("url + text", "URL, TEXT"),
        ("uid alone (md5 of source, url)", f"{uid} AS uid"),
        ("extra alone (json_object)", f"{extra} AS extra"),
        ("samples, as curate writes it", f"{uid} AS uid, 'bench' AS source, URL AS url, NULL::VARCHAR AS image_shard, "
         f"NULL::VARCHAR AS image_key, NULL::VARCHAR AS image_path, NULL::VARCHAR AS sha256, WIDTH::INTEGER AS width, "
         f"HEIGHT::INTEGER AS height, {extra} AS extra, 1::BIGINT AS run_id"),
        ("samples without uid", "'bench' AS source, URL AS url, NULL::VARCHAR AS image_shard, NULL::VARCHAR AS image_key, "
         f"NULL::VARCHAR AS image_path, NULL::VARCHAR AS sha256, WIDTH::INTEGER AS width, HEIGHT::INTEGER AS height, "
         f"{extra} AS extra, 1::BIGINT AS run_id"),
        ("captions, as curate writes it", f"{cid} AS caption_id, {uid} AS uid, 'raw' AS variant, TEXT AS text, "
         "'alt-text' AS generator, NULL::JSON AS provenance, 'bench' AS source, 1::BIGINT AS run_id"),
        ("captions without caption_id", f"{uid} AS uid, 'raw' AS variant, TEXT AS text, 'alt-text' AS generator, "
         "NULL::JSON AS provenance, 'bench' AS source, 1::BIGINT AS run_id"),
        ("captions without either id", "'raw' AS variant, TEXT AS text, 'alt-text' AS generator, "
         "NULL::JSON AS provenance, 'bench' AS source, 1::BIGINT AS run_id"),
    ]
    work.mkdir(parents=True, exist_ok=True)
    for label, cols in sets:
        db = work / "columns.duckdb"
        for f in (db, Path(str(db) + ".wal")):
            f.unlink(missing_ok=True)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        con = duckdb.connect(str(db), config=duck_config(memory_limit, threads))
        where = " WHERE TEXT IS NOT NULL" if "TEXT" in cols or "text" in cols else ""
        con.execute(f"CREATE TABLE t AS SELECT {cols} FROM {src} LIMIT 0")
        con.execute(f"INSERT INTO t SELECT {cols} FROM {src}{where}")
        con.close()
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        mb = db.stat().st_size / 1e6
        out[f"columns: {label}"] = {"s": round(dt, 2), "cpu_s": round(cpu, 2), "db_MB": round(mb)}
        print(json.dumps({"experiment": f"columns: {label}", "seconds": round(dt, 3), "cpu_s": round(cpu, 2),
                          "db_MB": round(mb)}), file=sys.stderr, flush=True)
        db.unlink(missing_ok=True)


# --------------------------------------------------------------------------- parent
def code_state() -> dict:
    """Which curate code is measured: git HEAD, uncommitted files under curate/, a content hash."""
    import hashlib

    root = HERE.parent
    st: dict = {}
    try:
        st["git_head"] = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, check=False).stdout.strip()
        st["dirty"] = [ln[3:] for ln in subprocess.run(["git", "-C", str(root), "status", "--porcelain", "curate"],
                                                        capture_output=True, text=True, check=False).stdout.splitlines()]
    except OSError:
        pass
    h = hashlib.sha256()
    for f in sorted((root / "curate").rglob("*.py")):
        h.update(f.read_bytes())
    st["curate_sha"] = h.hexdigest()[:12]
    return st


def fmt_table(rows: list[list[str]], head: list[str], left_last: bool = False) -> str:
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    last = len(w) - 1 if left_last else None
    def line(r):
        return "| " + " | ".join(str(x).ljust(n) if i in (0, last) else str(x).rjust(n)
                                 for i, (x, n) in enumerate(zip(r, w))) + " |"
    sep = "|" + "|".join("-" * (n + 1) + ("-" if i in (0, last) else ":") for i, n in enumerate(w)) + "|"
    return "\n".join([line(head), sep] + [line(r) for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows of the generated file (default 10M)")
    ap.add_argument("--path", type=Path, default=None,
                    help="parquet to ingest (default $TMPDIR/curate_bench/captions_<rows>.parquet, generated if missing)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--memory-limit", action="append", default=None,
                    help="also run curate with this store memory_limit (repeatable; default 1GB; 'none' for no extra run)")
    ap.add_argument("--methods", default=",".join(BASE_METHODS), help="comma-separated subset of curate,duckdb,pandas")
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: DuckDB's, = cores)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE]",
                    help="also run curate and duckdb with these DuckDB settings, e.g. pio:preserve_insertion_order=false; "
                         "'duckdb+LABEL:...' for one method only, 'LABEL@1GB:...' under a memory limit (repeatable)")
    ap.add_argument("--compare-ref", action="append", default=[],
                    help="also run curate as of this git commit (exported with git archive; repeatable)")
    ap.add_argument("--profile", action="store_true", help="time each SQL statement of one curate ingest")
    ap.add_argument("--operators", action="store_true", help="with --profile: also DuckDB-profile each statement")
    ap.add_argument("--experiments", action="store_true", help="time alternative formulations of the heavy steps")
    ap.add_argument("--experiment-groups", default=None,
                    help=f"with --experiments: comma-separated subset of {','.join(EXPERIMENT_GROUPS)}")
    ap.add_argument("--profile-memory-limit", default=None, help="memory_limit for --profile/--experiments runs")
    ap.add_argument("--keep", action="store_true", help="keep the databases made (under $TMPDIR/curate_bench/work)")
    # internal
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child:
        ml = a.memory_limit[0] if a.memory_limit else None
        if a.child == "profile":
            r = profile_child(str(a.path), a.work, ml, a.threads, operators=False)
        elif a.child == "profile+operators":
            r = profile_child(str(a.path), a.work, ml, a.threads, operators=True)
        elif a.child == "experiments":
            r = experiments_child(str(a.path), a.work, ml, a.threads,
                                  tuple(a.experiment_groups.split(",")) if a.experiment_groups else EXPERIMENT_GROUPS)
        else:
            r = child(a.child, str(a.path), a.work, ml, a.threads, json.loads(a.settings) if a.settings else None)
        print(json.dumps(r), flush=True)
        return

    tmp = Path(tempfile.gettempdir()) / "curate_bench"
    path = a.path
    if path is None:
        sys.path.insert(0, str(HERE))
        from gen_captions import default_path, generate

        path = default_path(a.rows)
        if not path.exists():
            print(f"generating {path} ...", file=sys.stderr, flush=True)
            print(json.dumps({"generated": generate(path, a.rows)}), flush=True)
    path = path.resolve()
    # Warm the page cache once (untimed) so no method pays the cold read.
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    file_mb = path.stat().st_size / 2**20

    limits = [m for m in (a.memory_limit or ["1GB"]) if m and m.lower() != "none"]
    # (name, memory_limit, source tree, settings)
    methods: list[tuple[str, str | None, Path | None, dict | None]] = [(m, None, None, None) for m in a.methods.split(",") if m]
    base = [m for m, _, _, _ in methods]
    methods += [(f"{b}@{m}", m, None, None) for m in limits for b in ("curate", "duckdb") if b in base]
    for spec in a.variant:  # [METHOD+]LABEL[@LIMIT]:KEY=VALUE[,KEY=VALUE]
        head, _, kvs = spec.partition(":")
        settings = dict(kv.split("=", 1) for kv in kvs.split(",") if kv)
        head, _, ml = head.partition("@")
        only, _, label = head.rpartition("+")
        for b in ("curate", "duckdb"):
            if b in base and only in ("", b):
                methods.append((f"{b}+{label}" + (f"@{ml}" if ml else ""), ml or None, None, settings))
    for ref in a.compare_ref:
        # The export is cached by the commit's full hash, never by the name given: a cache
        # keyed by "HEAD" silently kept measuring whatever HEAD was when it was first made.
        sha = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dest = tmp / f"ref_{sha}"
        if not (dest / "curate").exists():
            dest.mkdir(parents=True, exist_ok=True)
            arch = subprocess.run(["git", "-C", str(HERE.parent), "archive", sha, "curate", "sql"], capture_output=True,
                                  check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
        methods.append((f"curate[{ref}={sha[:7]}]" if not sha.startswith(ref) else f"curate[{ref}]", None, dest, None))
    import duckdb

    meta = {"file": str(path), "file_MB": round(file_mb, 1), "reps": a.reps, "python": sys.version.split()[0],
            "duckdb": duckdb.__version__, "cpus": os.cpu_count(), "threads": a.threads or "default",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **code_state()}
    print(json.dumps({"meta": meta}), flush=True)

    results: dict[str, list[dict]] = {m[0]: [] for m in methods}
    for rep in range(a.reps):
        k = rep % len(methods)
        order = methods[k:] + methods[:k]
        for name, ml, src, settings in order:
            safe = "".join(ch if ch.isalnum() else "_" for ch in name)
            r = run_child(name, path, tmp / "work" / f"{safe}_{rep}", ml, a.threads, a.keep, src, settings)
            r["rep"] = rep
            results[name].append(r)
            print(json.dumps(r), flush=True)

    if a.reps:
        ok = {m: [x for x in rs if "error" not in x] for m, rs in results.items()}
        med = {m: statistics.median(x["seconds"] for x in rs) for m, rs in ok.items() if rs}
        base = {b: med.get(b) for b in ("duckdb", "pandas")}
        rows_in = next((rs[0]["rows_in"] for rs in ok.values() if rs), 0)
        head = ["method", "median s", "spread", "runs (s)", "rows/s", "peak RSS MB", "vs duckdb", "vs pandas"]
        table = []
        for m, rs in results.items():
            rss = statistics.median(x["peak_rss_MB"] for x in rs)
            failed = [x for x in rs if "error" in x]
            if m not in med:
                err = failed[0]["error"]
                table.append([m, "FAILED", "-", " ".join(f"({x['seconds']:.1f})" for x in rs), "-", f"{rss:,.0f}",
                              "-", "-"])
                print(json.dumps({"summary": m, "failed": len(failed), "runs": len(rs), "error": err,
                                  "seconds_to_failure": [round(x["seconds"], 2) for x in failed],
                                  "peak_rss_MB": rss, "file_MB": round(file_mb, 1)}), flush=True)
                continue
            ts = [x["seconds"] for x in ok[m]]
            spread = (max(ts) - min(ts)) / med[m] * 100
            rb = f"{base['duckdb'] / med[m]:.2f}x" if base["duckdb"] else "-"
            rp = f"{base['pandas'] / med[m]:.2f}x" if base["pandas"] else "-"
            runs = " ".join(f"{x['seconds']:.1f}" if "error" not in x else f"(failed {x['seconds']:.1f})" for x in rs)
            table.append([m, f"{med[m]:.2f}", f"{spread:.0f}%", runs,
                          f"{rows_in / med[m] / 1e6:.2f}M", f"{rss:,.0f}", rb, rp])
            summary = {"summary": m, "median_s": round(med[m], 3), "spread_pct": round(spread, 1),
                       "times": [round(x, 2) for x in ts], "failed": len(failed), "rows_per_s": round(rows_in / med[m]),
                       "peak_rss_MB": rss, "speed_vs_duckdb": round(base["duckdb"] / med[m], 3) if base["duckdb"] else None,
                       "speed_vs_pandas": round(base["pandas"] / med[m], 3) if base["pandas"] else None,
                       "file_MB": round(file_mb, 1)}
            for extra in ("ingest_s", "close_s", "insert_s", "read_s", "db_MB", "rss_before_MB", "after_read_rss_MB"):
                vals = [x[extra] for x in ok[m] if extra in x]
                if vals:
                    summary[extra + "_median"] = round(statistics.median(vals), 3)
            print(json.dumps(summary), flush=True)
        print(f"\n{rows_in:,} rows, {path.name} ({file_mb:.0f} MB on disk), median of {a.reps}, "
              f"speed ratio = t(baseline) / t(method)\n", flush=True)
        print(fmt_table(table, head), flush=True)
        for m, rs in results.items():
            for x in rs:
                if "error" in x:
                    print(f"{m} rep {x['rep']} failed after {x['seconds']:.1f}s: {x['error']}", flush=True)

    if a.profile:
        mode = "profile+operators" if a.operators else "profile"
        modes = ["profile"] + (["profile+operators"] if a.operators else [])
        for mode in modes:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--path", str(path),
                   "--work", str(tmp / "work" / mode.replace("+", "_"))]
            if a.profile_memory_limit:
                cmd += ["--memory-limit", a.profile_memory_limit]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if not a.keep:
                shutil.rmtree(tmp / "work" / mode.replace("+", "_"), ignore_errors=True)
            if p.returncode:
                raise SystemExit(p.stderr[-3000:])
            r = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
            print(json.dumps(r), flush=True)
            tot = r["ingest_s"]
            if r.get("error"):
                print(f"\n{mode}: FAILED after {tot:.2f}s: {r['error']}")
            print(f"\n{mode}: ingest {tot:.2f}s (open {r['open_s']:.2f}s, close/checkpoint {r['close_s']:.2f}s), "
                  f"peak RSS {r['peak_rss_MB']} MB\n")
            agg: dict[str, list] = {}
            for st in r["statements"]:
                agg.setdefault(st["label"], []).append(st)
            rows = []
            for lab, sts in sorted(agg.items(), key=lambda kv: -sum(x["seconds"] for x in kv[1])):
                sec = sum(x["seconds"] for x in sts)
                if sec < 0.01 and mode == "profile+operators":
                    continue
                ops = "; ".join(f"{o['op']} {o['s']:.2f}s" for x in sts for o in x.get("top_operators", [])[:3])
                rows.append([lab, len(sts), f"{sec:.2f}", f"{100 * sec / tot:.0f}%"] + ([ops] if a.operators and mode != "profile" else []))
            print(fmt_table(rows, ["statement", "n", "s", "share"] + (["top operators (operator time)"] if mode != "profile" else []),
                            left_last=mode != "profile"))

    if a.experiments:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "experiments", "--path", str(path),
               "--work", str(tmp / "work" / "experiments")]
        if a.experiment_groups:
            cmd += ["--experiment-groups", a.experiment_groups]
        if a.profile_memory_limit:
            cmd += ["--memory-limit", a.profile_memory_limit]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        shutil.rmtree(tmp / "work" / "experiments", ignore_errors=True)
        if p.returncode:
            raise SystemExit(p.stderr[-3000:])
        r = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
        print(json.dumps(r), flush=True)
        print()
        print(fmt_table([[k, f"{v:.2f}" if isinstance(v, float) else v] for k, v in r.items() if k != "mode"],
                        ["experiment", "s"], left_last=True))

    end_state = code_state()
    if end_state.get("curate_sha") != meta.get("curate_sha"):
        print(f"WARNING: curate/ changed during the run ({meta.get('curate_sha')} -> {end_state.get('curate_sha')}); "
              "results mix code versions", flush=True)
    print(json.dumps({"end_code_state": end_state}), flush=True)


if __name__ == "__main__":
    main()
