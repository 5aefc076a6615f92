"""Runs a stage over the rows it has not processed yet.

* **Resume by anti-join.** Pending rows are the input rows whose key has no row in the
  stage's output table under the same ``config_hash``. A run that dies is resumed by
  running it again; a run with other settings writes beside the old rows.
* **Append in a transaction.** Each batch's results and the run's counters are
  committed together, so a SIGKILL loses at most the batch in flight and never writes
  a batch twice.
* **One runs row per run** (stage, version, resolved config, rows in/out, seconds,
  status). Rows left ``running`` by a killed process are marked ``interrupted`` when
  the store is next written by a runner (DuckDB's file lock means no other writer can
  be alive then).
* **Executors.** ``executor="local"``: ``workers=1`` runs in-process, ``workers>1`` a
  local process pool (spawned processes, ``setup()`` once per worker).
  ``executor="ray"``: ``workers`` Ray actors, each calling ``setup()`` once (a model
  loads once per actor) and then the stage on the batches sent to it; Ray is started
  on this machine for the run (``num_cpus=workers``) unless it is already initialised
  or ``ray_address`` names a cluster (``"auto"`` or ``"ray://host:10001"``), and
  ``gpus_per_worker`` reserves GPUs per actor (Ray sets ``CUDA_VISIBLE_DEVICES``, so a
  stage with ``device="auto"`` finds its GPU). Either way this process reads the
  pending rows, sends batches out with at most two per worker in flight, and writes
  the results itself, in input order: DuckDB has one writer, and the resume and
  commit guarantees above do not depend on the executor.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import logging
import multiprocessing as mp
import os
from collections.abc import Generator, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from . import procs
from .errors import ConfigError, CurateError
from .runs import start_run
from .stages.base import Stage
from .store import Store, check_identifier, quote_ident

log = logging.getLogger("curate.runner")

META_COLUMNS = ("stage", "config_hash", "run_id")
#: what an executor yields: (input batch, the stage's result for it), in input order
_Results = Generator[tuple[pa.RecordBatch, pa.Table | pa.RecordBatch], None, None]
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 10_000
    workers: int = 1
    progress: bool | None = None  # None: a bar when stderr is a terminal
    limit: int | None = None  # process at most this many pending rows (then stop, resumable)
    executor: str = "local"  # "local" (in-process or a process pool) or "ray"
    ray_address: str | None = None  # executor="ray": None starts Ray here; "auto" or "ray://..." joins a cluster
    gpus_per_worker: float = 0.0  # executor="ray": GPUs reserved per actor

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if not (self.gpus_per_worker >= 0):
            raise ConfigError(f"gpus_per_worker must be 0 or more, got {self.gpus_per_worker}")
        if self.executor != "ray" and (self.ray_address is not None or self.gpus_per_worker):
            raise ConfigError("ray_address and gpus_per_worker need executor = \"ray\"")

    def resolved(self) -> dict[str, Any]:
        out: dict[str, Any] = {"batch_size": self.batch_size, "workers": self.workers, "limit": self.limit,
                               "executor": self.executor}
        if self.executor == "ray":
            out.update(ray_address=self.ray_address, gpus_per_worker=self.gpus_per_worker)
        return out


@dataclass
class RunResult:
    run_id: int
    stage: str
    config_hash: str
    rows_in: int
    rows_out: int
    pending_before: int
    seconds: float
    status: str
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        rate = self.rows_in / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.stage}: {self.rows_in:,} rows in, {self.rows_out:,} rows out "
                f"({self.pending_before:,} were pending), {self.seconds:.1f}s ({rate:,.0f} rows/s), run {self.run_id}")


def ensure_output_table(store: Store, stage: Stage) -> None:
    """Create the stage's attribute table, or check an existing one has its columns."""
    table = check_identifier(stage.output_table)
    in_cols = store.columns(stage.input_table)
    if not in_cols:
        raise ConfigError(f"{stage.registry_name()} reads table {stage.input_table!r}, which the store does not have")
    relation = stage.input_relation()
    if relation != quote_ident(stage.input_table):
        in_cols = {n: t for n, t, *_ in store.con.execute(f"DESCRIBE SELECT * FROM ({relation})").fetchall()}
    missing = [c for c in (stage.key, *stage.reads) if c not in in_cols]
    if missing:
        raise ConfigError(f"{stage.registry_name()} reads column(s) {', '.join(missing)} that {stage.input_table} lacks")
    want = {stage.key: in_cols[stage.key]}
    empty = pa.table({f.name: pa.array([], f.type) for f in stage.output_schema})
    store.con.register("_curate_schema_probe", empty)
    try:
        for name, typ, *_ in store.con.execute("DESCRIBE SELECT * FROM _curate_schema_probe").fetchall():
            want[name] = typ
    finally:
        store.con.unregister("_curate_schema_probe")
    want.update({"stage": "VARCHAR", "config_hash": "VARCHAR", "run_id": "BIGINT"})
    have = store.columns(table)
    if not have:
        cols = ", ".join(f"{quote_ident(check_identifier(n))} {t}" for n, t in want.items())
        store.con.execute(f"CREATE TABLE {quote_ident(table)} ({cols})")
        _create_views(store, stage)
        return
    if have != want:
        raise ConfigError(
            f"table {table} exists with columns {have}, but {stage.registry_name()} writes {want}; "
            "a stage whose output changes needs a new version and table name"
        )
    _create_views(store, stage)


