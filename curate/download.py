"""Download images with img2dataset, then ingest the result (``curate download``).

img2dataset pins old libraries (``pandas<3``, ``webdataset<0.3``), so curate never
imports it: it runs as a subprocess of a Python that has it, chosen in this order:

1. ``img2dataset_python`` (CLI ``--img2dataset-python``), e.g. a separate venv's
   ``.venv-img2dataset/bin/python``;
2. the environment variable ``CURATE_IMG2DATASET_PYTHON``;
3. this Python, when ``img2dataset`` is importable here (``pip install 'curate[download]'``
   into an environment whose other pins allow it).

Steps:

* **URL table.** Either the samples of a store ``source`` (``url``, the smallest
  ``raw`` caption, and the ``uid`` as 32 hex digits, so the download's rows link back
  to those samples), or a file (parquet, CSV, TSV, JSONL: img2dataset's input formats)
  with ``url`` and optionally ``caption`` and ``uid`` columns. A store URL table holds
  only the source's samples with no ``downloads`` row yet (pending), and is written to
  ``<output>/_curate_input/urls-<hash>.parquet``; when nothing is pending, nothing runs.
* **Download** into ``<output>/list-<hash>/``, one folder per URL list (the hash of the
  list file), with img2dataset's ``incremental_mode="incremental"``: a shard whose
  ``_stats.json`` exists is skipped, so running the same command again after a kill or
  a crash finishes only the missing shards of the same list. A source that grew gets a
  new list of its new samples and a new folder; resuming by shard number across two
  different lists would skip new URLs and fetch old ones again.
* **Ingest** the folder with the ``img2dataset`` format (:mod:`curate.ingest.img2dataset`)
  under the given ``source``: every input row's status and error go to ``downloads``,
  successes become or link samples. Shards img2dataset did not finish are skipped.
* **Retry** (``retry_failed=True``, CLI ``--retry-failed``): the URL table holds only
  the samples of ``source`` that have no image and whose *last* ``downloads`` row is a
  failure of a class in ``retry_status`` (:data:`RETRY_CLASSES`; default
  :data:`RETRY_DEFAULT`: timeouts, HTTP 5xx and 429, the failures that say "try
  later"; a 404 or an image that did not decode is retried only when asked). The list
  records the run that failed each URL, so each retry gets its own folder and a killed
  retry resumes in its own. Every attempt stays in ``downloads``; a success links the
  sample.
* **Processes.** img2dataset runs in a process group of its own, dies with curate
  (:mod:`curate.procs`: the kernel's parent-death signal, and a watchdog that kills
  its pool and logger processes when curate is SIGKILLed), and is killed with its
  whole group on Ctrl-C or SIGTERM. Its output goes to
  ``<output>/_curate_input/img2dataset-<hash>.log``; while it runs, a progress bar
  (on a terminal) counts the URLs of finished shards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procs
from .errors import ConfigError, CurateError, InputError, MissingExtraError
from .store import Store

ENV_PYTHON = "CURATE_IMG2DATASET_PYTHON"
INPUT_DIR = "_curate_input"
#: img2dataset options curate sets itself (the rest pass through ``options``)
OWN_OPTIONS = ("url_list", "output_folder", "input_format", "url_col", "caption_col", "save_additional_columns",
               "incremental_mode")

_RUNNER = r"""
import json, sys
args = json.loads(sys.argv[1])
from img2dataset import download
download(**args)
"""

_PROBE = "import img2dataset, importlib.metadata as m; print(m.version('img2dataset'))"

#: What a failed download is, from its ``downloads`` row: an HTTP status (``404``,
#: ``503``: img2dataset records urllib's ``HTTP Error 503: ...``), ``timeout``,
#: ``connection`` (refused, reset, closed, unresolvable), ``resize`` (img2dataset's
#: ``failed_to_resize``: bytes came but are no image it can decode) or ``other``.
FAILURE_SQL = r"""CASE
    WHEN d.status = 'failed_to_resize' THEN 'resize'
    WHEN regexp_matches(d.error_message, 'HTTP Error [0-9]{3}') THEN regexp_extract(d.error_message, 'HTTP Error ([0-9]{3})', 1)
    WHEN regexp_matches(lower(d.error_message), 'timed out|timeout') THEN 'timeout'
    WHEN regexp_matches(lower(d.error_message), 'refused|reset|closed|unreachable|name or service|getaddrinfo|'
                                                 'nodename|urlopen error|remote end|connection') THEN 'connection'
    ELSE 'other' END"""
#: what ``retry_status`` may name: an HTTP status, a class of them, or a failure class
RETRY_CLASSES = ("NNN (an HTTP status, e.g. 404)", "4xx", "5xx", "timeout", "connection", "resize", "other", "all")
#: retried by default: the failures that say "try later"
RETRY_DEFAULT = ("timeout", "5xx", "429")
_SELECTOR = re.compile(r"^([1-5][0-9][0-9]|[1-5]xx|timeout|connection|resize|other|all)$")


@dataclass
class DownloadResult:
    output: Path
    python: str
    img2dataset_version: str
    statuses: dict[str, int]
    ingest: Any
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)
    #: retry_failed: the failures retried and those left as they were, per class
    retried: dict[str, int] | None = None
    not_retried: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        retry = left = ""
        if self.retried is not None:
            left = f"not retried: {_counts(self.not_retried)}" if self.not_retried else ""
            if self.retried:
                retry = (f"retried {sum(self.retried.values()):,} urls whose last attempt failed "
                         f"({_counts(self.retried)}{'; ' + left if left else ''}); ")
        if not self.statuses and isinstance(self.ingest, str):
            return f"{retry}{self.ingest}{'; ' + left if left and not retry else ''} (output {self.output})"
        total = sum(self.statuses.values())
        return (f"{retry}downloaded {total:,} urls into {self.output} ({_counts(self.statuses)}) with img2dataset "
                f"{self.img2dataset_version} in {self.seconds:.1f}s; "
                f"{self.ingest.summary() if hasattr(self.ingest, 'summary') else self.ingest}")


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))


def find_python(img2dataset_python: str | None = None) -> tuple[str, str]:
    """(python executable, img2dataset version) or :class:`MissingExtraError` saying how."""
    cand = img2dataset_python or os.environ.get(ENV_PYTHON) or sys.executable
    exe = shutil.which(cand) or cand
    if not Path(exe).exists():
        raise ConfigError(f"img2dataset python {cand!r} does not exist (--img2dataset-python or ${ENV_PYTHON})")
    p = subprocess.run([exe, "-c", _PROBE], check=False, capture_output=True, text=True)
    if p.returncode != 0:
        raise MissingExtraError(
            f"{exe} cannot import img2dataset; install it in its own venv (it pins pandas<3 and webdataset<0.3): "
            f"python3 -m venv .venv-img2dataset && .venv-img2dataset/bin/pip install img2dataset==1.47.0, then pass "
            f"--img2dataset-python .venv-img2dataset/bin/python (or set ${ENV_PYTHON})")
    return exe, p.stdout.strip()


def pending_urls(store: Store, source: str) -> Any:
    """The samples of ``source`` with a url and no ``downloads`` row yet (url, raw
    caption, uid as 32 hex), in uid order, as an Arrow table."""
    n = store.con.execute("SELECT count(*) FROM samples WHERE source = ? AND url IS NOT NULL", [source]).fetchall()[0][0]
    if not n:
        have = [r[0] for r in store.con.execute("SELECT DISTINCT source FROM samples ORDER BY 1").fetchall()]
        raise ConfigError(f"source {source!r} has no samples with a url; sources: {', '.join(have) or 'none'}")
    return store.arrow(
        "SELECT s.url, (SELECT min(c.text) FROM captions c WHERE c.uid = s.uid AND c.variant = 'raw') AS caption, "
        "replace(s.uid::VARCHAR, '-', '') AS uid FROM samples s WHERE s.source = $source AND s.url IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM downloads d WHERE d.uid = s.uid AND d.source = $source) "
        "ORDER BY s.uid", {"source": source})


def check_retry_status(retry_status: Sequence[str]) -> tuple[str, ...]:
    """The ``retry_status`` selectors, checked (:data:`RETRY_CLASSES`)."""
    if isinstance(retry_status, str):
        retry_status = [retry_status]
    out = tuple(str(x).strip().lower() for x in retry_status)
    bad = [x for x in out if not _SELECTOR.match(x)]
    if bad or not out:
        raise ConfigError(f"retry status {', '.join(map(repr, bad)) or '(none)'} is not one of: "
                          f"{', '.join(RETRY_CLASSES)}")
    return out


def _selected(failure: str, selectors: tuple[str, ...]) -> bool:
    return any(s in ("all", failure) or (s.endswith("xx") and failure.isdigit() and failure[0] == s[0])
               for s in selectors)


def failed_urls(store: Store, source: str, retry_status: Sequence[str] = RETRY_DEFAULT) -> tuple[Any, dict[str, int],
                                                                                                 dict[str, int]]:
    """The samples of ``source`` with no image whose last download attempt failed with a
    class in ``retry_status``: (Arrow table of url, caption, uid, retry_of, retried
    counts per class, not-retried counts per class)."""
    selectors = check_retry_status(retry_status)
    n = store.con.execute("SELECT count(*) FROM samples WHERE source = ? AND url IS NOT NULL", [source]).fetchall()[0][0]
    if not n:
        have = [r[0] for r in store.con.execute("SELECT DISTINCT source FROM samples ORDER BY 1").fetchall()]
        raise ConfigError(f"source {source!r} has no samples with a url; sources: {', '.join(have) or 'none'}")
    failed = store.arrow(
        "SELECT s.url, (SELECT min(c.text) FROM captions c WHERE c.uid = s.uid AND c.variant = 'raw') AS caption, "
        "replace(s.uid::VARCHAR, '-', '') AS uid, d.run_id AS retry_of, " + FAILURE_SQL + " AS failure "
        "FROM samples s JOIN (SELECT DISTINCT ON (uid) uid, status, error_message, run_id FROM downloads "
        "                     WHERE source = $source ORDER BY uid, run_id DESC, status = 'success' DESC) d "
        "ON d.uid = s.uid WHERE s.source = $source AND s.url IS NOT NULL AND s.image_shard IS NULL "
        "AND s.image_path IS NULL AND d.status IS DISTINCT FROM 'success' ORDER BY s.uid", {"source": source})
    import pyarrow as pa

    keep = [_selected(f, selectors) for f in failed.column("failure").to_pylist()]
    retried: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for f, k in zip(failed.column("failure").to_pylist(), keep, strict=True):
        d = retried if k else skipped
        d[f] = d.get(f, 0) + 1
    table = failed.filter(pa.array(keep, pa.bool_())).drop_columns(["failure"])
    return table, retried, skipped


def store_url_table(store: Store, source: str, path: Path, table: Any = None) -> int:
    """Write the pending samples of ``source`` (:func:`pending_urls`), or ``table``, to ``path``."""
    import pyarrow.parquet as pq

    if table is None:
        table = pending_urls(store, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.parquet")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return table.num_rows


def _list_hash(path: Path) -> str:
    import hashlib

    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:12]


def _input_format(path: Path) -> str:
    suffixes = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".txt": "txt"}
    fmt = suffixes.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: img2dataset reads parquet, csv, tsv, jsonl, json or txt URL lists, not {path.suffix!r}")
    return fmt


def _url_file_columns(path: Path) -> list[str] | None:
    """The column names img2dataset will see in a url file (None for .txt). Asking
    img2dataset for a column the file lacks fails only after its workers start."""
    fmt = _input_format(path)
    if fmt == "txt":
        return None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    import duckdb

    q = "'" + str(path).replace("'", "''") + "'"
    reader = {"csv": f"read_csv({q}, header=true, delim=',')", "tsv": f"read_csv({q}, header=true, delim='\t')",
              "json": f"read_json_auto({q})", "jsonl": f"read_json_auto({q})"}[fmt]
    try:
        return [r[0] for r in duckdb.connect().execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
    except duckdb.Error as e:
        raise InputError(f"{path.name}: cannot read its columns ({' '.join(str(e).split())[:200]})") from None


def download(store: Store, output: str | os.PathLike[str], *, source: str,
             urls: str | os.PathLike[str] | None = None, url_col: str = "url", caption_col: str | None = "caption",
             uid_col: str | None = "uid", img2dataset_python: str | None = None, options: dict[str, Any] | None = None,
             timeout: float | None = None, retry_failed: bool = False,
             retry_status: Sequence[str] = RETRY_DEFAULT, progress: bool | None = None) -> DownloadResult:
    """Download the URLs of store ``source`` (or of the file ``urls``) into ``output``
    and ingest the result under ``source`` (see the module docstring). ``options`` are
    passed to ``img2dataset.download`` (e.g. ``image_size``, ``resize_mode``,
    ``processes_count``, ``thread_count``, ``timeout``, ``retries``,
    ``number_sample_per_shard``, ``output_format``). ``retry_failed``: download again
    only the samples whose last attempt failed with a class in ``retry_status``.
    ``progress``: a bar while img2dataset runs (None: when stderr is a terminal)."""
    from .ingest import ingest

    t0 = time.perf_counter()
    options = dict(options or {})
    clash = sorted(set(options) & set(OWN_OPTIONS))
    if clash:
        raise ConfigError(f"img2dataset option(s) {', '.join(clash)} are set by curate download")
    if retry_failed and urls is not None:
        raise ConfigError("retry_failed retries the failed downloads of a store source; it takes no url file")
    selectors = check_retry_status(retry_status)
    root = Path(output).resolve()
    exe, version = find_python(img2dataset_python)
    list_hash = None
    retried: dict[str, int] | None = None
    skipped: dict[str, int] = {}
    n_urls: int | None = None
    if urls is None:
        staged = root / INPUT_DIR / "pending.parquet"
        if retry_failed:
            table, retried, skipped = failed_urls(store, source, selectors)
            n_urls = store_url_table(store, source, staged, table)
            nothing = (f"nothing to retry: no sample of source {source!r} has a last attempt that failed with "
                       f"{', '.join(selectors)}")
        else:
            n_urls = store_url_table(store, source, staged)
            nothing = (f"nothing to download: every sample of source {source!r} with a url has a download row "
                       "(see the downloads table)")
        if n_urls == 0:
            staged.unlink()
            return DownloadResult(root, exe, version, {}, nothing, time.perf_counter() - t0, retried=retried,
                                  not_retried=skipped)
        list_hash = _list_hash(staged)
        url_file = root / INPUT_DIR / f"urls-{list_hash}.parquet"
        os.replace(staged, url_file)
        url_col, caption_col, extra = "url", "caption", ["uid"]
    else:
        url_file = Path(urls).resolve()
        if not url_file.is_file():
            raise InputError(f"{url_file} does not exist")
        extra = [uid_col] if uid_col else []
        names = _url_file_columns(url_file)
        if names is None:  # .txt: one url per line, nothing else
            caption_col, extra = None, []
        else:
            if url_col not in names:
                raise InputError(f"{url_file.name} has no column {url_col!r}; columns: {', '.join(names)}")
            if caption_col and caption_col not in names:
                caption_col = None
            extra = [c for c in extra if c in names]
        if url_file.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            n_urls = pq.read_metadata(url_file).num_rows
    # One img2dataset folder per url list: its incremental mode resumes a killed run by
    # shard number, which is only right for the same list. A store source that grew
    # gets a new list (its pending samples) and so a new folder (RESULTS: issue 5 bug).
    list_hash = list_hash or _list_hash(url_file)
    out = root / f"list-{list_hash}"
    args: dict[str, Any] = {
        "url_list": str(url_file), "output_folder": str(out), "input_format": _input_format(url_file),
        "url_col": url_col, "incremental_mode": "incremental", "output_format": "webdataset",
        "processes_count": 1, "thread_count": 16, "number_sample_per_shard": 10_000,
        "save_additional_columns": extra or None, "enable_wandb": False,
    }
    if caption_col:
        args["caption_col"] = caption_col
    args.update(options)
    out.mkdir(parents=True, exist_ok=True)
    log_file = root / INPUT_DIR / f"img2dataset-{list_hash}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    _run_img2dataset(exe, args, out, log_file, n_urls, timeout, progress)
    res = ingest(store, "img2dataset", out, source, skip_incomplete=True,
                 uid_col="uid" if "uid" in extra or urls is None else None,
                 caption_col="caption" if caption_col else None)
    statuses = dict(store.con.execute(
        "SELECT status, count(*) FROM downloads WHERE source = ? AND starts_with(shard, ?) GROUP BY 1",
        [source, str(out) + os.sep]).fetchall())
    errors = dict(store.con.execute(
        "SELECT error_message, count(*) FROM downloads WHERE source = ? AND starts_with(shard, ?) "
        "AND status <> 'success' GROUP BY 1 ORDER BY 2 DESC", [source, str(out) + os.sep]).fetchall())
    return DownloadResult(out, exe, version, statuses, res, time.perf_counter() - t0, errors, retried=retried,
                          not_retried=skipped)


def _run_img2dataset(exe: str, args: dict[str, Any], out: Path, log_file: Path, n_urls: int | None,
                     timeout: float | None, progress: bool | None) -> None:
    """img2dataset in a process group of its own that dies with this process (see
    :mod:`curate.procs`), its output in ``log_file``, with a bar over finished shards."""
    from tqdm.auto import tqdm

    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    code = procs.prelude(os.getpid()) + _RUNNER
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = tqdm(total=n_urls, unit="urls", desc="img2dataset", dynamic_ncols=True,
               disable=None if progress is None else not progress)
    with procs.guard("img2dataset"), log_file.open("wb") as log:
        p = subprocess.Popen([exe, "-c", code, json.dumps(args)], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while True:
                try:
                    p.wait(0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                bar.update(_urls_done(out) - bar.n)
                if deadline is not None and time.monotonic() > deadline:
                    procs.kill_group(p)
                    raise CurateError(f"img2dataset did not finish within {timeout}s; "
                                      "run the same command again to resume")
            bar.update(_urls_done(out) - bar.n)
        except BaseException:
            procs.kill_group(p)  # Ctrl-C, SIGTERM or an error here: its pool and logger go too
            raise
        finally:
            bar.close()
    if p.returncode != 0:
        lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1:] or ["(no output)"]
        raise CurateError(f"img2dataset failed (exit {p.returncode}): {last[0][:300]}; see {log_file}; "
                          "run the same command again to resume (finished shards are kept)")


def _urls_done(out: Path) -> int:
    """URLs of the shards img2dataset has finished (their ``_stats.json`` counts)."""
    n = 0
    for f in out.glob("*_stats.json"):
        try:
            n += int(json.loads(f.read_text()).get("count", 0))
        except (OSError, ValueError, AttributeError):
            pass  # being written
    return n


__all__ = ["ENV_PYTHON", "RETRY_CLASSES", "RETRY_DEFAULT", "DownloadResult", "check_retry_status", "download",
           "failed_urls", "find_python", "store_url_table"]
