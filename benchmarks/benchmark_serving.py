"""Benchmark online serving of an OpenAI-compatible server (flags as vLLM's script).

Example:
    python benchmarks/benchmark_serving.py --backend vllm --port 8000 \
        --dataset-name random --random-input-len 1024 --random-output-len 128 \
        --num-prompts 200 --request-rate 10 --save-result
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vllm.benchmarks.serving.main import main  # noqa: E402

if __name__ == "__main__":
    main()