def _create_views(store: Store, stage: Stage) -> None:
    for statement in stage.view_statements():
        store.con.execute(statement)


def _input(stage: Stage) -> str:
    relation = stage.input_relation()
    return relation if relation == quote_ident(stage.input_table) else f"({relation})"


def pending_sql(stage: Stage) -> str:
    cols = ", ".join(f"i.{quote_ident(check_identifier(c))}" for c in (stage.key, *stage.reads))
    key = quote_ident(check_identifier(stage.key))
    where = f"WHERE {stage.input_filter}" if stage.input_filter else ""
    order = f"ORDER BY i.{quote_ident(check_identifier(stage.input_order))}" if stage.input_order else ""
    return (
        f"SELECT {cols} FROM {_input(stage)} i "
        f"ANTI JOIN (SELECT {key} FROM {quote_ident(stage.output_table)} WHERE config_hash = $config_hash) o "
        f"ON i.{key} = o.{key} {where} {order}"
    )


def run_stage(store: Store, stage: Stage, options: RunOptions | None = None) -> RunResult:
    """Run ``stage`` over its pending rows; see the module docstring for the guarantees."""
    options = options or RunOptions()
    if store.read_only:
        raise CurateError(f"store {store.path} is open read-only")
    con = store.con
    if options.executor == "ray":
        from ._optional import require

        require("ray", purpose='executor = "ray"')  # before any work: a missing extra is a one-line error
    stage.preflight()
    stage = stage.prepare(store)
    ensure_output_table(store, stage)
    h = stage.config_hash()
    with start_run(store, "stage", stage.registry_name(), stage.config(), options=options.resolved(), hash=h,
                   interrupted="interrupted; run again to resume") as run:
        run_id = run.id
        sql = pending_sql(stage)
        companions = stage.companion_statements()
        pending = con.execute(f"SELECT count(*) FROM ({sql})", {"config_hash": h}).fetchall()[0][0]
        total = min(pending, options.limit) if options.limit is not None else pending
        log.info("run %d: %s has %d pending rows", run_id, stage.registry_name(), pending)
        rows_in = rows_out = 0
        extra: collections.Counter[str] = collections.Counter()
        bar = tqdm(total=total, unit="rows", desc=stage.registry_name(), disable=_no_bar(options), dynamic_ncols=True)
        reader_cur = con.cursor()
        writer = con.cursor()
        execute: _Results | None = None
        try:
            reader = reader_cur.sql(sql, params={"config_hash": h}).to_arrow_reader(options.batch_size)
            batches = _limited(reader, options.limit)
            execute = _execute_ray(stage, batches, options) if options.executor == "ray" else \
                _execute(stage, batches, options.workers)
            for batch, result in execute:
                out = _check_result(stage, batch, result)
                out = out.append_column("stage", pa.array([stage.registry_name()] * out.num_rows, pa.string()))
                out = out.append_column("config_hash", pa.array([h] * out.num_rows, pa.string()))
                out = out.append_column("run_id", pa.array([run_id] * out.num_rows, pa.int64()))
                rows_in += batch.num_rows
                rows_out += out.num_rows
                run.counts.update(rows_in=rows_in, rows_out=rows_out)  # what a failed run reports
                writer.begin()
                try:
                    writer.register("_curate_batch", out)
                    writer.execute(f"INSERT INTO {quote_ident(stage.output_table)} BY NAME SELECT * FROM _curate_batch")
                    for statement in companions:
                        writer.execute(statement)
                    run.progress(writer)  # the counters commit with the batch
                    writer.commit()
                except BaseException:
                    # nothing to roll back after a commit that failed (DuckDB ended the
                    # transaction) or that an interrupt arrived just after
                    with contextlib.suppress(duckdb.Error):
                        writer.rollback()
                    run.counts.clear()  # the runs row keeps the counters its last committed batch wrote
                    raise
                finally:
                    writer.unregister("_curate_batch")
                log.debug("run %d: committed batch of %d rows (%d so far)", run_id, batch.num_rows, rows_in)
                bar.update(batch.num_rows)
                counts = stage.batch_counts(out)
                if counts:
                    extra.update(counts)
                    elapsed = max(run.seconds, 1e-9)
                    bar.set_postfix({f"{k}/s": f"{v / elapsed:,.1f}" for k, v in extra.items()}, refresh=False)
        except BrokenProcessPool as e:
            intr = procs.as_interrupt(e)
            if intr is not None:  # the workers went with a signal this process got too
                raise intr from None
            run.fail("failed", f"a worker process died ({e})")
            raise CurateError(f"{stage.registry_name()}: a worker process died (out of memory or killed?); "
                              f"{rows_in:,} rows were committed, run again to resume, or with workers=1 "
                              "to see the error") from None
        finally:
            if execute is not None:
                execute.close()  # stops workers now (an error or an interrupt), not when collected
            bar.close()
            reader_cur.close()
            writer.close()
        seconds = run.seconds
        run.ok(rows_in=rows_in, rows_out=rows_out, seconds=seconds)
    return RunResult(run_id, stage.registry_name(), h, rows_in, rows_out, pending, seconds, "ok")


