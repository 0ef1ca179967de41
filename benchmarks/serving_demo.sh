#!/usr/bin/env bash
# The README's serving run: one `vllm serve` on the demo model, then benchmark_serving.py
# with 64 random prompts of 256 in / 128 out at max concurrency 8; prints the summary and
# stops the server. Arguments go to `vllm serve`, e.g.
#   bash benchmarks/serving_demo.sh --max-num-batched-tokens 512
# Env: PORT (default 38100), NUM_PROMPTS, INPUT_LEN, OUTPUT_LEN, MAX_CONCURRENCY, SEED,
#      OUT_DIR (server log, server.pid and result JSON; default a new /tmp folder).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PORT:-38100}"
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/serving-demo.XXXX)}"
model="$(vllm demo-model)"

vllm serve "$model" --served-model-name smollm2 --host 127.0.0.1 --port "$PORT" \
    --max-model-len 2048 --disable-log-requests "$@" >"$OUT_DIR/server.log" 2>&1 &
server_pid=$!
echo "$server_pid" >"$OUT_DIR/server.pid"
trap 'kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { tail -20 "$OUT_DIR/server.log"; exit 1; }
    sleep 1
done

python benchmarks/benchmark_serving.py --backend vllm --host 127.0.0.1 --port "$PORT" \
    --model smollm2 --tokenizer "$model" --dataset-name random \
    --random-input-len "${INPUT_LEN:-256}" --random-output-len "${OUTPUT_LEN:-128}" \
    --num-prompts "${NUM_PROMPTS:-64}" --max-concurrency "${MAX_CONCURRENCY:-8}" \
    --ignore-eos --seed "${SEED:-0}" --save-result --result-dir "$OUT_DIR"
echo "server log and result JSON: $OUT_DIR"
