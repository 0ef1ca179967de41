"""Offline throughput benchmark; the same as `vllm bench throughput`.

    python benchmarks/benchmark_throughput.py --input-len 256 --output-len 128 --num-prompts 64
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vllm.benchmarks.throughput import add_cli_args, main  # noqa: E402

if __name__ == "__main__":
    parser = add_cli_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    sys.exit(main(parser.parse_args()))
