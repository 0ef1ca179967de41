"""What this machine can do at most, measured here: memory bandwidth and float32 FMA peak.

The kernel benchmarks print their GB/s and GFLOP/s beside these, so a figure says how
close a kernel is to the limit it can be held to on this CPU.

    python benchmarks/machine_limits.py            # every kernel build this CPU runs
"""
import argparse
import time

import torch

from vllm.platforms import cpu_isa

COPY_BYTES = 256 << 20  # far beyond any last-level cache


def fastest_seconds(step, iters: int) -> float:
    """Seconds of the fastest of `iters` calls of `step`, after one warm-up call (the
    fastest: on a shared machine the others measure its other tenants too)."""
    step()
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth_gb_s(repeats: int = 5) -> float:
    """Best of `repeats` copies of 256 MiB, counting the bytes read and written."""
    source = torch.ones(COPY_BYTES // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * COPY_BYTES / best / 1e9


def read_bandwidth_gb_s(repeats: int = 5) -> float:
    """Best of `repeats` sums over 256 MiB: the streaming-read rate a decode step needs."""
    source = torch.ones(COPY_BYTES // 4)
    source.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        source.sum()
        best = min(best, time.perf_counter() - start)
    return COPY_BYTES / best / 1e9


def fma_peak_gflop_s(isa: str, iterations: int = 20_000_000) -> float:
    """float32 FMA peak of the `isa` build on every torch thread (best of three)."""
    ops = cpu_isa.load_ops(isa)
    if ops is None:
        raise SystemExit(f"vllm._C_{isa} is not built")
    ops.fma_peak_gflops(iterations // 10)  # warm-up: clocks settle
    return max(ops.fma_peak_gflops(iterations) for _ in range(3))


def measured_limits(isas=None) -> dict:
    """{"threads", "copy_gb_s", "read_gb_s", "fma_gflop_s": {isa: GFLOP/s}}."""
    isas = cpu_isa.built_isas() if isas is None else isas
    return {"threads": torch.get_num_threads(), "copy_gb_s": copy_bandwidth_gb_s(),
            "read_gb_s": read_bandwidth_gb_s(),
            "fma_gflop_s": {isa: fma_peak_gflop_s(isa) for isa in isas}}


def describe(limits: dict) -> str:
    peaks = ", ".join(f"{isa} {value:.0f}" for isa, value in limits["fma_gflop_s"].items())
    return (f"machine limits ({limits['threads']} threads): read {limits['read_gb_s']:.1f} "
            f"GB/s, copy {limits['copy_gb_s']:.1f} GB/s, FMA peak GFLOP/s: {peaks}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", nargs="+", default=None, help="default: every build")
    args = parser.parse_args(argv)
    print(describe(measured_limits(args.isa)))


if __name__ == "__main__":
    main()
