"""PNG plots (matplotlib, no display): latency CDFs per setup and throughput per rate."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vllm.benchmarks.pd_compare import samples  # noqa: E402
from vllm.benchmarks.pd_compare.goodput import SweepPoint  # noqa: E402

METRICS = {"ttft": ("TTFT (ms)", samples.ttfts_ms),
           "tpot": ("TPOT (ms)", samples.tpots_ms),
           "itl": ("ITL (ms)", samples.itls_ms)}


def plot_cdfs(results: dict[str, dict], metric: str, path: str) -> None:
    """One line per setup: the share of samples at or below each latency."""
    title, extract = METRICS[metric]
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, result in results.items():
        values = np.sort(np.asarray(extract(result), dtype=float))
        if values.size:
            shares = np.arange(1, values.size + 1) / values.size
            axes.step(values, shares, where="post", label=label)
    axes.set_xscale("log")  # the tails (prefill stalls) sit decades above the medians
    axes.set_xlabel(title)
    axes.set_ylabel("share of samples")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(f"CDF of {title.split()[0]}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_rate_sweep(points_by_setup: dict[str, list[SweepPoint]], path: str,
                    slo_text: str) -> None:
    """Request throughput and SLO attainment against the offered request rate."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in points_by_setup.items():
        rates = [p.rate for p in points]
        left.plot(rates, [p.request_throughput for p in points], marker="o", label=label)
        right.plot(rates, [p.attainment * 100 for p in points], marker="o", label=label)
    left.set_xlabel("request rate (req/s)")
    left.set_ylabel("request throughput (req/s)")
    left.grid(alpha=0.3)
    left.legend()
    right.axhline(90, color="grey", linestyle="--", linewidth=1)
    right.set_xlabel("request rate (req/s)")
    right.set_ylabel(f"requests meeting {slo_text} (%)")
    right.set_ylim(0, 102)
    right.grid(alpha=0.3)
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
