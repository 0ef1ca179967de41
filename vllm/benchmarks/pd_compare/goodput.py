"""DistServe's goodput: the highest request rate at which at least 90% of requests meet
both the TTFT and the TPOT SLO, read off a sweep of measured rates."""
from typing import NamedTuple, Optional

from vllm.benchmarks.pd_compare.samples import slo_attainment

ATTAINMENT_TARGET = 0.9


class SweepPoint(NamedTuple):
    rate: float
    attainment: float
    request_throughput: float
    output_throughput: float


def sweep_points(results_by_rate: dict[float, dict], ttft_slo_ms: float,
                 tpot_slo_ms: float) -> list[SweepPoint]:
    return [SweepPoint(rate, slo_attainment(result, ttft_slo_ms, tpot_slo_ms),
                       result["request_throughput"], result["output_throughput"])
            for rate, result in sorted(results_by_rate.items())]


def goodput(points: list[SweepPoint]) -> Optional[float]:
    """The highest swept rate at or below which every point meets the target (attainment
    falls with load; a lucky point above a failing one does not count); None if the
    lowest rate already misses it."""
    best = None
    for point in sorted(points):
        if point.attainment < ATTAINMENT_TARGET:
            break
        best = point.rate
    return best
