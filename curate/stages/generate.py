"""Generation stages: captions made by models (or, for sub-captions, by rules), written as
ordinary caption variants.

Each stage is a stage of the one contract (``stages/base.py``): its input rows are
pending by anti-join on ``input_id`` + config hash, each batch commits together with the
``generations`` rows that explain it, and a killed run redoes at most the batch in
flight. What a stage adds to the contract:

* ``input_relation()``: the rows to generate from (``fuse``: each raw caption with the
  sample's synthetic caption; ``rewrite`` and ``subcaptions``: captions of a variant);
* one ``generations`` row per input (``status``, ``reason``, the ``outputs`` with a status
  each, tokens, latency, the guard's decisions, the provenance shared by the outputs);
* ``companion_statements()``: the accepted outputs become ``captions`` rows of the stage's
  variant in the same transaction, content-addressed (``caption_id = md5(uid, variant,
  text)``), with ``generation`` (how it was made) and ``provenance`` (which stage, run,
  input captions).

Settings that change no text (server URL, API key variable, concurrency, timeouts,
retries) are kept out of the config hash; the model enters it by the id the server
reports, and the template by the sha256 of its content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import pyarrow as pa

from ..attributes import Attribute
from ..config import config_hash as _config_hash
from ..errors import ConfigError
from ..ids import caption_id_sql
from ..knowledge.ner import DEFAULT_MODEL
from .base import Stage

if TYPE_CHECKING:
    from ..store import Store

OUTPUT = pa.struct([
    ("index", pa.int32()), ("text", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("action", pa.string()), ("finish_reason", pa.string()), ("completion_tokens", pa.int32()),
    ("generation", pa.string()),
])
GUARD = pa.struct([
    ("index", pa.int32()), ("attempt", pa.int32()), ("template", pa.string()), ("retention_strict", pa.float64()),
    ("retention_lenient", pa.float64()), ("raw_entities", pa.int32()), ("action", pa.string()),
])
SCHEMA = pa.schema([
    ("uid", pa.uuid()), ("source", pa.string()), ("task", pa.string()), ("variant", pa.string()),
    ("status", pa.string()), ("reason", pa.string()), ("generator", pa.string()),
    ("outputs", pa.list_(OUTPUT)), ("input_caption_ids", pa.list_(pa.string())),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("latency_s", pa.float64()),
    ("requests", pa.int32()), ("input_truncated", pa.bool_()), ("guard", pa.list_(GUARD)),
    ("generation", pa.string()),
])

#: every guard decision as a row (one per output attempt)
GUARD_VIEW = """CREATE OR REPLACE VIEW generation_guard AS
SELECT g.input_id, g.uid, g.task, g.variant, g.stage, g.config_hash, g.run_id,
       d.index, d.attempt, d.template, d.retention_strict, d.retention_lenient, d.raw_entities, d.action
FROM (SELECT *, unnest(guard) AS d FROM generations) g"""

#: one row per generation run: inputs, outputs by status, tokens and rates
RUNS_VIEW = """CREATE OR REPLACE VIEW generation_runs AS
SELECT g.run_id, any_value(g.stage) AS stage, any_value(g.task) AS task, any_value(g.variant) AS variant,
       any_value(g.config_hash) AS config_hash, count(*) AS inputs,
       count(*) FILTER (WHERE g.status = 'ok') AS inputs_ok,
       sum(len(list_filter(g.outputs, lambda o: o.status = 'ok'))) AS outputs_ok,
       sum(len(g.outputs)) AS outputs,
       sum(g.requests) AS requests, sum(g.prompt_tokens) AS prompt_tokens,
       sum(g.completion_tokens) AS completion_tokens,
       any_value(r.seconds) AS seconds,
       sum(g.completion_tokens) / nullif(any_value(r.seconds), 0) AS completion_tokens_per_s,
       count(*) / nullif(any_value(r.seconds), 0) AS inputs_per_s
FROM generations g LEFT JOIN runs r ON r.run_id = g.run_id
GROUP BY g.run_id"""

#: settings that change no generated text: kept out of the config hash
RUNTIME_FIELDS = ("base_url", "api_key_env", "concurrency", "timeout_s", "retries", "server", "vlm_base_url",
                  "vlm_server", "device", "local_batch_size")

#: where a model stage looks when neither its config nor $OPENAI_BASE_URL says (vLLM's default)
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"

TASKS = ("caption", "fuse", "rewrite", "vec", "subcaptions")


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _seed(base: int, *parts: Any) -> int:
    digest = hashlib.sha256(json.dumps([base, *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _uuid_bytes(values: Sequence[Any]) -> pa.Array:
    import uuid

    return pa.array([uuid.UUID(str(v)).bytes if v is not None else None for v in values], pa.uuid())


@dataclasses.dataclass(frozen=True)
class _Generated(Stage):
    """What every generation stage shares: the ``generations`` table and its views, the
    caption insert, the hash rule."""

    task: ClassVar[str]
    key: ClassVar[str] = "input_id"
    output_table: ClassVar[str] = "generations"
    output_schema: ClassVar[pa.Schema] = SCHEMA
    views: ClassVar[tuple[str, ...]] = (GUARD_VIEW, RUNS_VIEW)
    attributes: ClassVar[tuple[Attribute, ...]] = ()

    def companion_statements(self) -> tuple[str, ...]:
        cid = caption_id_sql("o.uid", "o.variant", "o.text")
        return (f"""
