"""Generation runs from the API and the CLI: a run, a dry run (what is pending and what it
would cost) and a preview (a few samples generated and shown, nothing written).

A dry run renders the prompts of up to ``sample`` pending inputs and counts their tokens
with the server's tokenizer when it answers (else a bytes/4 estimate, said so); the
completion tokens are the mean of this stage's earlier outputs in the store, else
``max_tokens``; the time is tokens over the completion rate of the stage's latest run
(``generation_runs``), else over a rate measured by ``--preview``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import pyarrow as pa

from ..errors import ConfigError
from ..runner import ensure_output_table, pending_sql
from ..stages.generate import _Generated, _ModelStage
from ..store import Store, quote_ident


@dataclasses.dataclass
class DryRun:
    stage: str
    config_hash: str
    pending: int
    outputs_per_input: int
    sampled: int
    prompt_tokens_per_request: float | None
    prompt_tokens_measured: bool
    completion_tokens_per_request: float | None
    completion_from: str
    rate_tokens_per_s: float | None
    rate_from: str
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        req = self.pending * self.outputs_per_input
        out = [f"{self.stage} (config {self.config_hash}): {self.pending:,} inputs pending, "
               f"{req:,} requests ({self.outputs_per_input} per input)"]
        if self.prompt_tokens_per_request is not None:
            how = "counted by the server's tokenizer" if self.prompt_tokens_measured else "estimated as bytes/4"
            out.append(f"prompt tokens: {self.prompt_tokens_per_request:,.0f} per request ({how}, "
                       f"{self.sampled} inputs sampled), {self.prompt_tokens_per_request * req:,.0f} in all")
        if self.completion_tokens_per_request is not None:
            total = self.completion_tokens_per_request * req
            out.append(f"completion tokens: {self.completion_tokens_per_request:,.1f} per request "
                       f"({self.completion_from}), {total:,.0f} in all")
            if self.rate_tokens_per_s:
                secs = total / self.rate_tokens_per_s
                out.append(f"time: about {_duration(secs)} at {self.rate_tokens_per_s:,.0f} completion tokens/s "
                           f"({self.rate_from})")
            else:
                out.append(f"time: unknown ({self.rate_from})")
        return out + [f"note: {n}" for n in self.notes]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:,.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def _pending_sql(store: Store, stage: _Generated) -> str:
    """The runner's pending rows; every input row when no generation ran yet (a dry run
    or a preview creates no table)."""
    if store.has_table(stage.output_table):
        ensure_output_table(store, stage)  # checks the columns
        return pending_sql(stage)
    cols = ", ".join(quote_ident(c) for c in (stage.key, *stage.reads))
    return f"SELECT {cols} FROM ({stage.input_relation()}) i WHERE $config_hash IS NOT NULL"


def _pending(store: Store, stage: _Generated, limit: int | None) -> pa.Table:
    sql = _pending_sql(store, stage) + (f" LIMIT {int(limit)}" if limit is not None else "")
    return store.con.sql(sql, params={"config_hash": stage.config_hash()}).to_arrow_table()


def pending_count(store: Store, stage: _Generated) -> int:
    return int(store.con.execute(f"SELECT count(*) FROM ({_pending_sql(store, stage)})",
                                 {"config_hash": stage.config_hash()}).fetchall()[0][0])


def dry_run(store: Store, stage: _Generated, *, sample: int = 100, rate: float | None = None) -> DryRun:
    """What ``stage`` would do on ``store``: see the module docstring. Writes nothing
    but the (empty) output table when it is missing."""
    stage = stage.prepare(store)  # type: ignore[assignment]  # prepare returns the same class
    h = stage.config_hash()
    pending = pending_count(store, stage)
    if not isinstance(stage, _ModelStage):
        return DryRun(stage.registry_name(), h, pending, 1, 0, None, False, None, "no model", None, "no model")
    if getattr(stage, "backend", "openai") != "openai":
        return DryRun(stage.registry_name(), h, pending, 1, 0, None, False, float(stage.max_tokens),
                      "max_tokens (an in-process model)", None, "an in-process model: --preview N measures a rate")
    rows = _pending(store, stage, sample).to_pylist()
    k = stage.outputs_per_input()
    from ..generate.backend import OpenAIServer
    from ..generate.templates import load_template

    tpl = load_template(stage.template)
    measured = True
    counts: list[float] = []
    with OpenAIServer(stage.base_url, model=stage.model_id, api_key=os.environ.get(stage.api_key_env),
                      timeout_s=min(stage.timeout_s, 30.0), retries=1) as server:
        pool: list[Any] = []
        if getattr(stage, "examples", None):
            from ..generate.templates import read_examples

            pool = read_examples(stage.examples, strategy=stage.examples_strategy)  # type: ignore[attr-defined]
        object.__setattr__(stage, "_rt", {"examples": pool, "templates": {tpl.name: tpl}, "first": tpl.name})
        for row in rows:
            values, image = stage.dry_run_values(row)
            extra, _ = (stage.extra_values(row, 0) if hasattr(stage, "examples") else ({}, {}))
            messages = tpl.render(image=image, **values, **extra)
            text = "\n".join(_texts(messages))
            n = server.tokenize(text) if measured else None
            if n is None:
                measured = False
            counts.append(float(n) if n is not None else len(text.encode("utf-8")) / 4)
    prompt = sum(counts) / len(counts) if counts else None
    if not store.has_table("generations"):
        done = None
    else:
        done = store.con.execute(
            "SELECT avg(o.completion_tokens) FROM (SELECT unnest(outputs) AS o FROM generations WHERE stage = ?) "
            "WHERE o.completion_tokens IS NOT NULL", [stage.registry_name()]).fetchall()[0][0]
    if done is not None:
        completion, cfrom = float(done), "mean of this stage's earlier outputs"
    else:
        completion, cfrom = float(stage.max_tokens), "max_tokens: no earlier outputs"
    if rate is not None:
        rfrom = "measured by --preview"
    else:
        got = store.con.execute(
            "SELECT completion_tokens_per_s FROM generation_runs WHERE stage = ? AND completion_tokens_per_s > 0 "
            "ORDER BY run_id DESC LIMIT 1", [stage.registry_name()]).fetchall() if store.has_table("generations") else []
        rate = float(got[0][0]) if got else None
        rfrom = "this stage's latest run" if got else "no earlier run; --preview N measures a rate"
    notes = []
    from ..generate.templates import IMAGE_TASKS

    if tpl.task in IMAGE_TASKS:
        notes.append("each request also carries an image, whose prompt tokens (model-dependent) are not counted")
    if getattr(stage, "vlm_template", None):
        notes.append(f"each input also takes one VLM request (at most {stage.vlm_max_tokens} completion "  # type: ignore[attr-defined]
                     "tokens, its image's tokens not counted); the fusion prompt is counted without the VLM's caption")
    return DryRun(stage.registry_name(), h, pending, k, len(rows), prompt, measured, completion, cfrom, rate, rfrom,
                  tuple(notes))


def _texts(messages: Any) -> list[str]:
    """The text of chat messages (string contents and text parts; images are not text)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return out


