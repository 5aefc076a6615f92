"""The one write path every ingest format goes through.

A format reader turns its files into a :class:`Prepared` plan: SQL for a *rows*
relation (one row per input record, sample columns plus one text column per caption
variant) and, for formats with a variable number of captions per sample, SQL for a
*long captions* relation. :func:`run_ingest` then, in **one transaction**:

1. records the run;
2. rejects with a reason: NULL, empty or over-long captions, caption variants whose name
   is not a name (:func:`curate.names.is_name`; ``bad variant name``), records whose uid
   repeats inside the input (``duplicate row`` when the content is the same, ``duplicate
   id`` when it differs; the first record by input order is kept), records with no valid
   caption, records whose uid already belongs to a sample of another source or of another
   url (``uid conflict``, naming that sample's source and url), and whatever the reader
   itself rejected (unparsable lines and the like);
3. appends samples and captions not already in the store (anti-joins on ``uid`` and
   ``caption_id``: ingesting the same input twice adds nothing).

**Accounting.** Every row read ends up in exactly one of three places: a sample added,
a sample already present (same uid, same source, same url), or rejected. A *rejected
row* is one that became no sample (a caption reject of a row that still became a sample
is recorded, but the row is not counted as rejected). :func:`run_ingest` checks
``read = added + already present + rejected`` and fails (nothing written) when it does
not hold; the summary line states the three numbers.

A reader's own rejects are of whole records that never reached the rows relation, or of
parts (a caption, a vertex) of a record that did. ``reader_rejects_sql`` may say which
in a BOOLEAN column ``whole``; without it, when the reader gives ``records_in``, a reject
is of a part when its ``row_ref`` is a row's, or a row's followed by a space and more
(``f.jsonl:line 3 vertices[0]``), and of a whole record otherwise; without either, every
reader reject is taken as one of a part.

Any error rolls the whole transaction back: a failed ingest leaves the store exactly
as it was. DuckDB streams the input through these statements, so memory stays bounded
by its ``memory_limit`` whatever the input size.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb

from ..errors import CurateError, InputError, StoreError
from ..ids import caption_id_sql
from ..names import MAX_LEN, check_name
from ..runs import Run
from ..store import Store

#: Captions longer than this many characters are rejected (``caption too long``).
MAX_CAPTION_CHARS = 20_000
RECORD_CHARS = 1000

#: Every character Python's ``str.isspace`` accepts: a caption made only of these is empty.
WHITESPACE = "".join(ch for ch in map(chr, range(0x3001)) if ch.isspace())
#: RE2 pattern matching any character that is not in WHITESPACE.
NONSPACE_RE = "[^" + "".join(f"\\x{{{ord(ch):x}}}" for ch in WHITESPACE) + "]"

#: SQL twin of :func:`curate.names.is_name` (without ``lower``) over a VARCHAR expression;
#: tests/test_ingest_accounting.py checks the two agree.
NAME_RE = "[A-Za-z0-9][A-Za-z0-9_.-]*"


def name_sql(expr: str) -> str:
    return f"coalesce(regexp_full_match({expr}, '{NAME_RE}') AND length({expr}) <= {MAX_LEN}, false)"


SAMPLE_COLUMNS = ("uid", "url", "image_shard", "image_key", "image_path", "sha256", "width", "height", "extra")


@dataclass(frozen=True)
class Variant:
    """A caption variant held in a column of the rows relation."""

    variant: str
    column: str
    generator: str | None = None
    provenance_sql: str | None = None  # SQL expression over the rows relation, JSON or NULL


@dataclass
class Prepared:
    """What a reader hands to :func:`run_ingest`.

    ``rows_sql`` must select ``row_ref`` (VARCHAR), ``row_ord`` (BIGINT, unique, input order),
    the :data:`SAMPLE_COLUMNS` and the variant text columns. ``long_captions_sql``, if
    given, selects ``uid, row_ref, variant, text, generator, provenance``; long captions are
    attached to their sample by ``uid``, so a reader that uses them must reject repeated
    uids itself (:class:`curate.ingest.jsonrecords.Collected` does), and repeated texts of
    one variant of one sample are stored once.
    ``reader_rejects_sql`` selects ``row_ref, reason, detail, record`` and optionally
    ``whole`` (BOOLEAN: the reject is of a whole record that never reached ``rows_sql``;
    see the module docstring for the rule without it).
    """

    fmt: str
    source: str
    config: dict[str, Any]
    rows_sql: str
    variants: list[Variant] = field(default_factory=list)
    long_captions_sql: str | None = None
    reader_rejects_sql: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    require_caption: bool = True
    register: dict[str, Any] = field(default_factory=dict)  # Arrow tables to register by name
    after: Callable[[duckdb.DuckDBPyConnection, int], dict[str, int]] | None = None
    max_caption_chars: int = MAX_CAPTION_CHARS
    #: Optional: a condition on the reader's own columns, appended to ``rows_sql`` as its
    #: ``WHERE``, that holds for every row whose ``row_ord`` is in ``{ords}`` (a query of
    #: ``row_ord``s). It may hold for more rows: they are then matched on ``row_ord``. It
    #: lets the few flagged rows be read back without building every row first.
    rows_where_ord: str | None = None
    #: Optional: the input records the reader saw, when some never reach ``rows_sql``
    #: (records it rejected itself); reported as the rows read instead of the row count,
    #: and checked to equal the rows plus the reader's rejects of whole records.
    records_in: int | None = None
    #: A uid that is already a sample of *another* source with the same url is that
    #: sample (already present), not a ``uid conflict``: img2dataset's download of a URL
    #: table ingested under another source name links to its samples.
    same_url_links_sources: bool = False


@dataclass
class IngestResult:
    run_id: int
    fmt: str
    source: str
    rows_in: int
    samples_added: int
    captions_added: int
    rejected: int  # reject rows written for this run (reasons below), captions' included
    already_present: int
    seconds: float
    by_variant: dict[str, int] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)
    #: rows read that became no sample; rows_in == samples_added + already_present + rows_rejected
    rows_rejected: int = 0

    def summary(self) -> str:
        caps = f"{self.captions_added:,} captions added"
        if self.by_variant:
            caps += " (" + ", ".join(f"{v}: {n:,}" for v, n in sorted(self.by_variant.items())) + ")"
        parts = [
            f"ingest {self.fmt} into source {self.source!r}: read {self.rows_in:,} rows: {self.samples_added:,} added, "
            f"{self.already_present:,} already present, {self.rows_rejected:,} rejected",
            caps,
        ]
        for k, v in self.extra.items():
            parts.append(f"{v:,} {k}")
        if self.rejected:
            reasons = ", ".join(f"{r}: {n:,}" for r, n in sorted(self.reject_reasons.items()))
            parts.append(f"{self.rejected:,} rejects recorded ({reasons}); see `curate sql --query store.rejects`")
        parts.append(f"{self.seconds:.1f}s, run {self.run_id}")
        return "; ".join(parts)


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_ingest(store: Store, plan: Prepared) -> IngestResult:
    if store.read_only:
        raise CurateError(f"store {store.path} is open read-only")
    for v in plan.variants:  # names from code or a flag (--variant): a configuration error
        check_name("caption variant", v.variant)
    con = store.con
    t0 = time.perf_counter()
    params = {"source": plan.source, **plan.params}
    for name, table in plan.register.items():
        con.register(name, table)
    con.begin()
    try:
        result = _ingest_in_transaction(store, plan, params, t0)
        con.commit()
    except BaseException as e:
        # A failed COMMIT (a full disk) has already ended the transaction, and a fatal
        # error invalidates the connection: ROLLBACK then fails too, and its message
        # ("no transaction is active") must not hide the cause.
        _rollback(con)
        if isinstance(e, duckdb.Error):
            raise ingest_error(plan.fmt, e) from None
        raise
    finally:
        for name in plan.register:
            try:
                con.unregister(name)
            except duckdb.Error:
                pass
    return result


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.rollback()
    except duckdb.Error:
        pass  # no transaction left to roll back (a failed commit ends it); the store is as it was


class AccountingError(CurateError):
    """The rows read do not add up to added + already present + rejected: a bug in a
    reader or in :mod:`curate.ingest.core`, caught before anything is written."""


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = " ".join(lines[:2]) if lines else type(e).__name__
    if isinstance(e, duckdb.OutOfMemoryException) or "Out of Memory" in msg:
        msg = lines[0] + (" (DuckDB's memory_limit is too small for this input: raise CURATE_MEMORY_LIMIT or "
                "Store.open(memory_limit=...); wide rows need more than narrow ones)")
    return msg


def ingest_error(fmt: str, e: duckdb.Error) -> CurateError:
    """A DuckDB error while reading an input or writing the store, as one line. A full
    disk (the store's catalog, its WAL or its ``tmp/`` spill space) is a StoreError."""
    msg = _first_line(e)
    if "No space left on device" in msg or "Disk full" in msg:
        return StoreError(f"ingest {fmt} failed, nothing was written: no space left on the device "
                          f"({msg}); free space there and run again")
    return InputError(f"ingest {fmt} failed, nothing was written: {msg}")


def _p(params: dict[str, Any], sql: str) -> dict[str, Any]:
    """Only the parameters a statement uses (DuckDB refuses unused named parameters)."""
    return {k: v for k, v in params.items() if re.search(rf"\${re.escape(k)}\b", sql)}


def _ingest_in_transaction(store: Store, plan: Prepared, params: dict[str, Any], t0: float) -> IngestResult:
    con = store.con
    cfg = {"format": plan.fmt, "source": plan.source, **plan.config}
    # The runs row is written inside the ingest's transaction: a failed ingest leaves no row.
    run = Run(store, "ingest", f"ingest.{plan.fmt}", cfg, record=cfg, hash=config_hash(cfg), con=con, mark=False,
              t0=t0)
    run_id = run.id
    params = {**params, "run_id": run_id, "max_chars": plan.max_caption_chars, "nonspace": NONSPACE_RE,
              "links": plan.same_url_links_sources}

    def q(sql: str, extra: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
        # The input relations are spliced in as subqueries: DuckDB cannot prepare a view
        # with parameters, and they are re-read (streamed) by each statement.
        sql = sql.replace("_in_rows", f"({plan.rows_sql})")
        if plan.long_captions_sql:
            sql = sql.replace("_in_long", f"({plan.long_captions_sql})")
        p = {**params, **(extra or {})}
        return con.execute(sql, _p(p, sql))

    def count(sql: str) -> int:
        n: int = q(f"SELECT count(*) FROM {sql}").fetchall()[0][0]
        return n

    rows_in = count("_in_rows")

    # Caption validity per variant column, evaluated on the row itself (no join). "Empty"
    # means no character outside WHITESPACE: a regex test, ~10x faster than trim() with a
    # 30-character set on 10M captions (benchmarks/RESULTS.md).
    def bad_reason(col: str) -> str:
        c = f'"{col}"'
        return (
            f"CASE WHEN {c} IS NULL THEN 'null caption' "
            f"WHEN NOT regexp_matches({c}, $nonspace) THEN 'empty caption' "
            f"WHEN length({c}) > $max_chars THEN 'caption too long' END"
        )

    def valid(col: str) -> str:
        c = f'"{col}"'
        return f"({c} IS NOT NULL AND length({c}) <= $max_chars AND regexp_matches({c}, $nonspace))"

    def long_valid(alias: str = "") -> str:
        """A long caption is valid when its text is and its variant is a name."""
        text = valid("text").replace('"text"', alias + '"text"')
        variant = name_sql(alias + '"variant"')
        return f"({text} AND {variant})"

    con.execute(
        "CREATE OR REPLACE TEMP TABLE _in_rej (row_ref VARCHAR, reason VARCHAR, detail VARCHAR, record VARCHAR)"
    )

    any_valid = " OR ".join(valid(v.column) for v in plan.variants)
    if plan.long_captions_sql:
        long_ok = f"uid IN (SELECT uid FROM _in_long WHERE {long_valid()})"
        any_valid = f"({any_valid}) OR {long_ok}" if any_valid else long_ok
    if plan.require_caption and not any_valid:
        raise InputError(f"ingest {plan.fmt}: no caption column is mapped")

    # 0. One narrow pass computes every row's uid, a hash of its url and caption validity;
    #    the checks below then read the few rows it flags (repeated uid, no uid, a bad
    #    caption, a uid the store already holds for another source or url) instead of
    #    re-reading the input and re-hashing every uid twice more (benchmarks/RESULTS.md).
    flags = [f"{valid(v.column)} AS _v{i}" for i, v in enumerate(plan.variants)]
    q("CREATE OR REPLACE TEMP TABLE _in_keys AS SELECT row_ord, uid, "
      "CASE WHEN url IS NOT NULL THEN hash(url) END AS _uh"
      f"{''.join(', ' + f for f in flags)} FROM _in_rows")
    con.execute("CREATE OR REPLACE TEMP TABLE _in_dupuids AS SELECT uid FROM _in_keys GROUP BY uid HAVING count(uid) > 1")
    # Rows whose uid the store already has. It is the same sample (already present) when it
    # is of this source and has this row's url (a row without a url cannot contradict it);
    # otherwise the uid belongs to another sample: a conflict, not a silent merge. (No
    # aggregation and no sample columns here: on a re-ingest every row is in this table,
    # and the conflicts' details are read back for the few flagged rows only.)
    q(f"""
        CREATE OR REPLACE TEMP TABLE _in_seen AS
        SELECT k.row_ord, k.uid, {_conflict("k._uh IS NOT NULL", "s.url IS NOT NULL AND hash(s.url) = k._uh")} AS conflict
        FROM _in_keys AS k JOIN samples AS s USING (uid)
    """)
    flagged = ["uid IS NULL", "uid IN (SELECT uid FROM _in_dupuids)",
               "row_ord IN (SELECT row_ord FROM _in_seen WHERE conflict)"]
    flagged += [f"NOT _v{i}" for i in range(len(plan.variants))]
    if plan.require_caption:
        flagged.append("NOT (" + (" OR ".join(f"_v{i}" for i in range(len(plan.variants))) or "false")
                       + (f" OR {long_ok}" if plan.long_captions_sql else "") + ")")
    q(f"CREATE OR REPLACE TEMP TABLE _in_flag AS SELECT row_ord, uid FROM _in_keys WHERE {' OR '.join(flagged)}")
    cols = ", ".join(["r.row_ref", "r.row_ord", "f.uid", "r.url"] + [f'r."{v.column}"' for v in plan.variants])
    flagged_rows = "_in_rows"
    if plan.rows_where_ord:
        # Only the flagged rows are built (row_ref, url, text) instead of every row before
        # the join: half the time on a 2M-row parquet (benchmarks/RESULTS.md).
        flagged_rows = f"({plan.rows_sql} WHERE {plan.rows_where_ord.format(ords='SELECT row_ord FROM _in_flag')})"
    q(f"CREATE OR REPLACE TEMP TABLE _in_det AS SELECT {cols} FROM {flagged_rows} AS r JOIN _in_flag AS f USING (row_ord)")

    # 1. Repeated uids inside this input: keep the first by input order. (_in_det holds
    #    every row of a repeated uid.)
    fingerprint = " || chr(30) || ".join(
        ["coalesce(url, '')"] + [f"coalesce(\"{v.column}\", '')" for v in plan.variants]
    ) or "''"
    q(f"""
        CREATE OR REPLACE TEMP TABLE _in_dups AS
        WITH d AS (SELECT uid FROM _in_dupuids),
        r AS (
            SELECT r.row_ref, r.row_ord, r.uid, {fingerprint} AS fp,
                   row_number() OVER (PARTITION BY r.uid ORDER BY r.row_ord) AS k
            FROM _in_det AS r SEMI JOIN d USING (uid)
        )
        SELECT r.row_ref, r.row_ord, r.uid,
               CASE WHEN r.fp = f.fp THEN 'duplicate row' ELSE 'duplicate id' END AS reason,
               'same uid as ' || f.row_ref AS detail
        FROM r JOIN r AS f ON f.uid = r.uid AND f.k = 1
        WHERE r.k > 1
    """)
    q("INSERT INTO _in_rej SELECT row_ref, reason, detail, NULL FROM _in_dups")

    # 2. Every per-row reject, over the flagged rows: no identity, bad captions per
    #    variant, and (when captions are required) no valid caption at all.
    def item(cond: str, reason: str, detail: str, record: str) -> str:
        return (f"CASE WHEN {cond} THEN {{'reason': {reason}, 'detail': {detail}, "
                f"'record': ({record})::VARCHAR}} END")

    items = [item("uid IS NULL", "'no url or id'", "'the record has no url and no id to key it'", "NULL")]
    conds = ["uid IS NULL"]
    for v in plan.variants:
        c = f'"{v.column}"'
        detail = (f"'variant {_lit(v.variant)}' || CASE WHEN {c} IS NOT NULL "
                  f"THEN ' (' || length({c}) || ' characters)' ELSE '' END")
        items.append(item(f"uid IS NOT NULL AND NOT {valid(v.column)}", bad_reason(v.column), detail,
                          f"left({c}, {RECORD_CHARS})"))
        conds.append(f"NOT {valid(v.column)}")
    if plan.require_caption:
        items.append(item(f"uid IS NOT NULL AND NOT ({any_valid})", "'no valid caption'", "NULL::VARCHAR", "NULL"))
        conds.append(f"NOT ({any_valid})")
    drop_cond = f"uid IS NULL OR NOT ({any_valid})" if plan.require_caption else "uid IS NULL"
    q(f"""
        CREATE OR REPLACE TEMP TABLE _in_bad AS
        SELECT row_ref, row_ord, ({drop_cond}) AS dropped,
               list_filter([{', '.join(items)}], lambda x: x IS NOT NULL) AS reasons
        FROM _in_det
        WHERE ({' OR '.join(conds)}) AND row_ord NOT IN (SELECT row_ord FROM _in_dups)
    """)
    con.execute("INSERT INTO _in_rej SELECT row_ref, r.reason, r.detail, r.record "
                "FROM (SELECT row_ref, unnest(reasons) AS r FROM _in_bad)")
    # The rows that do not become samples, as a small table: appending with an anti-join on
    # it is as fast as no filter, where a per-row predicate recomputes the uid (RESULTS.md).
    con.execute("CREATE OR REPLACE TEMP TABLE _in_drop AS SELECT row_ord FROM _in_dups "
                "UNION ALL SELECT row_ord FROM _in_bad WHERE dropped")

    # 3. A kept row whose uid is another source's sample, or this source's sample of
    #    another url: rejected with both sides named (the first holder stays as it was).
    q(f"""
        CREATE OR REPLACE TEMP TABLE _in_conf AS
        SELECT DISTINCT ON (d.row_ord) d.row_ref, d.row_ord, d.uid, d.url, s.source AS other_source,
               s.url AS other_url
        FROM _in_det AS d JOIN samples AS s USING (uid)
        WHERE {_conflict("d.url IS NOT NULL", "s.url = d.url")}
          AND d.row_ord IN (SELECT row_ord FROM _in_seen WHERE conflict)
          AND d.row_ord NOT IN (SELECT row_ord FROM _in_drop)
        ORDER BY d.row_ord, s.source, s.url
    """)
    con.execute("""
        INSERT INTO _in_rej
        SELECT row_ref, 'uid conflict',
               'uid ' || uid || ' already belongs to a sample of source ''' || other_source || ''' with '
               || coalesce('url ' || other_url, 'no url') || '; this row has ' || coalesce('url ' || url, 'no url'),
               url
        FROM _in_conf
    """)
    con.execute("INSERT INTO _in_drop SELECT row_ord FROM _in_conf")

    if plan.long_captions_sql:
        q(f"""
            INSERT INTO _in_rej
            SELECT row_ref,
                   CASE WHEN NOT {name_sql('variant')} THEN 'bad variant name' ELSE {bad_reason('text')} END,
                   'variant ' || coalesce(variant, 'NULL') || CASE WHEN NOT {name_sql('variant')}
                       THEN ' is not a name (1-{MAX_LEN} letters, digits, _ . -, starting with a letter or digit)'
                       ELSE '' END,
                   left(text, {RECORD_CHARS})
            FROM _in_long WHERE NOT {long_valid()}
        """)

    # The reader's own rejects; those of whole records count as rejected rows.
    reader_whole = 0
    if plan.reader_rejects_sql:
        q(f"CREATE OR REPLACE TEMP TABLE _in_rrej AS SELECT * FROM ({plan.reader_rejects_sql})")
        if "whole" not in [r[0] for r in con.execute("DESCRIBE _in_rrej").fetchall()]:
            con.execute("ALTER TABLE _in_rrej ADD COLUMN whole BOOLEAN")
        if plan.records_in is not None:
            _mark_whole_records(q)  # the rejects the reader did not classify itself
        q("UPDATE _in_rrej SET whole = false WHERE whole IS NULL")
        q(f"INSERT INTO _in_rej SELECT row_ref, reason, detail, left(record, {RECORD_CHARS}) FROM _in_rrej")
        reader_whole = count("(SELECT DISTINCT row_ref FROM _in_rrej WHERE whole)")

    # 4. Append what is new: the kept rows whose uid the store did not have (_in_seen holds
    #    those it had; an anti-join on it spares a second join of the input with samples).
    cols = ", ".join(SAMPLE_COLUMNS)
    before = count("samples")
    q(f"""
        INSERT INTO samples (uid, source, url, image_shard, image_key, image_path, sha256, width, height, extra, run_id)
        SELECT uid, $source, url, image_shard, image_key, image_path, sha256, width, height, extra, $run_id
        FROM (SELECT {cols}, row_ord FROM _in_rows AS r ANTI JOIN _in_drop USING (row_ord)) n
        ANTI JOIN _in_seen e USING (row_ord, uid)
    """)
    samples_added = count("samples") - before
    kept = count("(SELECT row_ord FROM _in_keys ANTI JOIN _in_drop USING (row_ord))")
    already_present = count("(SELECT row_ord FROM _in_keys SEMI JOIN _in_seen USING (row_ord, uid) "
                            "ANTI JOIN _in_drop USING (row_ord))")

    by_variant: dict[str, int] = {}
    before_c = count("captions")
    # The kept rows with a valid text of the variant come from _in_keys, with their uid: a
    # join on row_ord costs less than reading the url again, hashing it and testing each
    # text again (the append of a 10M-row parquet, 15.1 s -> 13.4 s; benchmarks/RESULTS.md).
    for i, v in enumerate(plan.variants):
        prov = v.provenance_sql or "NULL::JSON"
        cid = caption_id_sql("uid", f"'{_lit(v.variant)}'", f'"{v.column}"')
        sql = f"""
            INSERT INTO captions (caption_id, uid, variant, text, generator, provenance, source, run_id)
            SELECT n.* FROM (
                SELECT {cid} AS caption_id, uid, '{_lit(v.variant)}' AS variant, "{v.column}" AS text,
                       $generator::VARCHAR AS generator, {prov} AS provenance, $source AS source, $run_id AS run_id
                FROM (SELECT * EXCLUDE (uid) FROM _in_rows) AS r
                JOIN (SELECT row_ord, uid FROM _in_keys ANTI JOIN _in_drop USING (row_ord) WHERE _v{i}) AS k USING (row_ord)
            ) n ANTI JOIN captions c USING (caption_id)
        """
        q(sql, {"generator": v.generator})
        now = count("captions")
        by_variant[v.variant] = now - before_c
        before_c = now
    if plan.long_captions_sql:
        cid = caption_id_sql("l.uid", "l.variant", "l.text")
        q(f"""
            INSERT INTO captions (caption_id, uid, variant, text, generator, provenance, source, run_id)
            SELECT n.* FROM (
                SELECT DISTINCT ON (caption_id) {cid} AS caption_id, l.uid, l.variant, l.text, l.generator,
                       l.provenance::JSON, $source, $run_id
                FROM _in_long l SEMI JOIN (SELECT uid FROM _in_rows ANTI JOIN _in_drop USING (row_ord)) k USING (uid)
                WHERE {long_valid('l.')}
                ORDER BY caption_id, l.row_ref
            ) n ANTI JOIN captions c USING (caption_id)
        """)
        for variant, n in q("SELECT variant, count(*) FROM captions WHERE run_id = $run_id GROUP BY 1").fetchall():
            by_variant[variant] = n

    extra: dict[str, int] = {}
    if plan.after is not None:
        extra = plan.after(con, run_id) or {}

    captions_added = sum(by_variant.values())
    # Rejects already recorded for this source (a re-ingest of the same input) are not written twice.
    q("""
        INSERT INTO rejects SELECT $run_id, $source, r.row_ref, r.reason, r.detail, r.record
        FROM _in_rej r WHERE NOT EXISTS (
            SELECT 1 FROM rejects x WHERE x.source = $source AND x.row_ref IS NOT DISTINCT FROM r.row_ref
              AND x.reason = r.reason AND x.detail IS NOT DISTINCT FROM r.detail)
    """)
    reasons = dict(con.execute("SELECT reason, count(*) FROM _in_rej GROUP BY 1").fetchall())
    rejected = sum(reasons.values())

    # The accounting: every row read is added, already present or rejected, exactly once.
    rows_read = rows_in + reader_whole if plan.records_in is None else plan.records_in
    rows_rejected = rows_in - kept + reader_whole
    if samples_added + already_present != kept or rows_read != samples_added + already_present + rows_rejected:
        raise AccountingError(
            f"ingest {plan.fmt} into source {plan.source!r}: the rows do not add up, nothing was written: read "
            f"{rows_read:,} rows ({rows_in:,} reached the write, the reader rejected {reader_whole:,} whole records) "
            f"but {samples_added:,} added + {already_present:,} already present + {rows_rejected:,} rejected = "
            f"{samples_added + already_present + rows_rejected:,}; this is a bug in the {plan.fmt} reader or "
            "curate/ingest/core.py, please report it with the input")

    seconds = time.perf_counter() - t0
    run.ok(con, rows_in=rows_read, rows_out=samples_added + captions_added, rows_rejected=rows_rejected,
           seconds=seconds,
           message=json.dumps({"samples": samples_added, "captions": captions_added, "already_present": already_present,
                               "rejects": rejected, **extra}))
    for t in ("_in_rej", "_in_bad", "_in_drop", "_in_keys", "_in_dupuids", "_in_flag", "_in_det", "_in_dups",
              "_in_seen", "_in_conf", "_in_rrej", "_in_rparts"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    return IngestResult(
        run_id=run_id, fmt=plan.fmt, source=plan.source, rows_in=rows_read, samples_added=samples_added,
        captions_added=captions_added, rejected=rejected, already_present=already_present,
        seconds=seconds, by_variant=by_variant, reject_reasons=reasons, extra=extra, rows_rejected=rows_rejected,
    )


def _conflict(has_url: str, same_url: str) -> str:
    """SQL: the store's sample ``s`` with this row's uid is *another* sample: of another
    source (unless ``$links`` and the urls agree), or of this source with another url.
    ``has_url``/``same_url`` test the row's url (or its hash) against ``s.url``."""
    return (f"CASE WHEN s.source <> $source THEN NOT ($links AND {has_url} AND coalesce({same_url}, false)) "
            f"ELSE {has_url} AND NOT coalesce({same_url}, false) END")


def _mark_whole_records(q: Callable[..., duckdb.DuckDBPyConnection]) -> None:
    """Set ``_in_rrej.whole`` (where the reader left it NULL) for reader rejects whose row_ref is neither a row's row_ref
    nor one followed by a space and more (a part of that row: ``f.jsonl:line 3 vertices[0]``).
    Each reject's candidate prefixes (the whole ref, and the ref cut before each space)
    are matched to the rows' refs by an equi-join."""
    q("""
        CREATE OR REPLACE TEMP TABLE _in_rparts AS
        WITH refs AS (SELECT DISTINCT row_ref FROM _in_rrej WHERE row_ref IS NOT NULL),
        cand AS (
            SELECT row_ref, row_ref AS prefix FROM refs
            UNION ALL
            SELECT row_ref, left(row_ref, i - 1) AS prefix FROM (
                SELECT row_ref, unnest(list_filter(range(1, length(row_ref) + 1),
                                                   lambda i: substr(row_ref, i, 1) = ' ')) AS i FROM refs)
        )
        SELECT DISTINCT c.row_ref FROM cand AS c SEMI JOIN (SELECT row_ref AS prefix FROM _in_rows) AS r USING (prefix)
    """)
    q("UPDATE _in_rrej SET whole = row_ref NOT IN (SELECT row_ref FROM _in_rparts) OR row_ref IS NULL "
      "WHERE whole IS NULL")


def _lit(s: str) -> str:
    return s.replace("'", "''")