INSERT INTO captions (caption_id, uid, variant, text, generator, provenance, source, run_id, generation)
SELECT caption_id, uid, variant, text, generator, provenance, source, run_id, generation FROM (
    SELECT {cid} AS caption_id, o.uid, o.variant, o.text, o.generator,
           json_object('stage', o.stage, 'config_hash', o.config_hash, 'task', o.task, 'input_id', o.input_id::VARCHAR,
                       'input_caption_ids', o.input_caption_ids, 'index', o.out.index, 'action', o.out.action)
               AS provenance,
           o.source, o.run_id, o.out.generation::JSON AS generation
    FROM (SELECT b.*, b.uid, b.variant, b.out.text AS text
          FROM (SELECT *, unnest(outputs) AS out FROM _curate_batch) b
          WHERE b.out.status = 'ok') o
    QUALIFY row_number() OVER (PARTITION BY caption_id ORDER BY o.out.index) = 1
) n
WHERE NOT EXISTS (SELECT 1 FROM captions c WHERE c.caption_id = n.caption_id)""",)

    def config_hash(self) -> str:
        cfg = {k: v for k, v in self.config().items() if k not in RUNTIME_FIELDS}
        return _config_hash(self.registry_name(), cfg)


# -- sub-captions (no model) ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SubCaptions(_Generated):
    """Sentence splits and word-budget prefixes of long captions (CLIPS, DreamLIP, FLAIR
    train on such sub-captions of long synthetic captions); variant ``subcap``, the
    parent caption in each row's provenance."""

    name: ClassVar[str] = "generate.subcaptions"
    version: ClassVar[int] = 1
    task: ClassVar[str] = "subcaptions"
    reads: ClassVar[tuple[str, ...]] = ("uid", "source", "text")
    produced_by: ClassVar[str | None] = "the stage generate.subcaptions.v1 (curate generate subcaptions)"

    #: the variants whose captions are split
    of_variants: tuple[str, ...] = ("synthetic",)
    variant: str = "subcap"
    sentences: bool = True
    #: also the caption's first N words, for each N (CLIPS-style truncated prefixes)
    prefix_words: tuple[int, ...] = ()
    #: pieces shorter than this are dropped
    min_words: int = 3
    max_per_caption: int = 16
    #: captions with fewer words are left alone (nothing to split)
    min_caption_words: int = 12

    def __post_init__(self) -> None:
        from ..names import check_name

        if not self.of_variants:
            raise ValueError("of_variants must name at least one variant")
        for v in (*self.of_variants, self.variant):
            check_name(v, "variant")
        if any(n < 1 for n in self.prefix_words):
            raise ValueError(f"prefix_words must be positive, got {list(self.prefix_words)}")
        if not self.sentences and not self.prefix_words:
            raise ValueError("nothing to make: sentences = false and no prefix_words")
        if self.min_words < 1 or self.max_per_caption < 1 or self.min_caption_words < 1:
            raise ValueError("min_words, max_per_caption and min_caption_words must be at least 1")

    def input_relation(self) -> str:
        variants = ", ".join(_lit(v) for v in self.of_variants)
        return (f"SELECT caption_id AS input_id, uid, source, text FROM captions "
                f"WHERE variant IN ({variants}) AND len(string_split(trim(text), ' ')) >= {int(self.min_caption_words)}")

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        from ..generate.subcaptions import subcaptions_batch

        t0 = time.perf_counter()
        texts = batch.column("text").to_pylist()
        pieces = subcaptions_batch(texts, sentences=self.sentences, prefix_words=self.prefix_words,
                                   min_words=self.min_words, max_per_caption=self.max_per_caption)
        ids = batch.column("input_id").to_pylist()
        rows = []
        method = {"sentences": self.sentences, "prefix_words": list(self.prefix_words), "min_words": self.min_words,
                  "max_per_caption": self.max_per_caption, "sentencizer": "spacy.blank(en)+sentencizer"}
        for cid, subs in zip(ids, pieces, strict=True):
            outputs = []
            for i, p in enumerate(subs):
                gen = {"backend": "rules", "method": method, "kind": p.kind, "piece": p.index,
                       "parent_caption_id": str(cid), "start": p.start, "end": p.end, "input_caption_ids": [str(cid)]}
                outputs.append({"index": i, "text": p.text, "status": "ok", "reason": None, "action": "generated",
                                "finish_reason": None, "completion_tokens": None,
                                "generation": json.dumps(gen, sort_keys=True)})
            rows.append({"status": "ok" if outputs else "nothing", "reason": None if outputs else
                         "no sentence or prefix passes min_words", "outputs": outputs,
                         "input_caption_ids": [str(cid)], "generation": json.dumps({"backend": "rules", "method": method},
                                                                                   sort_keys=True)})
        seconds = (time.perf_counter() - t0) / max(1, len(rows))
        return _table(self, batch, rows, generator="curate.subcaptions", latency=seconds)


def _final(out: dict[str, Any], action: str, raw: str | None) -> None:
    """The guard's last word on an ok output below the threshold: flag it, or replace it
    by the raw caption."""
    if action == "flag":
        out["action"] = "flagged"
    elif action == "fallback":
        out.update(action="fallback", text=raw, reason="guard: raw caption kept")
        out["gen"]["fallback"] = "raw caption"


def _table(stage: _Generated, batch: pa.RecordBatch, rows: list[dict[str, Any]], *, generator: str | None,
           latency: float | None = None) -> pa.Table:
    n = len(rows)
    cols: dict[str, Any] = {
        "input_id": batch.column("input_id"),
        "uid": _uuid_bytes(batch.column("uid").to_pylist()),
        "source": batch.column("source"),
        "task": pa.array([stage.task] * n, pa.string()),
        "variant": pa.array([stage.variant] * n, pa.string()),  # type: ignore[attr-defined]
        "generator": pa.array([r.get("generator", generator) for r in rows], pa.string()),
    }
    defaults: dict[str, Any] = {"prompt_tokens": None, "completion_tokens": None, "latency_s": latency, "requests": 0,
                "input_truncated": False, "guard": [], "reason": None}
    for f in SCHEMA:
        if f.name in cols:
            continue
        cols[f.name] = pa.array([r.get(f.name, defaults.get(f.name)) for r in rows], f.type)
    return pa.table(cols, schema=pa.schema([batch.schema.field("input_id"), *SCHEMA]))


