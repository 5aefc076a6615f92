"""Distillation export: the (inputs -> accepted output) pairs of a generation task as
chat-format JSONL, so a small model can be fine-tuned on the best outputs of a large one
(CapsFusion fused 1M captions with ChatGPT, then fine-tuned LLaMA on them to fuse 120M).

One line per accepted output::

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "<the template rendered with the inputs>"},
                  {"role": "assistant", "content": "<the output>"}],
     "metadata": {"uid": ..., "input_id": ..., "task": ..., "template": ..., ...}}

``messages`` is the form chat fine-tuning reads (transformers' ``apply_chat_template``,
TRL's SFT trainer, OpenAI's fine-tuning files); ``metadata`` says where the pair came
from and can be left out.

What counts as accepted: ``status = 'ok'`` and neither flagged by the knowledge guard
(unless ``include_flagged``) nor replaced by the raw caption (a fallback is no model
output). ``min_retention`` keeps only outputs whose guard retention (``guard_rule``) is
at least that. The user message is the output's own template (the stricter one for a
regenerated output), rendered again from the input captions in the store; the template's
sha256 must equal the one recorded, so a pair never shows a prompt the model did not see.
A rewrite template's in-context examples are left empty (the pair teaches the rewrite,
not the examples). Inputs that were cut to the token budget are exported whole and
marked ``input_truncated``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..store import Store
from .templates import Template, load_template

#: the tasks a text-only pair can be made for, and the template fields from the inputs
TASK_INPUTS = {"fuse": ("raw", "synthetic"), "rewrite": ("caption",), "vec": ("raw",)}


@dataclasses.dataclass
class DistillResult:
    path: Path
    written: int
    skipped: Counter[str]

    def summary(self) -> str:
        skipped = ", ".join(f"{n:,} {why}" for why, n in self.skipped.most_common())
        return f"wrote {self.written:,} pairs to {self.path}" + (f"; skipped {skipped}" if skipped else "")


_SQL = """
WITH o AS (
    SELECT g.uid::VARCHAR AS uid, g.input_id::VARCHAR AS input_id, g.stage, g.config_hash, g.run_id, g.variant,
           g.input_caption_ids AS ids, g.input_truncated, unnest(g.outputs) AS out
    FROM generations g WHERE g.task = $task AND ($variant IS NULL OR g.variant = $variant))
SELECT o.uid, o.input_id, o.stage, o.config_hash, o.run_id, o.variant, o.input_truncated,
       o.out.index AS idx, o.out.text AS text, o.out.status AS status, o.out.action AS action,
       o.out.generation AS generation, c0.text AS in0, c1.text AS in1