@dataclasses.dataclass
class Preview:
    rows: list[dict[str, Any]]
    seconds: float
    completion_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def preview(store: Store, stage: _Generated, n: int = 10) -> Preview:
    """Generate for the first ``n`` pending inputs and return input and output side by
    side; nothing is written to the store."""
    if n < 1:
        raise ConfigError(f"--preview needs at least 1 sample, got {n}")
    stage = stage.prepare(store)  # type: ignore[assignment]  # prepare returns the same class
    batch = _pending(store, stage, n)
    if batch.num_rows == 0:
        return Preview([], 0.0, 0)
    stage.setup()
    t0 = time.perf_counter()
    out = stage(batch.combine_chunks().to_batches()[0])
    seconds = time.perf_counter() - t0
    rows = []
    inputs = batch.to_pylist()
    for inp, res in zip(inputs, out.to_pylist(), strict=True):
        shown = {k: v for k, v in inp.items() if k not in ("input_id", "uid", "source") and not k.endswith("_id")}
        for o in res["outputs"] or [{"text": None, "status": res["status"], "reason": res["reason"], "action": None}]:
            rows.append({"input": " | ".join(f"{k}: {v}" for k, v in shown.items()), "output": o["text"],
                         "status": o["status"], "reason": o["reason"], "action": o["action"]})
    tokens = sum(r["completion_tokens"] or 0 for r in out.to_pylist())
    return Preview(rows, seconds, tokens)