def _no_bar(options: RunOptions) -> bool | None:
    if options.progress is None:
        return None  # tqdm: disable when not a terminal
    return not options.progress


def _limited(reader: pa.RecordBatchReader, limit: int | None) -> Iterator[pa.RecordBatch]:
    left = limit
    for batch in reader:
        if left is not None:
            if left <= 0:
                return
            if batch.num_rows > left:
                batch = batch.slice(0, left)
            left -= batch.num_rows
        if batch.num_rows:
            yield batch


def _check_result(stage: Stage, batch: pa.RecordBatch, result: pa.Table | pa.RecordBatch) -> pa.Table:
    out = result if isinstance(result, pa.Table) else pa.Table.from_batches([result])
    want = [stage.key, *stage.output_schema.names]
    if sorted(out.column_names) != sorted(want):
        raise CurateError(f"{stage.registry_name()} returned columns {out.column_names}, expected {want}")
    out = out.select(want)
    if out.num_rows != batch.num_rows or not pc.all(pc.is_in(batch.column(stage.key), out.column(stage.key))).as_py():
        raise CurateError(
            f"{stage.registry_name()} returned {out.num_rows} rows for a batch of {batch.num_rows}: "
            "a stage must return one row per input key"
        )
    return out.cast(pa.schema([out.schema.field(stage.key), *stage.output_schema]))


# -- executors ------------------------------------------------------------------------
_WORKER_STAGE: Stage | None = None
_WORKER_ERROR: CurateError | None = None


def _init_worker(stage: Stage, parent_pid: int) -> None:
    global _WORKER_STAGE, _WORKER_ERROR
    procs.worker_init(parent_pid)  # before setup(): a model load takes seconds
    try:
        stage.setup()
    except CurateError as e:
        # An initializer that raises breaks the whole pool with a traceback; keep the
        # error and hand it back from the first batch, where the parent prints one line.
        _WORKER_ERROR = e
        return
    _WORKER_STAGE = stage