FROM o
LEFT JOIN captions c0 ON c0.caption_id = TRY_CAST(o.ids[1] AS UUID)
LEFT JOIN captions c1 ON c1.caption_id = TRY_CAST(o.ids[2] AS UUID)
ORDER BY o.uid, o.input_id, o.config_hash, idx
"""


def export_distill(store: Store, out: str | Path, *, task: str = "fuse", variant: str | None = None,
                   include_flagged: bool = False, min_retention: float | None = None,
                   guard_rule: str = "strict", template: str | None = None, metadata: bool = True,
                   system: bool = True) -> DistillResult:
    """Write the accepted pairs of ``task`` (``fuse``, ``rewrite`` or ``vec``; of one
    ``variant`` when given) to ``out`` (see the module docstring). ``template`` replaces
    the recorded template (a file of the same content: its sha256 must match). The file is
    written next to ``out`` and renamed at the end, so a failed export leaves no half file."""
    if task not in TASK_INPUTS:
        raise ConfigError(f"distillation pairs are made for the tasks {', '.join(TASK_INPUTS)}, not {task!r}"
                          + (" (captions of images have no text input)" if task == "caption" else ""))
    if guard_rule not in ("strict", "lenient"):
        raise ConfigError(f"guard_rule must be 'strict' or 'lenient', got {guard_rule!r}")
    if min_retention is not None and not 0.0 <= min_retention <= 1.0:
        raise ConfigError(f"min_retention must be in [0, 1], got {min_retention}")
    if not store.has_table("generations"):
        raise ConfigError(f"{store.path}: no generations yet (run curate generate {task} first)")
    path = Path(out)
    if path.exists() and path.is_dir():
        raise ConfigError(f"{path} is a folder; give a file name for the JSONL")
    path.parent.mkdir(parents=True, exist_ok=True)
    override = load_template(template) if template else None
    templates: dict[tuple[str, str], Template] = {}
    skipped: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    written = 0
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            reader = store.con.sql(_SQL, params={"task": task, "variant": variant}).to_arrow_reader(10_000)
            for batch in reader:
                for row in batch.to_pylist():
                    why, line = _pair(row, task, include_flagged, min_retention, guard_rule, override, templates,
                                      metadata, system)
                    if why is not None:
                        skipped[why] += 1
                        continue
                    assert line is not None
                    key = (line["messages"][-2]["content"], line["messages"][-1]["content"])
                    if key in seen:
                        skipped["duplicate pair"] += 1
                        continue
                    seen.add(key)
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
                    written += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return DistillResult(path, written, skipped)


def _pair(row: dict[str, Any], task: str, include_flagged: bool, min_retention: float | None, guard_rule: str,
          override: Template | None, templates: dict[tuple[str, str], Template], metadata: bool,
          system: bool) -> tuple[str | None, dict[str, Any] | None]:
    if row["status"] != "ok":
        return f"status {row['status']}", None
    if row["action"] == "fallback":
        return "raw caption kept by the guard", None
    if row["action"] == "flagged" and not include_flagged:
        return "flagged by the guard", None
    gen = json.loads(row["generation"] or "{}")
    guard = gen.get("guard") or {}
    retention = guard.get(f"retention_{guard_rule}")
    if min_retention is not None and (retention is None or retention < min_retention):
        return "below min_retention", None
    name, sha = gen.get("template"), gen.get("template_sha256")
    if not name or not sha:
        return "no template recorded", None
    tpl = _template(name, sha, override, templates)
    values: dict[str, Any]
    if task == "fuse":
        if row["in0"] is None or row["in1"] is None:
            return "input caption missing", None
        values = {"raw": row["in0"], "synthetic": row["in1"]}
    elif task == "rewrite":
        if row["in0"] is None:
            return "input caption missing", None
        values = {"caption": row["in0"], **({"examples": ""} if "examples" in tpl.fields() else {})}
    else:  # vec
        vlm = (gen.get("vlm") or {}).get("text")
        if row["in0"] is None or not vlm:
            return "input caption missing", None
        values = {"raw": row["in0"], "vlm_caption": vlm}
    messages = list(tpl.render(**values))
    if not system:
        messages = [m for m in messages if m["role"] != "system"]
    messages.append({"role": "assistant", "content": row["text"]})
    line: dict[str, Any] = {"messages": messages}
    if metadata:
        line["metadata"] = {
            "uid": row["uid"], "input_id": row["input_id"], "task": task, "variant": row["variant"],
            "stage": row["stage"], "config_hash": row["config_hash"], "run_id": row["run_id"], "index": row["idx"],
            "model": gen.get("model"), "template": tpl.name, "template_sha256": tpl.sha256,
            "action": row["action"], "retention_strict": guard.get("retention_strict"),
            "retention_lenient": guard.get("retention_lenient"), "input_truncated": bool(row["input_truncated"])}
    return None, line


def _template(name: str, sha: str, override: Template | None, cache: dict[tuple[str, str], Template]) -> Template:
    key = (name, sha)
    if key in cache:
        return cache[key]
    if override is not None and override.sha256 == sha:
        t = override
    elif override is not None and override.name == name:
        raise ConfigError(f"template {name!r} ({override.path}) has changed since the outputs were made (sha256 "
                          f"{override.sha256[:12]} now, {sha[:12]} then): give the file they were made with")
    else:
        try:
            t = load_template(name)
        except ConfigError:
            raise ConfigError(f"the outputs were made with template {name!r}, which is not bundled: pass "
                              "--template FILE with that template") from None
        if t.sha256 != sha:
            raise ConfigError(f"template {name!r} has changed since the outputs were made (sha256 {t.sha256[:12]} "
                              f"now, {sha[:12]} then): pass --template FILE with the one used")
    cache[key] = t
    return t
