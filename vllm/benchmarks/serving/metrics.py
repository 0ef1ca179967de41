"""Aggregating per-request measurements into vLLM's serving metrics."""
from dataclasses import dataclass, field

import numpy as np

from vllm.benchmarks.serving.goodput import meets_slos
from vllm.benchmarks.serving.request_funcs import RequestOutput
from vllm.benchmarks.serving.tokenizer import count_tokens


@dataclass
class LatencyStats:
    """Summary of one latency metric, in milliseconds."""
    mean_ms: float
    median_ms: float
    std_ms: float
    percentiles_ms: list[tuple[float, float]]


@dataclass
class BenchmarkMetrics:
    """Everything the report prints or saves, derived from the request outputs."""
    completed: int
    failed: int
    good_completed: int
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float
    output_throughput: float
    total_token_throughput: float
    output_lens: list[int]
    latencies: dict[str, LatencyStats] = field(default_factory=dict)


def output_token_count(output: RequestOutput, tokenizer) -> int:
    """Generated tokens: the server's usage figure, else the tokenized text."""
    if output.output_tokens:
        return output.output_tokens
    return count_tokens(tokenizer, output.generated_text)


def time_per_output_token(output: RequestOutput, output_len: int) -> float:
    """(E2EL - TTFT) / (tokens - 1) in seconds; 0 for single-token outputs."""
    if output_len <= 1:
        return 0.0
    return (output.latency - output.ttft) / (output_len - 1)


def summarize(values_s: list[float], percentiles: list[float]) -> LatencyStats:
    """Mean, median, standard deviation and percentiles of values given in seconds."""
    values_ms = np.asarray(values_s or [0.0], dtype=float) * 1000
    return LatencyStats(
        mean_ms=float(np.mean(values_ms)),
        median_ms=float(np.median(values_ms)),
        std_ms=float(np.std(values_ms)),
        percentiles_ms=[(p, float(np.percentile(values_ms, p))) for p in percentiles])


def calculate_metrics(outputs: list[RequestOutput], duration_s: float, tokenizer,
                      percentiles: list[float],
                      slos: dict[str, float] | None = None) -> BenchmarkMetrics:
    """Throughputs, goodput and latency statistics over the successful requests."""
    output_lens = [output_token_count(o, tokenizer) if o.success else 0 for o in outputs]
    succeeded = [(o, n) for o, n in zip(outputs, output_lens) if o.success]
    tpots = [time_per_output_token(o, n) for o, n in succeeded]
    good = sum(meets_slos(slos, o.ttft, tpot, o.latency)
               for (o, _), tpot in zip(succeeded, tpots)) if slos else 0
    total_input = sum(o.prompt_len for o, _ in succeeded)
    total_output = sum(output_lens)
    return BenchmarkMetrics(
        completed=len(succeeded),
        failed=len(outputs) - len(succeeded),
        good_completed=good,
        total_input=total_input,
        total_output=total_output,
        request_throughput=len(succeeded) / duration_s,
        request_goodput=good / duration_s,
        output_throughput=total_output / duration_s,
        total_token_throughput=(total_input + total_output) / duration_s,
        output_lens=output_lens,
        latencies=_latency_stats(succeeded, percentiles))


def _latency_stats(succeeded: list[tuple[RequestOutput, int]],
                   percentiles: list[float]) -> dict[str, LatencyStats]:
    multi_token = [(o, n) for o, n in succeeded if n > 1]
    return {
        "ttft": summarize([o.ttft for o, _ in succeeded], percentiles),
        "tpot": summarize([time_per_output_token(o, n) for o, n in multi_token], percentiles),
        "itl": summarize([gap for o, _ in succeeded for gap in o.itl], percentiles),
        "e2el": summarize([o.latency for o, _ in succeeded], percentiles),
    }