# -- model-backed stages ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ModelStage(_Generated):
    """An LLM (or VLM) behind an OpenAI-compatible server: template, sampling, guard."""

    guarded: ClassVar[bool] = True
    default_batch_size: ClassVar[int | None] = 64
    path_fields: ClassVar[tuple[str, ...]] = ("template",)
    default_template: ClassVar[str]

    #: the server (vLLM, llama.cpp's llama-server, ...): ``http://host:port`` or ``.../v1``;
    #: empty: ``$OPENAI_BASE_URL``, else vLLM's default ``http://127.0.0.1:8000/v1``
    base_url: str = ""
    #: the served model to ask for (None: the only or first one the server lists)
    model: str | None = None
    #: the environment variable holding the API key (unset: no key is sent)
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 4
    #: a bundled template name or a path to a template file (TOML)
    template: str = ""
    max_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    #: OpenAI ``logit_bias`` (token id -> bias)
    logit_bias: dict[str, float] = dataclasses.field(default_factory=dict)
    #: stop sequences (the output ends before the first; ``finish_reason`` "stop")
    stop: tuple[str, ...] = ()
    #: each input text is cut to this many tokens before it goes into the prompt
    max_input_tokens: int = 512
    #: the language outputs must be in (``wrong_language`` otherwise); "any": not checked
    language: str = "en"
    #: knowledge guard: outputs whose retention of the raw caption's knowledge entities
    #: is below this are regenerated with the stricter template (``guard_retries``
    #: times), then flagged or replaced by the raw caption (``guard_final``); None: off
    guard_min_retention: float | None = 0.8
    guard_rule: Literal["strict", "lenient"] = "strict"
    guard_retries: int = 1
    guard_final: Literal["flag", "fallback"] = "flag"
    ner_model: str = DEFAULT_MODEL
    # -- filled in by prepare() (recorded, part of the hash where they change text) --
    #: the model id the server reports
    model_id: str | None = None
    #: weights' revision or hash, as the user states it (servers rarely report it)
    model_revision: str | None = None
    template_sha256: str | None = None
    stricter_template: str | None = None
    stricter_sha256: str | None = None
    #: what the server says about itself (recorded, not hashed)
    server: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..names import check_name

        check_name(self.variant, "variant")  # type: ignore[attr-defined]
        if not self.base_url:
            object.__setattr__(self, "base_url", os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
        if self.concurrency < 1 or self.retries < 0 or self.timeout_s <= 0:
            raise ValueError("concurrency must be at least 1, retries at least 0 and timeout_s positive")
        if self.max_tokens < 1 or self.max_input_tokens < 1:
            raise ValueError("max_tokens and max_input_tokens must be at least 1")
        if self.guard_min_retention is not None and not 0.0 <= self.guard_min_retention <= 1.0:
            raise ValueError(f"guard_min_retention must be in [0, 1], got {self.guard_min_retention}")
        if self.guard_retries < 0:
            raise ValueError("guard_retries must be 0 or more")
        if not self.template:
            object.__setattr__(self, "template", self.default_template)

    def preferred_batch_size(self) -> int | None:
        """A batch commits when its slowest answer is in, so the server idles at the end of
        each one: 8 rounds of ``concurrency`` requests keep that tail to about 1/8 of a
        batch's time (at least 64 inputs; a kill loses at most one batch)."""
        return max(64, 8 * self.concurrency)

    @property
    def guard_on(self) -> bool:
        return self.guarded and self.guard_min_retention is not None

    def preflight(self) -> None:
        from ..generate.templates import load_template

        t = load_template(self.template)
        if t.task != self.template_task():
            raise ConfigError(f"template {t.name!r} is for task {t.task!r}, but {self.registry_name()} needs "
                              f"a {self.template_task()!r} template")
        if self.guard_on:
            from ..knowledge.ner import check_pipeline

            check_pipeline(self.ner_model)

    def template_task(self) -> str:
        return self.task

    def prepare(self, store: Store) -> Self:
        from ..generate.backend import OpenAIServer
        from ..generate.templates import load_stricter, load_template

        self.preflight()
        t = load_template(self.template)
        stricter = load_stricter(t) if self.guard_on else None
        with OpenAIServer(self.base_url, model=self.model, api_key=os.environ.get(self.api_key_env),
                          timeout_s=min(self.timeout_s, 30.0), retries=1) as server:
            info = server.info()
        return dataclasses.replace(
            self, model_id=info.model_id, template_sha256=t.sha256,
            stricter_template=stricter.name if stricter else None, stricter_sha256=stricter.sha256 if stricter else None,
            server={"base_url": info.base_url, "owned_by": info.owned_by, "context_length": info.context_length,
                    "fingerprint": info.fingerprint})

    def setup(self) -> None:
        from ..generate.backend import OpenAIServer
        from ..generate.templates import load_template

        server = OpenAIServer(self.base_url, model=self.model_id or self.model,
                              api_key=os.environ.get(self.api_key_env), concurrency=self.concurrency,
                              timeout_s=self.timeout_s, retries=self.retries)
        t = load_template(self.template)
        strict = load_template(self.stricter_template) if self.stricter_template else None
        nlp = None
        if self.guard_on:
            from ..generate.guard import EntityCache
            from ..knowledge.ner import load_ner

            nlp = EntityCache(load_ner(self.ner_model))
        object.__setattr__(self, "_rt", {"server": server, "templates": {t.name: t, **({strict.name: strict} if strict
                                                                                       else {})},
                                         "first": t.name, "stricter": strict.name if strict else None, "ner": nlp})

    def batch_counts(self, out: pa.Table) -> dict[str, float]:
        import pyarrow.compute as pc

        return {"tokens": float(pc.sum(out.column("completion_tokens")).as_py() or 0)}

    # -- what a task defines -----------------------------------------------------------
    def inputs(self, row: dict[str, Any]) -> tuple[dict[str, str], list[str], str | None]:
        """(template values, input caption ids, the raw text the guard compares with)."""
        raise NotImplementedError

    def outputs_per_input(self) -> int:
        return 1

    def dry_run_values(self, row: dict[str, Any]) -> tuple[dict[str, str], bytes | None]:
        """The template values (and image) a dry run counts the prompt of; no request."""
        from ..generate.serve_check import tiny_png
        from ..generate.templates import IMAGE_TASKS, load_template

        values = self.inputs(row)[0]
        return values, tiny_png() if load_template(self.template).task in IMAGE_TASKS else None

    def extra_values(self, row: dict[str, Any], index: int) -> tuple[dict[str, str], dict[str, Any]]:
        """Per-output template values and what they add to the provenance."""
        return {}, {}

    # -- the batch -------------------------------------------------------------------
    def before(self, rows_in: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """A step before the model calls (reading images, a VLM's caption): the rows it
        finishes (an unreadable image, a failed first step) by index; it may add private
        keys to the others (``_image``: bytes to send; ``_prov``: provenance every output
        of the row carries; ``_totals``: tokens, latency and requests spent so far)."""
        return {}

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        rows_in = batch.to_pylist()
        done = self.before(rows_in)
        todo = [i for i in range(len(rows_in)) if i not in done]
        for i, row in zip(todo, self._generate([rows_in[i] for i in todo]), strict=True):
            done[i] = row
        return _table(self, batch, [done[i] for i in range(len(rows_in))], generator=self.model_id)

    def _generate(self, rows_in: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from ..generate.backend import ChatRequest
        from ..generate.checks import check_output, clean_output
        from ..generate.templates import IMAGE_TASKS, prompt_hash

        rt = self._rt  # type: ignore[attr-defined]
        server = rt["server"]
        k = self.outputs_per_input()
        if not rows_in:
            return []
        prepared = []
        for row in rows_in:
            values, input_ids, raw = self.inputs(row)
            values, truncated = self._budget(server, values, self._input_budget(server, len(values)))
            prepared.append((values, input_ids, raw, truncated))
        raw_ents: list[list[str]] | None = None
        if self.guard_on:
            raws = [p[2] or "" for p in prepared]
            raw_ents = rt["ner"].get(raws)
        # state per (row, index): the attempts so far
        results: dict[tuple[int, int], dict[str, Any]] = {}
        guard_rows: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(rows_in))}
        todo = [(i, j, rt["first"]) for i in range(len(rows_in)) for j in range(k)]
        rejected: dict[tuple[int, int], dict[str, Any]] = {}  # outputs the guard sent back
        attempt = 0
        totals = {i: {"prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0, "requests": 0,
                      **rows_in[i].get("_totals", {})} for i in range(len(rows_in))}
        while todo:
            requests, meta = [], []
            for i, j, tname in todo:
                values, input_ids, raw, truncated = prepared[i]
                extra, extra_prov = self.extra_values(rows_in[i], j)
                tpl = rt["templates"][tname]
                image = {"image": rows_in[i]["_image"]} if tpl.task in IMAGE_TASKS else {}
                messages = tpl.render(**values, **extra, **image)
                seed = _seed(self.seed, rows_in[i]["input_id"], j, attempt)
                body = {"logit_bias": dict(self.logit_bias)} if self.logit_bias else {}
                requests.append(ChatRequest(messages=tuple(messages), max_tokens=self.max_tokens,
                                            temperature=self.temperature, top_p=self.top_p, seed=seed, stop=self.stop,
                                            extra=body))
                meta.append((i, j, tpl, seed, prompt_hash(messages), extra_prov))
            answers = server.chat(requests)
            retry = []
            for (i, j, tpl, seed, phash, extra_prov), res in zip(meta, answers, strict=True):
                values, input_ids, raw, truncated = prepared[i]
                tot = totals[i]
                tot["requests"] += 1
                tot["prompt_tokens"] += res.prompt_tokens or 0
                tot["completion_tokens"] += res.completion_tokens or 0
                tot["latency_s"] += res.latency_s
                choice = res.choices[0] if res.choices else None
                finish = choice.finish_reason if choice else None
                if res.error is not None or choice is None:
                    text, status, reason = None, "error", res.error or "the server returned no choice"
                else:
                    text = clean_output(choice.text)
                    status, reason = check_output(text, finish_reason=finish, prompt_texts=tpl.instruction_texts(),
                                                  inputs=list(values.values()),
                                                  language=None if self.language == "any" else self.language)
                gen = {"backend": "openai-compatible", "model": self.model_id, "model_revision": self.model_revision,
                       "server": self.server, "template": tpl.name, "template_sha256": tpl.sha256,
                       "prompt_sha256": phash, "sampling": {"temperature": self.temperature, "top_p": self.top_p,
                                                            "max_tokens": self.max_tokens,
                                                            "logit_bias": dict(self.logit_bias),
                                                            "stop": list(self.stop)},
                       "seed": seed, "input_caption_ids": input_ids, "tokens_in": res.prompt_tokens,
                       "tokens_out": res.completion_tokens, "finish_reason": finish,
                       "latency_s": round(res.latency_s, 4), "attempt": attempt, "http_attempts": res.attempts,
                       "input_truncated": truncated, "input_token_budget": rt.get("budget"),
                       "response_model": res.model, **rows_in[i].get("_prov", {}), **extra_prov}
                out = {"index": j, "text": text, "status": status, "reason": reason, "action": "generated",
                       "finish_reason": finish, "completion_tokens": res.completion_tokens, "gen": gen}
                if status == "ok" and self.guard_on and raw_ents is not None:
                    from ..generate.guard import retention

                    out_ents = rt["ner"].get([text])[0]
                    r = retention(raw_ents[i], text or "", out_ents)
                    passed = r.value(self.guard_rule) >= (self.guard_min_retention or 0.0)
                    can_retry = attempt < self.guard_retries
                    action = "accept" if passed else ("regenerate" if can_retry else self.guard_final)
                    guard_rows[i].append({"index": j, "attempt": attempt, "template": tpl.name,
                                          "retention_strict": r.strict, "retention_lenient": r.lenient,
                                          "raw_entities": r.raw_entities, "action": action})
                    gen["guard"] = {"retention_strict": r.strict, "retention_lenient": r.lenient,
                                    "rule": self.guard_rule, "min_retention": self.guard_min_retention,
                                    "action": action}
                    if action == "regenerate":
                        retry.append((i, j, rt["stricter"] or tpl.name))
                        rejected[(i, j)] = out
                        continue
                    _final(out, action, raw)
                elif (i, j) in rejected:
                    # the regeneration failed the output checks: the guard's final action
                    # applies to the output it had rejected (a flagged output or the raw caption)
                    prev = rejected.pop((i, j))
                    guard_rows[i].append({"index": j, "attempt": attempt, "template": tpl.name,
                                          "retention_strict": None, "retention_lenient": None,
                                          "raw_entities": None, "action": self.guard_final})
                    prev["gen"]["regeneration"] = {"status": status, "reason": reason, "attempt": attempt,
                                                   "template": tpl.name}
                    _final(prev, self.guard_final, raw)
                    out = prev
                results[(i, j)] = out
            todo = retry
            attempt += 1
        rows = []
        for i in range(len(rows_in)):
            values, input_ids, raw, truncated = prepared[i]
            outs = []
            for j in range(k):
                o = results[(i, j)]
                o["generation"] = json.dumps(o.pop("gen"), sort_keys=True, default=str)
                outs.append(o)
            ok = [o for o in outs if o["status"] == "ok"]
            status = "ok" if ok else outs[0]["status"]
            reason = None if ok else outs[0]["reason"]
            shared = {"backend": "openai-compatible", "model": self.model_id, "template": rt["first"],
                      "template_sha256": self.template_sha256, "stricter_template": self.stricter_template,
                      "server": self.server, "input_caption_ids": input_ids, **rows_in[i].get("_prov", {})}
            rows.append({"status": status, "reason": reason, "outputs": outs, "input_caption_ids": input_ids,
                         "input_truncated": truncated, "guard": guard_rows[i], "generator": self.model_id,
                         "generation": json.dumps(shared, sort_keys=True, default=str), **totals[i]})
        return rows

    def _input_budget(self, server: Any, n_inputs: int) -> int:
        """Tokens each input text may take: ``max_input_tokens``, lowered so that the
        inputs, the template's own words (counted once by the server's tokenizer, or as
        bytes) and ``max_tokens`` fit the context the server reports for one request."""
        rt = self._rt  # type: ignore[attr-defined]
        if "budget" not in rt:
            ctx = self.server.get("context_length")
            budget = self.max_input_tokens
            if ctx and n_inputs:
                tpl = rt["templates"][rt["first"]]
                words = "\n".join(tpl.instruction_texts())
                overhead = server.tokenize(words) or len(words.encode("utf-8"))
                room = int(ctx) - self.max_tokens - int(overhead) - 32  # chat-template markup
                budget = max(16, min(budget, room // n_inputs))
            rt["budget"] = budget
        return int(rt["budget"])

    def _budget(self, server: Any, values: dict[str, str], limit: int) -> tuple[dict[str, str], bool]:
        """Each input text cut to ``limit`` tokens (a text of at most that many UTF-8
        bytes needs no count: a token covers at least one byte)."""
        out, truncated = {}, False
        for name, text in values.items():
            if text is None or len(text.encode("utf-8")) <= limit:
                out[name] = text
                continue
            words = text.split()
            n = server.tokenize(text)
            if n is None:  # no tokenizer endpoint: the bytes bound
                cut = text.encode("utf-8")[: limit].decode("utf-8", "ignore")
                cut = cut.rsplit(" ", 1)[0] if " " in cut else cut
                out[name], truncated = cut, True
                continue
            if n <= limit:
                out[name] = text
                continue
            while n > limit and len(words) > 1:
                words = words[: max(1, int(len(words) * limit / n * 0.95))]
                n = server.tokenize(" ".join(words)) or 0
            out[name], truncated = " ".join(words), True
        return out, truncated


@dataclasses.dataclass(frozen=True)
class Fuse(_ModelStage):
    """CapsFusion: the raw alt-text and the sample's synthetic caption fused by an LLM into
    one caption that keeps the alt-text's knowledge and the synthetic caption's fluency;
    variant ``fused``."""

    name: ClassVar[str] = "generate.fuse"
    version: ClassVar[int] = 1
    task: ClassVar[str] = "fuse"
    default_template: ClassVar[str] = "fuse-v1"
    reads: ClassVar[tuple[str, ...]] = ("uid", "source", "raw_id", "raw", "synthetic_id", "synthetic")
    produced_by: ClassVar[str | None] = "the stage generate.fuse.v1 (curate generate fuse)"

    raw_variant: str = "raw"
    synthetic_variant: str = "synthetic"
    variant: str = "fused"

    def input_relation(self) -> str:
        return (
            "SELECT r.caption_id AS input_id, r.uid, r.source, r.caption_id::VARCHAR AS raw_id, r.text AS raw, "
            "s.caption_id::VARCHAR AS synthetic_id, s.text AS synthetic FROM captions r JOIN ("
            "SELECT uid, min(caption_id) AS caption_id, arg_min(text, caption_id) AS text FROM captions "
            f"WHERE variant = {_lit(self.synthetic_variant)} GROUP BY uid) s ON s.uid = r.uid "
            f"WHERE r.variant = {_lit(self.raw_variant)}")

    def inputs(self, row: dict[str, Any]) -> tuple[dict[str, str], list[str], str | None]:
        return {"raw": row["raw"], "synthetic": row["synthetic"]}, [row["raw_id"], row["synthetic_id"]], row["raw"]


@dataclasses.dataclass(frozen=True)
class Rewrite(_ModelStage):
    """LaCLIP: ``k`` rewrites of each caption by an LLM shown in-context examples (a
    seeded draw per rewrite from ``examples``, a JSONL of input/output pairs); variant
    ``rewrite``; k, the example file's hash and each draw recorded."""

    name: ClassVar[str] = "generate.rewrite"
    version: ClassVar[int] = 1
    task: ClassVar[str] = "rewrite"
    default_template: ClassVar[str] = "rewrite-v1"
    reads: ClassVar[tuple[str, ...]] = ("uid", "source", "caption")
    produced_by: ClassVar[str | None] = "the stage generate.rewrite.v1 (curate generate rewrite)"
    path_fields: ClassVar[tuple[str, ...]] = ("template", "examples")

    of_variant: str = "raw"
    variant: str = "rewrite"
    k: int = 4
    temperature: float = 0.9
    top_p: float = 0.9
    #: a JSONL of in-context input/output pairs (None: the template's own, or none)
    examples: str | None = None
    n_examples: int = 3
    #: only the example pairs of this ``strategy`` (LaCLIP's file mixes chatgpt, bard, human)
    examples_strategy: str | None = None
    examples_sha256: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")

    def input_relation(self) -> str:
        return (f"SELECT caption_id AS input_id, uid, source, text AS caption FROM captions "
                f"WHERE variant = {_lit(self.of_variant)}")

    def prepare(self, store: Store) -> Self:
        stage = super().prepare(store)
        if self.examples is None:
            return stage
        from ..generate.templates import examples_hash, read_examples

        pool = read_examples(self.examples, strategy=self.examples_strategy)
        if len(pool) < self.n_examples:
            raise ConfigError(f"{self.examples}: {len(pool)} example pairs, fewer than n_examples = {self.n_examples}")
        return dataclasses.replace(stage, examples_sha256=examples_hash(pool))

    def setup(self) -> None:
        super().setup()
        pool: list[tuple[str, str]] = []
        if self.examples is not None:
            from ..generate.templates import read_examples

            pool = read_examples(self.examples, strategy=self.examples_strategy)
        self._rt["examples"] = pool  # type: ignore[attr-defined]

    def outputs_per_input(self) -> int:
        return self.k

    def inputs(self, row: dict[str, Any]) -> tuple[dict[str, str], list[str], str | None]:
        return {"caption": row["caption"]}, [str(row["input_id"])], row["caption"]

    def extra_values(self, row: dict[str, Any], index: int) -> tuple[dict[str, str], dict[str, Any]]:
        from ..generate.templates import choose_examples, examples_hash

        pool = self._rt["examples"]  # type: ignore[attr-defined]
        tpl = self._rt["templates"][self._rt["first"]]  # type: ignore[attr-defined]
        if "examples" not in tpl.fields():
            return {}, {"k": self.k, "examples": None}
        if not pool:
            return {"examples": ""}, {"k": self.k, "examples": None}
        seed = _seed(self.seed, row["input_id"], index, "examples")
        chosen = choose_examples(pool, self.n_examples, seed)
        return ({"examples": tpl.format_examples(chosen)},
                {"k": self.k, "examples": {"pool_sha256": self.examples_sha256, "seed": seed, "n": len(chosen),
                                           "chosen_sha256": examples_hash(chosen)}})


# -- image stages ------------------------------------------------------------------------
IMAGE_READS = ("image_path", "image_shard", "image_key")
_HAS_IMAGE = "(s.image_path IS NOT NULL OR s.image_shard IS NOT NULL)"


def image_for_request(data: bytes, max_side: int | None) -> tuple[bytes, dict[str, Any]]:
    """The bytes to send for one image, and what was done to them: JPEG and PNG go as
    they are when their long side is at most ``max_side``; anything else (WebP, GIF,
    TIFF, ..., which not every server decodes) and larger images are decoded, shrunk to
    fit and sent as JPEG. Raises ValueError (Pillow's message) on bytes that are not an
    image, so a bad image is the row's status, never a request the server refuses."""
    from PIL import Image

    from ..images import decode

    sha = hashlib.sha256(data).hexdigest()
    jpeg_or_png = data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n"
    im = decode(data)  # verifies every image, also the ones sent as they are
    w, h = im.size
    prov: dict[str, Any] = {"image_sha256": sha, "image_size": [w, h]}
    if jpeg_or_png and (max_side is None or max(w, h) <= max_side):
        return data, {**prov, "image_sent": "as is"}
    if max_side is not None and max(w, h) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), {**prov, "image_sent": f"jpeg {im.size[0]}x{im.size[1]}"}


def _image_failure(status: str, reason: str, prov: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": status, "reason": reason, "outputs": [], "input_caption_ids": [],
            "generation": json.dumps({"step": "image", **(prov or {})}, sort_keys=True)}


def read_row_images(rows: list[dict[str, Any]], max_side: int | None) -> dict[int, dict[str, Any]]:
    """Each row's image bytes as ``_image`` (ready to send) and ``_prov`` (its hash and
    what was done to it); rows whose image cannot be read or decoded come back finished,
    with the image layer's reason as status (``no image``, ``image not found``,
    ``unreadable shard``, ``undecodable``)."""
    from ..images import ImageFailure, ImageRef, read_images

    got = read_images([ImageRef(r.get("image_path"), r.get("image_shard"), r.get("image_key")) for r in rows])
    failed: dict[int, dict[str, Any]] = {}
    for i, (row, data) in enumerate(zip(rows, got, strict=True)):
        if isinstance(data, ImageFailure):
            failed[i] = _image_failure(data.reason, data.detail)
            continue
        try:
            send, prov = image_for_request(data, max_side)
        except ValueError as e:
            failed[i] = _image_failure("undecodable", str(e), {"image_sha256": hashlib.sha256(data).hexdigest()})
            continue
        row["_image"], row["_prov"] = send, prov
    return failed


@dataclasses.dataclass(frozen=True)
class Caption(_ModelStage):
    """Image -> synthetic caption, by a VLM behind an OpenAI-compatible server (the image
    sent as a ``data:`` URI) or by an in-process transformers captioner (BLIP, BLIP-2,
    Florence-2-class; ``backend = "transformers"``, ``local_model`` a folder or a cached
    hub id); variant ``synthetic`` or the one given. One ``generations`` row per sample
    (``input_id`` = the sample's uid); a sample whose image cannot be read is a row with
    the image layer's reason."""

    name: ClassVar[str] = "generate.caption"
    version: ClassVar[int] = 1
    task: ClassVar[str] = "caption"
    guarded: ClassVar[bool] = False
    default_template: ClassVar[str] = "caption-v1"
    reads: ClassVar[tuple[str, ...]] = ("uid", "source", *IMAGE_READS)
    produced_by: ClassVar[str | None] = "the stage generate.caption.v1 (curate generate caption)"
    path_fields: ClassVar[tuple[str, ...]] = ("template",)  # not local_model: a hub id has a "/" too

    variant: str = "synthetic"
    backend: Literal["openai", "transformers"] = "openai"
    max_tokens: int = 64
    #: images larger than this on the long side are shrunk before they are sent (None: never)
    max_image_side: int | None = 1024
    #: only samples of these sources (empty: all)
    sources: tuple[str, ...] = ()
    # -- backend = "transformers" ----------------------------------------------------------
    #: a local folder (save_pretrained) or a hub id already in the local cache
    local_model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    local_batch_size: int = 16
    num_beams: int = 1
    min_new_tokens: int = 0
    #: conditional captioning prefix (BLIP: "a photography of")
    prompt: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in ("openai", "transformers"):
            raise ValueError(f"backend must be 'openai' or 'transformers', got {self.backend!r}")
        if self.backend == "transformers" and not self.local_model:
            raise ValueError("backend = 'transformers' needs local_model (a model folder or a cached hub id)")
        if self.max_image_side is not None and self.max_image_side < 16:
            raise ValueError(f"max_image_side must be at least 16, got {self.max_image_side}")
        if self.local_batch_size < 1 or self.num_beams < 1 or self.min_new_tokens < 0:
            raise ValueError("local_batch_size and num_beams must be at least 1, min_new_tokens 0 or more")

    def input_relation(self) -> str:
        where = _HAS_IMAGE
        if self.sources:
            where += f" AND s.source IN ({', '.join(_lit(x) for x in self.sources)})"
        return (f"SELECT s.uid AS input_id, s.uid, s.source, s.image_path, s.image_shard, s.image_key "
                f"FROM samples s WHERE {where}")

    def inputs(self, row: dict[str, Any]) -> tuple[dict[str, str], list[str], str | None]:
        return {}, [], None

    def before(self, rows_in: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        return read_row_images(rows_in, self.max_image_side)

    # -- the in-process backend --------------------------------------------------------
    def preflight(self) -> None:
        if self.backend == "openai":
            super().preflight()
            return
        from .._optional import require

        require("transformers", purpose="the transformers caption backend")

    def _captioner(self) -> Any:
        from ..generate.local import LocalCaptioner

        key = (self.local_model, self.device, self.dtype, self.local_batch_size, self.max_tokens, self.num_beams,
               self.prompt, self.min_new_tokens)
        got = _LOCAL.get(key)
        if got is None:
            got = LocalCaptioner(str(self.local_model), device=self.device, dtype=self.dtype,
                                 batch_size=self.local_batch_size, max_new_tokens=self.max_tokens,
                                 num_beams=self.num_beams, prompt=self.prompt, min_new_tokens=self.min_new_tokens)
            _LOCAL.clear()  # one model in memory at a time
            _LOCAL[key] = got
        return got

    def prepare(self, store: Store) -> Self:
        if self.backend == "openai":
            return super().prepare(store)
        self.preflight()
        info = self._captioner().info()
        return dataclasses.replace(self, model_id=str(info["model"]), model_revision=info.get("revision"),
                                   template_sha256=None, server={k: v for k, v in info.items()
                                                                 if k not in ("model", "revision")})

    def setup(self) -> None:
        if self.backend == "openai":
            super().setup()
            return
        object.__setattr__(self, "_rt", {"captioner": self._captioner()})

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        if self.backend == "openai":
            return super().__call__(batch)
        from ..generate.checks import check_output, clean_output

        rows_in = batch.to_pylist()
        done = self.before(rows_in)
        todo = [i for i in range(len(rows_in)) if i not in done]
        got = self._rt["captioner"].caption([rows_in[i]["_image"] for i in todo])  # type: ignore[attr-defined]
        language = None if self.language == "any" else self.language
        for i, res in zip(todo, got, strict=True):
            gen = {"backend": "transformers", "model": self.model_id, "model_revision": self.model_revision,
                   **self.server, "sampling": {"max_new_tokens": self.max_tokens, "num_beams": self.num_beams,
                                               "min_new_tokens": self.min_new_tokens, "prompt": self.prompt},
                   "tokens_out": res.tokens_out, "finish_reason": res.finish_reason,
                   "latency_s": round(res.latency_s, 4), **rows_in[i].get("_prov", {})}
            if res.error is not None or res.text is None:
                text, status, reason = None, "error", res.error or "the captioner returned nothing"
            else:
                text = clean_output(res.text)
                status, reason = check_output(text, finish_reason=res.finish_reason,
                                              prompt_texts=(self.prompt,) if self.prompt else (), inputs=[],
                                              language=language)
            out = {"index": 0, "text": text, "status": status, "reason": reason, "action": "generated",
                   "finish_reason": res.finish_reason, "completion_tokens": res.tokens_out,
                   "generation": json.dumps(gen, sort_keys=True, default=str)}
            done[i] = {"status": status, "reason": reason, "outputs": [out], "input_caption_ids": [],
                       "completion_tokens": res.tokens_out, "latency_s": res.latency_s, "requests": 0,
                       "generation": json.dumps({"backend": "transformers", "model": self.model_id,
                                                 "model_revision": self.model_revision, **self.server},
                                                sort_keys=True, default=str)}
        return _table(self, batch, [done[i] for i in range(len(rows_in))], generator=self.model_id)


#: the in-process captioner of this process (loaded once, kept between batches and runs)
_LOCAL: dict[tuple[Any, ...], Any] = {}


@dataclasses.dataclass(frozen=True)
class Vec(_ModelStage):
    """VeCLIP: a VLM writes a visual-enriched caption of the image (``vlm_template``),
    then an LLM fuses it with the alt-text (``template``) so the caption keeps the
    alt-text's knowledge and gains what can be seen; variant ``vec``. The VLM's caption,
    its tokens and model are in each output's provenance (``vlm``); the knowledge guard
    judges the fused output against the alt-text. The two steps may use two servers
    (``vlm_base_url``; default the same)."""

    name: ClassVar[str] = "generate.vec"
    version: ClassVar[int] = 1
    task: ClassVar[str] = "vec"
    default_template: ClassVar[str] = "vec-fuse-v1"
    reads: ClassVar[tuple[str, ...]] = ("uid", "source", "raw_id", "raw", *IMAGE_READS)
    produced_by: ClassVar[str | None] = "the stage generate.vec.v1 (curate generate vec)"
    path_fields: ClassVar[tuple[str, ...]] = ("template", "vlm_template")

    raw_variant: str = "raw"
    variant: str = "vec"
    max_image_side: int | None = 1024
    #: the VLM's server (None: ``base_url``) and model (None: its only/first one)
    vlm_base_url: str | None = None
    vlm_model: str | None = None
    vlm_template: str = "vec-caption-v1"
    vlm_max_tokens: int = 128
    vlm_temperature: float = 0.0
    # filled in by prepare()
    vlm_model_id: str | None = None
    vlm_template_sha256: str | None = None
    vlm_server: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vlm_max_tokens < 1:
            raise ValueError("vlm_max_tokens must be at least 1")

    def template_task(self) -> str:
        return "vec_fuse"

    def input_relation(self) -> str:
        return ("SELECT r.caption_id AS input_id, r.uid, r.source, r.caption_id::VARCHAR AS raw_id, r.text AS raw, "
                "s.image_path, s.image_shard, s.image_key FROM captions r JOIN samples s ON s.uid = r.uid "
                f"WHERE r.variant = {_lit(self.raw_variant)} AND {_HAS_IMAGE}")

    def inputs(self, row: dict[str, Any]) -> tuple[dict[str, str], list[str], str | None]:
        return {"raw": row["raw"], "vlm_caption": row["_vlm_caption"]}, [row["raw_id"]], row["raw"]

    def dry_run_values(self, row: dict[str, Any]) -> tuple[dict[str, str], bytes | None]:
        # the fusion prompt without the VLM's caption (not made yet); the dry run adds
        # the VLM's requests and vlm_max_tokens per input
        return {"raw": row["raw"], "vlm_caption": ""}, None

    def preflight(self) -> None:
        from ..generate.templates import load_template

        super().preflight()
        t = load_template(self.vlm_template)
        if t.task != "vec_caption":
            raise ConfigError(f"vlm_template {t.name!r} is for task {t.task!r}, but generate.vec.v1 needs a "
                              "'vec_caption' template")

    def prepare(self, store: Store) -> Self:
        from ..generate.backend import OpenAIServer
        from ..generate.templates import load_template

        stage = super().prepare(store)
        with OpenAIServer(self.vlm_base_url or self.base_url, model=self.vlm_model,
                          api_key=os.environ.get(self.api_key_env), timeout_s=min(self.timeout_s, 30.0),
                          retries=1) as server:
            info = server.info()
        return dataclasses.replace(
            stage, vlm_model_id=info.model_id, vlm_template_sha256=load_template(self.vlm_template).sha256,
            vlm_server={"base_url": info.base_url, "owned_by": info.owned_by, "context_length": info.context_length,
                        "fingerprint": info.fingerprint})

    def setup(self) -> None:
        from ..generate.backend import OpenAIServer
        from ..generate.templates import load_template

        super().setup()
        rt = self._rt  # type: ignore[attr-defined]
        if (self.vlm_base_url and self.vlm_base_url != self.base_url) or self.vlm_model_id != self.model_id:
            rt["vlm"] = OpenAIServer(self.vlm_base_url or self.base_url, model=self.vlm_model_id,
                                     api_key=os.environ.get(self.api_key_env), concurrency=self.concurrency,
                                     timeout_s=self.timeout_s, retries=self.retries)
        else:
            rt["vlm"] = rt["server"]
        rt["vlm_template"] = load_template(self.vlm_template)

    def before(self, rows_in: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Step 1: the VLM's visual-enriched caption of each image (temperature
        ``vlm_temperature``, ``vlm_max_tokens``); a row whose image is unreadable or
        whose VLM caption fails the output checks is finished here."""
        from ..generate.backend import ChatRequest
        from ..generate.checks import check_output, clean_output
        from ..generate.templates import prompt_hash

        rt = self._rt  # type: ignore[attr-defined]
        failed = read_row_images(rows_in, self.max_image_side)
        todo = [i for i in range(len(rows_in)) if i not in failed]
        tpl = rt["vlm_template"]
        requests, hashes, seeds = [], [], []
        for i in todo:
            messages = tpl.render(image=rows_in[i]["_image"])
            seed = _seed(self.seed, rows_in[i]["input_id"], "vlm")
            requests.append(ChatRequest(messages=tuple(messages), max_tokens=self.vlm_max_tokens,
                                        temperature=self.vlm_temperature, top_p=self.top_p, seed=seed, stop=self.stop,
                                        extra={"logit_bias": dict(self.logit_bias)} if self.logit_bias else {}))
            hashes.append(prompt_hash(messages))
            seeds.append(seed)
        answers = rt["vlm"].chat(requests) if requests else []
        language = None if self.language == "any" else self.language
        for i, res, phash, seed in zip(todo, answers, hashes, seeds, strict=True):
            row = rows_in[i]
            choice = res.choices[0] if res.choices else None
            finish = choice.finish_reason if choice else None
            if res.error is not None or choice is None:
                text, status, reason = None, "error", res.error or "the server returned no choice"
            else:
                text = clean_output(choice.text)
                status, reason = check_output(text, finish_reason=finish, prompt_texts=tpl.instruction_texts(),
                                              inputs=[], language=language)
            vlm = {"model": self.vlm_model_id, "server": self.vlm_server, "template": tpl.name,
                   "template_sha256": tpl.sha256, "prompt_sha256": phash, "seed": seed,
                   "sampling": {"temperature": self.vlm_temperature, "max_tokens": self.vlm_max_tokens},
                   "text": text, "status": status, "tokens_in": res.prompt_tokens, "tokens_out": res.completion_tokens,
                   "finish_reason": finish, "latency_s": round(res.latency_s, 4)}
            prov = {**row["_prov"], "vlm": vlm}
            totals = {"prompt_tokens": res.prompt_tokens or 0, "completion_tokens": res.completion_tokens or 0,
                      "latency_s": res.latency_s, "requests": 1}
            if status != "ok":
                failed[i] = {"status": status, "reason": f"vision step: {reason}", "outputs": [],
                             "input_caption_ids": [row["raw_id"]],
                             "generation": json.dumps({"step": "vlm", **prov}, sort_keys=True, default=str), **totals}
                continue
            row["_vlm_caption"], row["_prov"], row["_totals"] = text, prov, totals
        return failed


def stage_hash_fields(stage: _Generated) -> dict[str, Any]:
    """The fields of a generation stage's hash (for tests and docs)."""
    return {k: v for k, v in stage.config().items() if k not in RUNTIME_FIELDS}
