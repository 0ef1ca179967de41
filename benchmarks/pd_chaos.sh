#!/usr/bin/env bash
# PD chaos run, both scenarios one after the other (decode-kill, then prefill-kill), with
# benchmarks/pd_chaos.py: 200 streamed requests at concurrency 8 through the proxy of a
# fresh 1P1D deployment each, one instance SIGKILLed midway. Flags go to pd_chaos.py
# (--help). Env: SCENARIOS, OUT_DIR (one folder per scenario; default a new /tmp folder),
# and NUM_REQUESTS CONCURRENCY INPUT_LEN OUTPUT_LEN KILL_AFTER NUM_PREFILL as the flags.
set -euo pipefail
cd "$(dirname "$0")/.."
from_env=()
for name in NUM_REQUESTS CONCURRENCY INPUT_LEN OUTPUT_LEN KILL_AFTER NUM_PREFILL; do
    if [[ -n "${!name+set}" ]]; then
        from_env+=("--$(tr '[:upper:]_' '[:lower:]-' <<<"$name")=${!name}")
    fi
done
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/pd-chaos.XXXX)}"
for scenario in ${SCENARIOS:-decode-kill prefill-kill}; do
    mkdir -p "$OUT_DIR/$scenario"
    python3 benchmarks/pd_chaos.py --scenario "$scenario" --out-dir "$OUT_DIR/$scenario" \
        "${from_env[@]+"${from_env[@]}"}" "$@"
done
echo "logs and JSON: $OUT_DIR"
