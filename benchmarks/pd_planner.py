"""Configuration planner for colocated vs disaggregated layouts; the same as `vllm plan`.

    python benchmarks/pd_planner.py --input-len 512 --output-len 128 --num-prompts 32 \
        --max-concurrency 4 --request-rate 4 --ttft-slo-ms 2000 --tpot-slo-ms 100
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vllm.entrypoints.cli.plan import run_standalone  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_standalone(prog="pd_planner.py"))
