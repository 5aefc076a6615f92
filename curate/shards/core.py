"""``curate shards``: a training manifest to webdataset shards that open_clip streams.

:func:`write_shards` reads the manifest (:mod:`curate.shards.read`) once to count rows
and candidate probabilities, then streams it: each row's image is located
(:class:`curate.shards.plan.Locator`; decoded too with ``verify_images``), rows without
an image are excluded by reason, the rest become ``copies`` samples by weight, a seeded
buffer shuffle orders them, and every ``shard_size`` of them make one shard task,
written by ``workers`` processes (:func:`curate.shards.write.write_shard`), each writing
whole shards. The output folder:

* ``00000.tar`` ... (5 digits at least): ``{key}.{jpg|png|webp}``, ``{key}.txt`` and
  ``{key}.json`` per sample, the key being ``{uid}-{copy}``;
* ``00000_stats.json`` ...: DataComp's per-shard stats (``successes``) plus the
  planned count, failures by reason, drawn variants, bytes, sha256 and plan hash;
* ``sizes.json``: ``{shard file name: samples}``, what open_clip's
  ``get_dataset_size`` reads;
* ``shards.json``: the sidecar: the manifest's path and sha256, its policy hash, the
  seed, the options, counts, excluded rows by reason, the caption slot layout, the
  shards and their sha256, and open_clip's arguments.

Deterministic: the same manifest, options and seed give byte-identical shards, whatever
``workers`` is. Resumable: a killed run, run again with the same arguments, keeps the
finished shards whose plan hash and sha256 check out and rewrites the others. A folder
holding shards of another manifest or other options is refused (``overwrite`` clears
it first); a folder holding anything else is always refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import duckdb

from .. import __version__
from ..config import config_hash, from_dict, to_dict
from ..errors import ConfigError, CurateError
from ..images import ImageFailure, ImageRef
from .captions import MAX_SLOTS, Candidate, layout_error, open_clip_args, slot_count
from .plan import REASONS, Locator, copies, shuffled, verify
from .read import Manifest, Row, iter_rows, open_manifest, prepare, survey
from .write import Encoding, Entry, ShardTask, Wire, pack, plan_hash, write_shard

if TYPE_CHECKING:
    from ..store import Store

LAYOUT = "curate.shards.v1"
SIDECAR = "shards.json"
SIZES = "sizes.json"
MARKER = ".curate-shards.json"
_OURS = re.compile(r"(\d{5,}\.tar|\d{5,}_stats\.json|\.\d{5,}\.tar\.partial|\..+\.tmp)")
_EXAMPLES = 5


@dataclasses.dataclass(frozen=True)
class ShardOptions:
    """How a manifest becomes shards (checked by :mod:`curate.config` before any work).

    ``seed`` None takes the manifest's seed (its sidecar), else 0. ``repeat`` False
    writes every row once whatever its weight. ``caption_slots`` None picks the smallest
    exact slot count up to :data:`curate.shards.captions.MAX_SLOTS`."""

    shard_size: int = 10000
    seed: int | None = None
    shuffle_buffer: int = 10000
    repeat: bool = True
    repeat_factor: float = 1.0
    max_repeats: int = 100
    verify_images: bool = False
    reencode: Literal["jpeg"] | None = None
    max_size: int | None = None
    jpeg_quality: int = 90
    caption_epoch: int = 0
    caption_slots: int | None = None
    image_root: str | None = None
    workers: int = 1
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ConfigError(f"shard_size must be at least 1, got {self.shard_size}")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"shuffle_buffer must be 0 or more, got {self.shuffle_buffer}")
        if not self.repeat_factor > 0:
            raise ConfigError(f"repeat_factor must be positive, got {self.repeat_factor}")
        if self.max_repeats < 1:
            raise ConfigError(f"max_repeats must be at least 1, got {self.max_repeats}")
        if self.max_size is not None and self.reencode is None:
            raise ConfigError("max_size applies when re-encoding: give reencode = \"jpeg\" (--reencode jpeg) too")
        if self.max_size is not None and self.max_size < 1:
            raise ConfigError(f"max_size must be at least 1 pixel, got {self.max_size}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ConfigError(f"jpeg_quality must be from 1 to 95, got {self.jpeg_quality}")
        if self.caption_epoch < 0:
            raise ConfigError(f"caption_epoch must be 0 or more, got {self.caption_epoch}")
        if self.caption_slots is not None and not 1 <= self.caption_slots <= 1000:
            raise ConfigError(f"caption_slots must be from 1 to 1000, got {self.caption_slots}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")

    def shaping(self) -> dict[str, Any]:
        """The options the shards' bytes depend on (not workers, not overwrite)."""
        return {k: v for k, v in to_dict(self).items() if k not in ("workers", "overwrite")}


