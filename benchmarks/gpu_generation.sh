#!/usr/bin/env bash
# Generation throughput on a CUDA machine: vLLM serving local weights, curate's
# generate.fuse.v1 against a plain openai-client loop (benchmarks/bench_generate.py).
#
#   benchmarks/gpu_generation.sh MODEL_DIR [PORT] [-- BENCH_ARGS...]
#
# MODEL_DIR: a local Hugging Face model folder (config.json, weights, tokenizer; an
# instruct model with a chat template). PORT: default 8000. BENCH_ARGS go to
# bench_generate.py, e.g. -- --samples 2048 --concurrency 64 --max-tokens 96 --batch-size 256.
# Environment: PYTHON (default .venv/bin/python, with curate and openai installed),
# VLLM (default vllm), VLLM_ARGS (extra `vllm serve` flags, e.g.
# "--max-model-len 4096 --gpu-memory-utilization 0.85 --tensor-parallel-size 2"),
# READY_TIMEOUT (seconds to wait for the server, default 900).
#
# Steps: start `vllm serve MODEL_DIR` on 127.0.0.1:PORT, wait until /v1/models answers,
# `curate generate serve-check`, bench_generate.py --url with the model's end-of-text
# ids (from generation_config.json or config.json) as --eos-id, then stop the server
# (its whole process group) whatever happened. Run from the repository root.
set -euo pipefail

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -ge 1 && $1 != -h && $1 != --help ]] || usage
MODEL_DIR=$1
shift
PORT=8000
if [[ $# -ge 1 && $1 != -- ]]; then
    PORT=$1
    shift
fi
if [[ $# -ge 1 ]]; then
    [[ $1 == -- ]] || usage
    shift
fi
BENCH_ARGS=("$@")

PYTHON=${PYTHON:-.venv/bin/python}
VLLM=${VLLM:-vllm}
READY_TIMEOUT=${READY_TIMEOUT:-900}
read -r -a EXTRA_VLLM_ARGS <<< "${VLLM_ARGS:-}"

die() { echo "error: $*" >&2; exit 1; }

[[ -f benchmarks/bench_generate.py ]] || die "run from the curate repository root"
[[ -d $MODEL_DIR && -f $MODEL_DIR/config.json ]] || die "$MODEL_DIR is not a model folder (no config.json)"
[[ $PORT =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$PORT'"
[[ $READY_TIMEOUT =~ ^[0-9]+$ ]] || die "READY_TIMEOUT must be a number of seconds, got '$READY_TIMEOUT'"
[[ -x $PYTHON ]] || command -v "$PYTHON" > /dev/null || die "no python at '$PYTHON' (set PYTHON)"
command -v "$VLLM" > /dev/null || die "no '$VLLM' on PATH (pip install vllm, or set VLLM)"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

URL=http://127.0.0.1:$PORT
NAME=$(basename "$(cd "$MODEL_DIR" && pwd)")
if "$PYTHON" -c "import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $PORT)) != 0)"; then
    die "something already listens on port $PORT; pick another PORT"
fi

# the end-of-text token ids: generation_config.json's eos_token_id, else config.json's
EOS_IDS=$("$PYTHON" - "$MODEL_DIR" <<'EOF'
import json, sys
from pathlib import Path

ids = []
for name in ("generation_config.json", "config.json"):
    p = Path(sys.argv[1]) / name
    if p.is_file():
        v = json.loads(p.read_text()).get("eos_token_id")
        if v is not None:
            ids = v if isinstance(v, list) else [v]
            break
print(" ".join(str(int(i)) for i in ids))
EOF
)
[[ -n $EOS_IDS ]] || die "$MODEL_DIR names no eos_token_id (generation_config.json, config.json)"
EOS_ARGS=()
for id in $EOS_IDS; do
    EOS_ARGS+=(--eos-id "$id")
done

LOG=$(mktemp -t vllm-serve.XXXXXX.log)
echo "vllm serve $MODEL_DIR on $URL (log: $LOG), end-of-text ids: $EOS_IDS"
# its own session, so the trap can stop vLLM and the engine processes it starts
setsid "$VLLM" serve "$MODEL_DIR" --host 127.0.0.1 --port "$PORT" --served-model-name "$NAME" --seed 0 \
    "${EXTRA_VLLM_ARGS[@]}" > "$LOG" 2>&1 < /dev/null &
SERVER_PID=$!

stop_server() {
    if kill -0 "$SERVER_PID" 2> /dev/null; then
        kill -TERM -- "-$SERVER_PID" 2> /dev/null || true
        for _ in $(seq 60); do
            kill -0 "$SERVER_PID" 2> /dev/null || break
            sleep 0.5
        done
        kill -KILL -- "-$SERVER_PID" 2> /dev/null || true
    fi
    wait "$SERVER_PID" 2> /dev/null || true
}
trap stop_server EXIT
trap 'exit 130' INT TERM

echo "waiting for $URL/v1/models (up to ${READY_TIMEOUT}s) ..."
start=$SECONDS
until "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=5)" \
        "$URL/v1/models" 2> /dev/null; do
    if ! kill -0 "$SERVER_PID" 2> /dev/null; then
        tail -n 40 "$LOG" >&2
        die "vllm serve exited before it answered (log above, full log: $LOG)"
    fi
    if (( SECONDS - start > READY_TIMEOUT )); then
        tail -n 40 "$LOG" >&2
        die "vllm serve did not answer within ${READY_TIMEOUT}s (full log: $LOG)"
    fi
    sleep 2
done
echo "ready after $(( SECONDS - start ))s"

"$PYTHON" -m curate.cli generate serve-check "$URL" --model "$NAME"
"$PYTHON" benchmarks/bench_generate.py --url "$URL" --served-model "$NAME" "${EOS_ARGS[@]}" "${BENCH_ARGS[@]}"
