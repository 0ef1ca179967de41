"""Printing the result table and building/saving the result JSON, as vLLM does."""
import json
import os
from dataclasses import dataclass
from datetime import datetime

from vllm.benchmarks.serving.metrics import BenchmarkMetrics
from vllm.benchmarks.serving.request_funcs import RequestOutput

METRIC_TITLES = {
    "ttft": ("Time to First Token", "TTFT"),
    "tpot": ("Time per Output Token (excl. 1st token)", "TPOT"),
    "itl": ("Inter-token Latency", "ITL"),
    "e2el": ("End-to-end Latency", "E2EL"),
}
TABLE_WIDTH = 50
MAX_PRINTED_ERRORS = 5


@dataclass
class RunInfo:
    """The run's settings that appear in the table and in the saved JSON."""
    backend: str
    model_id: str
    tokenizer_id: str
    num_prompts: int
    request_rate: float
    burstiness: float
    max_concurrency: int | None
    duration: float
    has_goodput: bool


def percentile_word(p: float) -> str:
    """99.0 -> "99", 99.9 -> "99.9" (the form used in labels and JSON keys)."""
    return str(int(p)) if int(p) == p else str(p)


def format_table(metrics: BenchmarkMetrics, run: RunInfo, shown_metrics: list[str]) -> str:
    """vLLM's "Serving Benchmark Result" table."""
    lines = [f"{' Serving Benchmark Result ':=^{TABLE_WIDTH}}"]
    lines += [_row(label, value) for label, value in _summary_rows(metrics, run)]
    for name in shown_metrics:
        lines += _metric_rows(name, metrics)
    lines.append("=" * TABLE_WIDTH)
    return "\n".join(lines)


def _row(label: str, value) -> str:
    if isinstance(value, float):
        return f"{label:<40} {value:<10.2f}"
    return f"{label:<40} {value:<10}"


def _summary_rows(metrics: BenchmarkMetrics, run: RunInfo) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [("Successful requests:", metrics.completed),
                                      ("Failed requests:", metrics.failed)]
    if run.max_concurrency is not None:
        rows.append(("Maximum request concurrency:", run.max_concurrency))
    if run.request_rate != float("inf"):
        rows.append(("Request rate configured (RPS):", float(run.request_rate)))
    rows += [("Benchmark duration (s):", float(run.duration)),
             ("Total input tokens:", metrics.total_input),
             ("Total generated tokens:", metrics.total_output),
             ("Request throughput (req/s):", metrics.request_throughput)]
    if run.has_goodput:
        rows.append(("Request goodput (req/s):", metrics.request_goodput))
    rows += [("Output token throughput (tok/s):", metrics.output_throughput),
             ("Total Token throughput (tok/s):", metrics.total_token_throughput)]
    return rows


def _metric_rows(name: str, metrics: BenchmarkMetrics) -> list[str]:
    title, short = METRIC_TITLES[name]
    stats = metrics.latencies[name]
    lines = [f"{' ' + title + ' ':-^{TABLE_WIDTH}}",
             _row(f"Mean {short} (ms):", stats.mean_ms),
             _row(f"Median {short} (ms):", stats.median_ms)]
    lines += [_row(f"P{percentile_word(p)} {short} (ms):", value)
              for p, value in stats.percentiles_ms]
    return lines


def format_errors(outputs: list[RequestOutput]) -> str:
    """The most frequent error texts of failed requests, with their counts."""
    counts: dict[str, int] = {}
    for output in outputs:
        if not output.success:
            counts[output.error] = counts.get(output.error, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:MAX_PRINTED_ERRORS]
    return "\n".join(f"Failed x{count}: {error[:300]}" for error, count in ranked)


def build_result(metrics: BenchmarkMetrics, run: RunInfo,
                 outputs: list[RequestOutput]) -> dict:
    """The saved JSON document, with vLLM's field names."""
    result = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": run.backend,
        "model_id": run.model_id,
        "tokenizer_id": run.tokenizer_id,
        "num_prompts": run.num_prompts,
        "request_rate": run.request_rate if run.request_rate != float("inf") else "inf",
        "burstiness": run.burstiness,
        "max_concurrency": run.max_concurrency,
        "duration": run.duration,
        "completed": metrics.completed,
        "failed": metrics.failed,
        "total_input_tokens": metrics.total_input,
        "total_output_tokens": metrics.total_output,
        "request_throughput": metrics.request_throughput,
        "request_goodput": metrics.request_goodput if run.has_goodput else None,
        "output_throughput": metrics.output_throughput,
        "total_token_throughput": metrics.total_token_throughput,
    }
    result.update(_per_request_fields(metrics, outputs))
    result.update(_latency_fields(metrics))
    return result


def _per_request_fields(metrics: BenchmarkMetrics, outputs: list[RequestOutput]) -> dict:
    return {
        "input_lens": [o.prompt_len for o in outputs],
        "output_lens": metrics.output_lens,
        "ttfts": [o.ttft for o in outputs],
        "itls": [o.itl for o in outputs],
        "generated_texts": [o.generated_text for o in outputs],
        "errors": [o.error for o in outputs],
    }


def _latency_fields(metrics: BenchmarkMetrics) -> dict:
    fields = {}
    for name, stats in metrics.latencies.items():
        fields[f"mean_{name}_ms"] = stats.mean_ms
        fields[f"median_{name}_ms"] = stats.median_ms
        fields[f"std_{name}_ms"] = stats.std_ms
        for p, value in stats.percentiles_ms:
            fields[f"p{percentile_word(p)}_{name}_ms"] = value
    return fields


def result_path(run: RunInfo, result_dir: str | None, result_filename: str | None) -> str:
    """vLLM's default name: {backend}-{rate}qps[-concurrency{N}]-{model}-{date}.json."""
    if result_filename is None:
        concurrency = (f"-concurrency{run.max_concurrency}"
                       if run.max_concurrency is not None else "")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base_model = run.model_id.rstrip("/").split("/")[-1]
        result_filename = (f"{run.backend}-{run.request_rate}qps{concurrency}"
                           f"-{base_model}-{stamp}.json")
    return os.path.join(result_dir, result_filename) if result_dir else result_filename


def save_result(result: dict, path: str) -> None:
    """Write the result JSON, creating its folder when needed."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
