#!/usr/bin/env bash
# PD versus colocated on the same cores, the seed's table, CDF plots and a goodput sweep.
# Flags: bash benchmarks/pd_vs_colocated.sh --help. Every flag also reads an environment
# variable of the same name in capitals (a flag given wins): MODEL INPUT_LEN OUTPUT_LEN
# RANDOM_RANGE_RATIO NUM_PROMPTS MAX_CONCURRENCY REQUEST_RATE CORES NUM_PREFILL NUM_DECODE PREFILL_TP
# DECODE_TP PREFILL_CORES DECODE_CORES COLOCATED_TP SWEEP_RATES SWEEP_NUM_PROMPTS
# TTFT_SLO_MS TPOT_SLO_MS SERVE_ARGS BASE_PORT RESULT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
from_env=()
for name in MODEL INPUT_LEN OUTPUT_LEN RANDOM_RANGE_RATIO NUM_PROMPTS MAX_CONCURRENCY REQUEST_RATE CORES \
        NUM_PREFILL NUM_DECODE PREFILL_TP DECODE_TP PREFILL_CORES DECODE_CORES COLOCATED_TP \
        SWEEP_RATES SWEEP_NUM_PROMPTS TTFT_SLO_MS TPOT_SLO_MS SERVE_ARGS BASE_PORT RESULT_DIR; do
    if [[ -n "${!name+set}" ]]; then
        flag="--$(tr '[:upper:]_' '[:lower:]-' <<<"$name")"
        from_env+=("$flag=${!name}")
    fi
done
exec python3 -m vllm.benchmarks.pd_compare "${from_env[@]}" "$@"
