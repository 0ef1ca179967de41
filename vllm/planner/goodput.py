"""Goodput as DistServe defines it: the highest request rate at which at least the target
share (90%) of requests meet both the TTFT and the TPOT objective."""
import math
from typing import Callable, NamedTuple

from vllm.planner.sim_metrics import slo_attainment
from vllm.planner.simulate import Deployment, simulate
from vllm.planner.workload import Slos, Workload

MIN_RATE = 1e-3
MAX_RATE = 1e4


class Goodput(NamedTuple):
    rate: float  # requests/s; 0: not even an idle system meets the SLOs
    bounded: bool  # False: the SLOs still held at max_rate


def find_goodput(attainment_at: Callable[[float], float], target: float, start_rate: float,
                 rel_tol: float = 0.01, min_rate: float = MIN_RATE,
                 max_rate: float = MAX_RATE) -> Goodput:
    """Bracket by doubling or halving from start_rate, then bisect to rel_tol.
    Assumes attainment falls as the rate rises (true of a queue, up to noise)."""
    if not (0 < min_rate <= start_rate <= max_rate):
        raise ValueError(f"start rate {start_rate} outside [{min_rate}, {max_rate}]")
    passing, failing = _bracket(attainment_at, target, start_rate, min_rate, max_rate)
    if failing is None:
        return Goodput(passing, False)
    if passing is None:
        return Goodput(0.0, True)
    while failing - passing > rel_tol * failing:
        middle = math.sqrt(passing * failing) if passing > 0 else failing / 2
        if attainment_at(middle) >= target:
            passing = middle
        else:
            failing = middle
    return Goodput(passing, True)


def _bracket(attainment_at, target, rate, min_rate, max_rate):
    if attainment_at(rate) >= target:
        while rate < max_rate:
            higher = min(rate * 2, max_rate)
            if attainment_at(higher) < target:
                return rate, higher
            rate = higher
        return rate, None
    while rate > min_rate:
        lower = max(rate / 2, min_rate)
        if attainment_at(lower) >= target:
            return lower, rate
        rate = lower
    return None, rate


def deployment_goodput(deployment: Deployment, workload: Workload, slos: Slos,
                       seeds: int = 3, rel_tol: float = 0.01) -> Goodput:
    """Goodput of a deployment under open-loop (Poisson/gamma) arrivals of the workload's
    requests, attainment averaged over `seeds` arrival draws."""
    def attainment_at(rate: float) -> float:
        outcomes = [simulate(deployment, workload.open_loop(rate, workload.seed + seed))
                    for seed in range(seeds)]
        return sum(slo_attainment(o, slos) for o in outcomes) / seeds

    start = workload.request_rate if math.isfinite(workload.request_rate) else 1.0
    return find_goodput(attainment_at, slos.attainment, min(max(start, MIN_RATE), MAX_RATE),
                        rel_tol)