def shard_options(data: dict[str, Any], where: str = "shards") -> ShardOptions:
    return from_dict(ShardOptions, data, where)


@dataclasses.dataclass
class ShardResult:
    out: Path
    sidecar: dict[str, Any]
    seconds: float

    @property
    def counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = self.sidecar["counts"]
        return counts

    def summary(self) -> str:
        c = self.counts
        exc = c["excluded_rows"]
        late = c["excluded_while_writing"]
        parts = [f"shards: {c['samples']:,} samples in {c['shards']:,} shards ({c['shards_kept']:,} kept, "
                 f"{c['shards_written']:,} written) from {c['rows']:,} manifest rows"]
        if exc:
            parts.append(f"excluded {sum(exc.values()):,} rows (" + ", ".join(f"{k} {v:,}" for k, v in exc.items()) + ")")
        if late:
            parts.append(f"{sum(late.values()):,} samples failed while writing ("
                         + ", ".join(f"{k} {v:,}" for k, v in late.items()) + ")")
        if c["repeats_added"] or c["rows_without_copies"]:
            parts.append(f"weights: {c['repeats_added']:,} repeats added, {c['rows_without_copies']:,} rows drew no copy")
        mb = c["bytes"] / 1e6
        parts.append(f"{mb:,.1f} MB in {self.seconds:.1f}s -> {self.out}")
        return "; ".join(parts)


# -- the output folder ---------------------------------------------------------------
def _fingerprint(m: Manifest, options: ShardOptions, seed: int, slots: int) -> str:
    return config_hash(LAYOUT, {"manifest_sha256": m.sha256, "options": options.shaping(), "seed": seed,
                                "slots": slots})


def check_out(out: Path) -> list[str]:
    """The names in the output folder (none if it does not exist yet); a ConfigError if
    it is a file or holds anything curate shards did not write."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; give a folder for the shards")
    if not out.exists():
        return []
    names = [p.name for p in out.iterdir()]
    foreign = sorted(n for n in names if not (_OURS.fullmatch(n) or n in (SIDECAR, SIZES, MARKER)))
    if foreign:
        raise ConfigError(f"{out} holds files curate shards did not write ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); give an empty or new folder")
    return names


def _prepare_out(out: Path, fingerprint: str, overwrite: bool) -> None:
    names = check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = None
    for name in (MARKER, SIDECAR):
        if (out / name).is_file():
            try:
                previous = json.loads((out / name).read_text(encoding="utf-8")).get("fingerprint")
            except (OSError, ValueError, AttributeError):
                previous = "unreadable"
            break
    if previous is None and any(_OURS.fullmatch(n) for n in names):
        previous = "unknown"
    if previous not in (None, fingerprint):
        if not overwrite:
            raise ConfigError(f"{out} holds shards of another manifest or other options (fingerprint {previous}, "
                              f"this run {fingerprint}); give another folder, or --overwrite to replace them")
        for name in names:
            (out / name).unlink()
    (out / MARKER).write_text(json.dumps({"fingerprint": fingerprint, "layout": LAYOUT}) + "\n", encoding="utf-8")


def _tidy(out: Path, names: set[str]) -> None:
    """Remove shard files of ours that this plan does not name (an earlier, longer plan)
    and partial files left by a killed run."""
    for p in out.iterdir():
        if not _OURS.fullmatch(p.name):
            continue
        stem = p.name.split("_")[0].split(".tar")[0]
        if p.name.startswith(".") or stem not in names:
            p.unlink()


# -- running tasks -------------------------------------------------------------------
class _Inline:
    """The executor interface, running each call at once in this process (workers = 1)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_result(fn(*args))
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _executor(workers: int) -> Any:
    """Writer processes. On Linux they are forked: a writer runs only image reads,
    Pillow, hashing and file writes, never DuckDB, whose threads the planner holds (as
    :func:`curate.images.decode_loader` forks its decoders); spawning instead costs
    each writer a fresh interpreter and curate's imports. Elsewhere (macOS, Windows,
    where fork is unsafe or absent) they are spawned."""
    if workers <= 1:
        return _Inline()
    import multiprocessing

    method = "fork" if sys.platform == "linux" else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def _ref(row: Row, root: str | None) -> ImageRef:
    path = row.image_path
    if path and root and not os.path.isabs(path):
        path = os.path.join(root, path)
    return ImageRef(path, row.image_shard, row.image_key)


