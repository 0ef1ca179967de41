"""The table benchmarks/compare_vllm_cpu.sh prints: each figure for ours and vLLM, and ours / vLLM.

    python benchmarks/compare_vllm_cpu_report.py <folder of result JSON>
"""
import json
import os
import sys

# (label, file stem without the engine prefix, key in vLLM's result JSON)
FIGURES = [
    ("offline total tok/s", "offline", "tokens_per_second"),
    ("served c=8 total tok/s", "c8", "total_token_throughput"),
    ("served c=8 mean TTFT ms", "c8", "mean_ttft_ms"),
    ("served c=8 mean TPOT ms", "c8", "mean_tpot_ms"),
    ("served c=8 p99 ITL ms", "c8", "p99_itl_ms"),
    ("served c=1 total tok/s", "c1", "total_token_throughput"),
    ("served c=1 mean TTFT ms", "c1", "mean_ttft_ms"),
    ("served c=1 mean TPOT ms", "c1", "mean_tpot_ms"),
]


def figure(folder: str, engine: str, stem: str, key: str):
    path = os.path.join(folder, f"{engine}-{stem}.json")
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle).get(key)


def rows(folder: str) -> list:
    found = []
    for label, stem, key in FIGURES:
        ours, peer = figure(folder, "ours", stem, key), figure(folder, "peer", stem, key)
        if ours is not None and peer is not None:
            found.append((label, ours, peer, ours / peer if peer else float("nan")))
    return found


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    table = rows(argv[0])
    if not table:
        print(f"no pair of result files in {argv[0]}", file=sys.stderr)
        return 1
    print(f"| {'figure':<24} | {'ours':>9} | {'vLLM CPU':>9} | ours / vLLM |")
    print(f"|{'-' * 26}|{'-' * 11}|{'-' * 11}|-------------|")
    for label, ours, peer, ratio in table:
        print(f"| {label:<24} | {ours:>9.1f} | {peer:>9.1f} | {ratio:>10.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
