"""benchmark_serving's figures, computed from simulated requests."""
from dataclasses import asdict, dataclass

from vllm.benchmarks.serving.goodput import meets_slos
from vllm.benchmarks.serving.metrics import summarize
from vllm.planner.sim_instance import SimRequest
from vllm.planner.simulate import SimOutcome
from vllm.planner.workload import Slos


def ttft_s(request: SimRequest) -> float:
    return request.token_times[0] - request.sent_s


def tpot_s(request: SimRequest) -> float:
    """(E2EL - TTFT) / (tokens - 1), 0 for one-token answers (benchmark_serving's rule)."""
    if len(request.token_times) <= 1:
        return 0.0
    return (request.token_times[-1] - request.token_times[0]) / (len(request.token_times) - 1)


def itls_s(request: SimRequest) -> list[float]:
    times = request.token_times
    return [later - earlier for earlier, later in zip(times, times[1:])]


def meets(request: SimRequest, slos: Slos) -> bool:
    objectives = {"ttft": slos.ttft_s * 1000, "tpot": slos.tpot_s * 1000}
    return meets_slos(objectives, ttft_s(request), tpot_s(request),
                      request.done_s - request.sent_s)


def slo_attainment(outcome: SimOutcome, slos: Slos) -> float:
    """Fraction of the requests that meet both the TTFT and the TPOT objective."""
    return sum(meets(r, slos) for r in outcome.requests) / len(outcome.requests)


@dataclass(frozen=True)
class SimSummary:
    """Latencies in milliseconds, throughputs per second, attainment as a fraction."""
    duration_s: float
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    mean_ttft_ms: float
    median_ttft_ms: float
    p99_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    p99_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    p99_itl_ms: float
    slo_attainment: float

    def to_json(self) -> dict:
        return asdict(self)


def summarize_outcome(outcome: SimOutcome, slos: Slos) -> SimSummary:
    requests, duration = outcome.requests, outcome.duration_s
    ttft = summarize([ttft_s(r) for r in requests], [99])
    tpot = summarize([tpot_s(r) for r in requests if len(r.token_times) > 1], [99])
    itl = summarize([gap for r in requests for gap in itls_s(r)], [99])
    output_tokens = sum(len(r.token_times) for r in requests)
    input_tokens = sum(r.prompt_len for r in requests)
    return SimSummary(
        duration_s=duration,
        request_throughput=len(requests) / duration,
        output_throughput=output_tokens / duration,
        total_token_throughput=(input_tokens + output_tokens) / duration,
        mean_ttft_ms=ttft.mean_ms, median_ttft_ms=ttft.median_ms,
        p99_ttft_ms=ttft.percentiles_ms[0][1],
        mean_tpot_ms=tpot.mean_ms, median_tpot_ms=tpot.median_ms,
        p99_tpot_ms=tpot.percentiles_ms[0][1],
        mean_itl_ms=itl.mean_ms, median_itl_ms=itl.median_ms,
        p99_itl_ms=itl.percentiles_ms[0][1],
        slo_attainment=slo_attainment(outcome, slos))
