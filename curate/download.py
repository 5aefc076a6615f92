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
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass
class DownloadResult:
    output: Path
    python: str
    img2dataset_version: str
    statuses: dict[str, int]
    ingest: Any
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.statuses and isinstance(self.ingest, str):
            return f"{self.ingest} (output {self.output})"
        total = sum(self.statuses.values())
        st = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.statuses.items(), key=lambda kv: -kv[1]))
        return (f"downloaded {total:,} urls into {self.output} ({st}) with img2dataset {self.img2dataset_version} "
                f"in {self.seconds:.1f}s; {self.ingest.summary() if hasattr(self.ingest, 'summary') else self.ingest}")


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


def store_url_table(store: Store, source: str, path: Path) -> int:
    """Write the pending samples of ``source`` (:func:`pending_urls`) to ``path``."""
    import pyarrow.parquet as pq

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
             urls: str | os.PathLike[str] | None = None, url_col: str = "url", caption_col: str | None = "caption", uid_col: str | None = "uid",
             img2dataset_python: str | None = None, options: dict[str, Any] | None = None,
             timeout: float | None = None) -> DownloadResult:
    """Download the URLs of store ``source`` (or of the file ``urls``) into ``output``
    and ingest the result under ``source`` (see the module docstring). ``options`` are
    passed to ``img2dataset.download`` (e.g. ``image_size``, ``resize_mode``,
    ``processes_count``, ``thread_count``, ``timeout``, ``retries``,
    ``number_sample_per_shard``, ``output_format``)."""
    import time

    from .ingest import ingest

    t0 = time.perf_counter()
    options = dict(options or {})
    clash = sorted(set(options) & set(OWN_OPTIONS))
    if clash:
        raise ConfigError(f"img2dataset option(s) {', '.join(clash)} are set by curate download")
    root = Path(output).resolve()
    exe, version = find_python(img2dataset_python)
    list_hash = None
    if urls is None:
        staged = root / INPUT_DIR / "pending.parquet"
        if store_url_table(store, source, staged) == 0:
            staged.unlink()
            return DownloadResult(root, exe, version, {}, f"nothing to download: every sample of source {source!r} "
                                  "with a url has a download row (see the downloads table)", time.perf_counter() - t0)
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
    # One img2dataset folder per url list: its incremental mode resumes a killed run by
    # shard number, which is only right for the same list. A store source that grew
    # gets a new list (its pending samples) and so a new folder (RESULTS: issue 5 bug).
    out = root / f"list-{list_hash or _list_hash(url_file)}"
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
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    try:
        p = subprocess.run([exe, "-c", _RUNNER, json.dumps(args)], check=False, capture_output=True, text=True, env=env,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CurateError(f"img2dataset did not finish within {timeout}s; run the same command again to resume") from None
    if p.returncode != 0:
        last = [ln for ln in p.stderr.splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise CurateError(f"img2dataset failed (exit {p.returncode}): {last[0][:300]}; "
                          "run the same command again to resume (finished shards are kept)")
    res = ingest(store, "img2dataset", out, source, skip_incomplete=True,
                 uid_col="uid" if "uid" in extra or urls is None else None,
                 caption_col="caption" if caption_col else None)
    statuses = dict(store.con.execute(
        "SELECT status, count(*) FROM downloads WHERE source = ? AND starts_with(shard, ?) GROUP BY 1",
        [source, str(out) + os.sep]).fetchall())
    errors = dict(store.con.execute(
        "SELECT error_message, count(*) FROM downloads WHERE source = ? AND starts_with(shard, ?) "
        "AND status <> 'success' GROUP BY 1 ORDER BY 2 DESC", [source, str(out) + os.sep]).fetchall())
    return DownloadResult(out, exe, version, statuses, res, time.perf_counter() - t0, errors)


__all__ = ["ENV_PYTHON", "DownloadResult", "download", "find_python", "store_url_table"]
