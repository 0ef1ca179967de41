#!/usr/bin/env bash
# What disaggregation costs one request, and whether it leaks, on the demo model:
#   1. TTFT/TPOT at concurrency 1: a colocated instance on one core versus 1P1D (one core
#      each) behind the proxy, same random workload through benchmarks/benchmark_serving.py;
#   2. NUM_LEAK_REQUESTS short requests through the proxy, then the free KV blocks of both
#      instances against their idle value (leaked blocks must be 0).
# Usage: bash benchmarks/pd_overhead.sh      (env: NUM_PROMPTS INPUT_LEN OUTPUT_LEN
#        NUM_LEAK_REQUESTS BASE_PORT OUT_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_PROMPTS="${NUM_PROMPTS:-16}"
INPUT_LEN="${INPUT_LEN:-512}"
OUTPUT_LEN="${OUTPUT_LEN:-32}"
NUM_LEAK_REQUESTS="${NUM_LEAK_REQUESTS:-1000}"
BASE_PORT="${BASE_PORT:-39000}"
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/pd-overhead.XXXX)}"
PROXY_PORT=$BASE_PORT
COLOCATED_PORT=$((BASE_PORT + 5))
export PID_FILE="$OUT_DIR/pids" LOG_DIR="$OUT_DIR/logs" HOST=127.0.0.1
export PROXY_PORT PREFILL_BASE_PORT=$((BASE_PORT + 1)) DECODE_BASE_PORT=$((BASE_PORT + 2))
export KV_BASE_PORT=$((BASE_PORT + 10))

colocated_pid=""
cleanup() {
    bash pd_example/kill_server.sh >/dev/null 2>&1 || true
    if [[ -n "$colocated_pid" ]] && kill -0 "$colocated_pid" 2>/dev/null; then
        kill "$colocated_pid"; wait "$colocated_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

bash pd_example/disaggregated_prefill.sh
VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 taskset -c 0 vllm serve --host 127.0.0.1 \
    --port "$COLOCATED_PORT" --max-model-len 2048 >"$OUT_DIR/colocated.log" 2>&1 &
colocated_pid=$!
until curl -sf "http://127.0.0.1:$COLOCATED_PORT/health" >/dev/null; do
    kill -0 "$colocated_pid" || { tail -20 "$OUT_DIR/colocated.log"; exit 1; }
    sleep 1
done

bench() {  # name port num_prompts input output concurrency
    python benchmarks/benchmark_serving.py --backend vllm --base-url "http://127.0.0.1:$2" \
        --dataset-name random --num-prompts "$3" --random-input-len "$4" \
        --random-output-len "$5" --tokenizer "$(vllm demo-model)" --ignore-eos --max-concurrency "$6" --seed 1 \
        --disable-tqdm --save-result --result-dir "$OUT_DIR" --result-filename "$1.json" \
        >"$OUT_DIR/$1.txt"
}
free_blocks() {
    curl -s "http://127.0.0.1:$1/metrics" | awk '/^vllm:num_free_kv_blocks/ {print int($2)}'
}

idle_p=$(free_blocks "$PREFILL_BASE_PORT"); idle_d=$(free_blocks "$DECODE_BASE_PORT")
bench colocated "$COLOCATED_PORT" "$NUM_PROMPTS" "$INPUT_LEN" "$OUTPUT_LEN" 1
bench pd "$PROXY_PORT" "$NUM_PROMPTS" "$INPUT_LEN" "$OUTPUT_LEN" 1
bench leak "$PROXY_PORT" "$NUM_LEAK_REQUESTS" 24 4 16
sleep 3
python - "$OUT_DIR" <<'EOF'
import json, sys
out = sys.argv[1]
runs = {name: json.load(open(f"{out}/{name}.json")) for name in ("colocated", "pd", "leak")}
print(f"{'metric':18s} {'colocated':>10s} {'PD 1P1D':>10s} {'PD/colocated':>13s}")
for key in ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms"):
    a, b = runs["colocated"][key], runs["pd"][key]
    print(f"{key:18s} {a:10.1f} {b:10.1f} {b / a:13.2f}")
leak = runs["leak"]
print(f"leak run: {leak['completed']} requests completed, {leak.get('failed', 0)} failed")
EOF
now_p=$(free_blocks "$PREFILL_BASE_PORT"); now_d=$(free_blocks "$DECODE_BASE_PORT")
echo "free KV blocks prefill: idle $idle_p, after $now_p (leaked $((idle_p - now_p)))"
echo "free KV blocks decode:  idle $idle_d, after $now_d (leaked $((idle_d - now_d)))"
echo "raw results: $OUT_DIR"
