"""The seed's comparison table: one row per setup, then a percentage-difference row."""
from typing import Optional

# (column header, key of benchmark_serving's saved JSON), in the seed's order
COLUMNS = [
    ("Benchmark Duration (s)", "duration"),
    ("Mean TTFT (ms)", "mean_ttft_ms"),
    ("Median TTFT (ms)", "median_ttft_ms"),
    ("P99 TTFT (ms)", "p99_ttft_ms"),
    ("Mean TPOT (ms)", "mean_tpot_ms"),
    ("Median TPOT (ms)", "median_tpot_ms"),
    ("P99 TPOT (ms)", "p99_tpot_ms"),
    ("Mean ITL (ms)", "mean_itl_ms"),
    ("Median ITL (ms)", "median_itl_ms"),
    ("P99 ITL (ms)", "p99_itl_ms"),
    ("Request Throughput (req/s)", "request_throughput"),
    ("Output Token Throughput (tok/s)", "output_throughput"),
    ("Total Token Throughput (tok/s)", "total_token_throughput"),
]


def percentage_difference(value: float, baseline: float) -> Optional[float]:
    """(value - baseline) / baseline in percent; None when the baseline is zero."""
    if not baseline:
        return None
    return (value - baseline) / baseline * 100.0


def format_percent(difference: Optional[float]) -> str:
    return "n/a" if difference is None else f"{difference:+.2f}%"


def markdown_table(rows: list[tuple[str, dict]],
                   differences: list[tuple[str, str, str]]) -> str:
    """rows: (label, saved result); differences: (row label, compared label, baseline
    label) for each percentage-difference row wanted."""
    results = dict(rows)
    header = "| Version | " + " | ".join(title for title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("-" * (len(part) + 2) for part in
                          ["Version"] + [title for title, _ in COLUMNS]) + "|"
    lines = [header, rule]
    for label, result in rows:
        lines.append(f"| {label} | " + " | ".join(
            f"{result[key]:.2f}" for _, key in COLUMNS) + " |")
    for row_label, compared, baseline in differences:
        cells = [format_percent(percentage_difference(results[compared][key],
                                                      results[baseline][key]))
                 for _, key in COLUMNS]
        lines.append(f"| {row_label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