def _apply(batch: pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR
    assert _WORKER_STAGE is not None
    return _WORKER_STAGE(batch)


def _execute(stage: Stage, batches: Iterator[pa.RecordBatch],
             workers: int) -> _Results:
    if workers == 1:
        stage.setup()
        for b in batches:
            yield b, stage(b)
        return
    ctx = mp.get_context("spawn")
    with procs.guard("process pool"):
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                      initargs=(stage, os.getpid()))
        try:
            inflight: list[tuple[pa.RecordBatch, cf.Future[pa.Table | pa.RecordBatch]]] = []
            for b in batches:
                inflight.append((b, pool.submit(_apply, b)))
                if len(inflight) >= 2 * workers:
                    done_b, fut = inflight.pop(0)
                    yield done_b, fut.result()
            for done_b, fut in inflight:
                yield done_b, fut.result()
        except BaseException:
            # An error, Ctrl-C, SIGTERM or the consumer closing this generator: stop the
            # workers now instead of waiting for the batches in flight (their results
            # would be thrown away: nothing is committed past this point).
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True)


def _stop_pool(pool: cf.ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor has no public way to stop workers that are busy; its
    # ``_processes`` (pid -> Process) has been there since Python 3.2. The guard
    # around the pool kills anything this misses.
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)


class _RayWorker:
    """A Ray actor holding one set-up stage (its model loaded once)."""

    def __init__(self, stage: Stage) -> None:
        stage.setup()
        self.stage = stage

    def apply(self, batch: pa.RecordBatch) -> pa.Table | pa.RecordBatch:
        return self.stage(batch)


def _execute_ray(stage: Stage, batches: Iterator[pa.RecordBatch],
                 options: RunOptions) -> _Results:
    from ._optional import require

    ray = require("ray", purpose='executor = "ray"')
    with contextlib.ExitStack() as stack:
        started = False
        if not ray.is_initialized():
            # Ray started here dies with this process: its head processes fate-share
            # with it (Ray's own prctl), and the guard kills the rest (agents and actor
            # workers, which otherwise outlive a killed driver by a minute or more).
            stack.enter_context(procs.guard("Ray"))
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.WARNING}
            try:
                with procs.keep_signal_handlers():  # ray.init's SIGTERM handler calls sys.exit
                    if options.ray_address:
                        ray.init(address=options.ray_address, **kw)
                    else:
                        ray.init(num_cpus=options.workers, num_gpus=None if options.gpus_per_worker else 0, **kw)
            except Exception as e:  # noqa: BLE001 - ray.init raises ConnectionError, RuntimeError, ValueError, TypeError, OSError and bare Exception (ray/_private/node.py, services.py)
                where = f"the Ray cluster at {options.ray_address!r}" if options.ray_address else "a local Ray"
                raise CurateError(f"{stage.registry_name()}: could not start or reach {where}: "
                                  f"{_first(str(e))}") from None
            started = True
        actor = ray.remote(num_cpus=1, num_gpus=options.gpus_per_worker)(_RayWorker)
        actors = [actor.remote(stage) for _ in range(options.workers)]
        try:
            inflight: collections.deque[tuple[pa.RecordBatch, Any]] = collections.deque()  # (batch, ObjectRef)
            for i, b in enumerate(batches):
                inflight.append((b, actors[i % len(actors)].apply.remote(b)))
                if len(inflight) >= 2 * len(actors):
                    done_b, ref = inflight.popleft()
                    yield done_b, _ray_get(ray, stage, ref)
            while inflight:
                done_b, ref = inflight.popleft()
                yield done_b, _ray_get(ray, stage, ref)
        finally:
            for a in actors:
                ray.kill(a)
            if started:
                ray.shutdown()


def _ray_get(ray: Any, stage: Stage, ref: Any) -> pa.Table | pa.RecordBatch:
    """The result of one batch; a stage's own exception is raised as itself, a dead actor
    (out of memory, killed, a failing ``setup()``) as one CurateError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise CurateError(f"{stage.registry_name()}: a Ray task failed: {_first(str(e))}") from None
    except ray.exceptions.RayActorError as e:
        raise CurateError(f"{stage.registry_name()}: a Ray worker died ({_first(str(e))}); the rows committed so far "
                          "are kept, run again to resume") from None


def _first(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else text[:300]