def _progress_bar(total: int, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="rows", desc="shards", disable=None if progress is None else not progress,
                dynamic_ncols=True)


# -- the run -------------------------------------------------------------------------
def write_shards(manifest: str | Path | Manifest, out: str | Path, options: ShardOptions | None = None,
                 store: Store | None = None, progress: bool | None = None) -> ShardResult:
    """Write the shards of ``manifest`` into the folder ``out`` (see the module
    docstring); ``store`` is needed for a ``json`` manifest (its image references).
    Returns the sidecar and the time taken."""
    t0 = time.perf_counter()
    opts = options or ShardOptions()
    m = manifest if isinstance(manifest, Manifest) else open_manifest(manifest)
    out = Path(out)
    seed = opts.seed if opts.seed is not None else (m.seed or 0)
    own = duckdb.connect() if store is None else None
    base = store.con if store is not None else own
    assert base is not None
    con, sql = prepare(base, m, store is not None)
    factor = opts.repeat_factor if opts.repeat else None
    n_rows, most, vecs = survey(con, m, sql, factor, opts.max_repeats)
    slots = opts.caption_slots if opts.caption_slots is not None else slot_count(vecs, MAX_SLOTS)[0]
    err = max((layout_error([Candidate("", "", p) for p in v if p > 0], slots) for v in vecs if any(p > 0 for p in v)),
              default=0.0)
    exact = err <= 1e-9
    fingerprint = _fingerprint(m, opts, seed, slots)
    try:
        _prepare_out(out, fingerprint, opts.overwrite)
    except OSError as e:
        raise CurateError(f"cannot write shards into {out}: {e.strerror or e}") from None
    width = max(5, len(str(max(0, -(-most // opts.shard_size) - 1))))
    enc = Encoding(seed=seed, caption_epoch=opts.caption_epoch, slots=slots, reencode=opts.reencode,
                   max_size=opts.max_size, jpeg_quality=opts.jpeg_quality, verify_images=opts.verify_images)

    excluded: dict[str, int] = {}
    examples: list[dict[str, str]] = []
    counts = {"rows": n_rows, "rows_with_image": 0, "rows_without_copies": 0, "planned": 0}
    executor = _executor(opts.workers)
    window = 2 * opts.workers + 1
    bar = _progress_bar(n_rows, progress)
    locator = Locator()

    def checked() -> Iterator[tuple[Row, ImageRef, ImageFailure | None]]:
        """Rows with their image reference and failure (or None), in manifest order."""
        pending: deque[tuple[list[tuple[Row, ImageRef, ImageFailure | None]], Future[Any] | None]] = deque()

        def flush(n: int) -> Iterator[tuple[Row, ImageRef, ImageFailure | None]]:
            while len(pending) > n:
                items, fut = pending.popleft()
                late = iter(fut.result()) if fut is not None else None
                for row, ref, fail in items:
                    if fail is None and late is not None:
                        fail = next(late)
                    yield row, ref, fail
                bar.update(len(items))

        for batch in iter_rows(con, m, sql):
            items = [(r, ref, locator.check(ref)) for r in batch for ref in (_ref(r, opts.image_root),)]
            fut = None
            if opts.verify_images:
                fut = executor.submit(verify, [ref for _, ref, f in items if f is None], opts.reencode is not None)
            pending.append((items, fut))
            yield from flush(window)
        yield from flush(0)

    def samples() -> Iterator[Wire]:
        for row, ref, fail in checked():
            if fail is not None:
                excluded[fail.reason] = excluded.get(fail.reason, 0) + 1
                if len(examples) < _EXAMPLES:
                    examples.append({"uid": row.uid, "reason": fail.reason, "detail": fail.detail})
                continue
            counts["rows_with_image"] += 1
            n = copies(row.weight, opts.repeat_factor, opts.max_repeats, seed, row.uid) if opts.repeat else 1
            if n == 0:
                counts["rows_without_copies"] += 1
            for j in range(n):
                yield pack(Entry(row.uid, j, row.source, row.weight, ref.image_path, ref.image_shard, ref.image_key,
                                 row.caption, row.variant, row.cands))

    results: list[dict[str, Any]] = []
    running: set[Future[Any]] = set()

    def collect(n: int) -> None:
        nonlocal running
        while len(running) > n:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    results.append(fut.result())
                except BrokenProcessPool:
                    raise CurateError("a shard writer process died (out of memory or killed); run the same command "
                                      "again to resume: finished shards are kept") from None
                except OSError as e:
                    raise CurateError(f"cannot write shards into {out}: {e.strerror or e} ({e.filename or ''}); "
                                      "run the same command again to resume") from None
            bar.set_postfix(shards=len(results), refresh=False)

    names: list[str] = []
    try:
        shard: list[Wire] = []

        def submit() -> None:
            entries = tuple(shard)
            name = f"{len(names):0{width}d}"
            names.append(name)
            task = ShardTask(len(names) - 1, name, str(out), entries, enc, plan_hash(entries, enc), fingerprint)
            running.add(executor.submit(write_shard, task))
            counts["planned"] += len(entries)
            shard.clear()
            collect(window)

        for wire in shuffled(samples(), opts.shuffle_buffer, seed):
            shard.append(wire)
            if len(shard) == opts.shard_size:
                submit()
        if shard:
            submit()
        collect(0)
    finally:
        bar.close()
        executor.shutdown(wait=True, cancel_futures=True)
        con.close()
        if own is not None:
            own.close()
    _tidy(out, set(names))

    results.sort(key=lambda r: str(r["shard"]))
    sizes = {r["shard"]: r["successes"] for r in results}
    late: dict[str, int] = {}
    variants: dict[str, int] = {}
    for r in results:
        for k, v in r["failed"].items():
            late[k] = late.get(k, 0) + v
        for k, v in r["txt_variants"].items():
            variants[k] = variants.get(k, 0) + v
    total = sum(sizes.values())
    kept_n = sum(1 for r in results if r["kept"])
    stats = {
        **counts, "samples": total, "shards": len(results), "shards_kept": kept_n, "shards_written": len(results) - kept_n,
        "excluded_rows": {k: excluded[k] for k in REASONS if k in excluded},
        "excluded_while_writing": {k: late[k] for k in REASONS if k in late},
        "repeats_added": counts["planned"] - (counts["rows_with_image"] - counts["rows_without_copies"]),
        "bytes": sum(int(r["bytes"]) for r in results),
    }
    pattern = f"{{{names[0]}..{names[-1]}}}.tar" if names else ""
    sidecar = {
        "layout": LAYOUT, "fingerprint": fingerprint,
        "manifest": str(m.path.resolve()), "manifest_format": m.format, "manifest_sha256": m.sha256,
        "policy_hash": m.policy_hash, "policy_seed": m.seed, "seed": seed,
        "options": opts.shaping(), "counts": stats, "excluded_examples": examples,
        "captions": {"slots": slots, "exact": exact, "max_slot_error": round(err, 12), "epoch": opts.caption_epoch,
                     "txt_variants": dict(sorted(variants.items()))},
        "shards": [{"shard": r["shard"], "samples": r["successes"], "sha256": r["sha256"]} for r in results],
        "open_clip": {
            "train_data": str(out.resolve() / pattern) if pattern else None,
            "train_num_samples": total,
            "args": ["--dataset-type", "webdataset", "--train-data", str(out.resolve() / pattern) if pattern else ""],
            "json_text_args": open_clip_args(slots),
            "note": ("open_clip 3.3.0 reads the .txt member (--caption-epoch E draws epoch E's); open_clip main "
                     "draws from the .json slots with json_text_args"),
        },
        "versions": {"curate": __version__, "duckdb": duckdb.__version__},
    }
    try:
        _write_json(out / SIZES, sizes)
        _write_json(out / SIDECAR, sidecar)
        (out / MARKER).unlink(missing_ok=True)
    except OSError as e:
        raise CurateError(f"cannot write {out / SIDECAR}: {e.strerror or e}") from None
    return ShardResult(out, sidecar, time.perf_counter() - t0)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


__all__ = ["LAYOUT", "SIDECAR", "SIZES", "ShardOptions", "ShardResult", "check_out", "shard_options", "write_shards"]
