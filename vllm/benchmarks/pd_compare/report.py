"""Everything the comparison writes, rebuilt from a result folder's raw JSON:
table.md, summary.json and the PNG plots."""
import json
import os

from vllm.benchmarks.pd_compare.goodput import goodput, sweep_points
from vllm.benchmarks.pd_compare.plots import METRICS, plot_cdfs, plot_rate_sweep
from vllm.benchmarks.pd_compare.table import markdown_table

# The targets, as PD / colocated ratios: (key, bound, "max" or "min")
TARGETS = [("mean_tpot_ms", 0.70, "max"), ("p99_itl_ms", 0.50, "max"),
           ("request_throughput", 1.0, "min"), ("mean_ttft_ms", 1.2, "max")]
PD = "pd"
BASELINE = "colocated"


def load_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def main_results(result_dir: str, meta: dict) -> dict[str, dict]:
    """Setup name -> saved result of the main workload, in the meta's order."""
    return {setup["name"]: load_json(os.path.join(result_dir, "raw", f"{setup['name']}.json"))
            for setup in meta["setups"]
            if os.path.exists(os.path.join(result_dir, "raw", f"{setup['name']}.json"))}


def sweep_results(result_dir: str, meta: dict) -> dict[str, dict[float, dict]]:
    found: dict[str, dict[float, dict]] = {}
    for name in meta.get("sweep_setups", []):
        for rate in meta.get("sweep_rates", []):
            path = os.path.join(result_dir, "raw", "sweep", f"{name}_rate{rate:g}.json")
            if os.path.exists(path):
                found.setdefault(name, {})[rate] = load_json(path)
    return found


def target_checks(results: dict[str, dict]) -> list[dict]:
    if PD not in results or BASELINE not in results:
        return []
    checks = []
    for key, bound, kind in TARGETS:
        ratio = results[PD][key] / results[BASELINE][key] if results[BASELINE][key] else None
        met = ratio is not None and (ratio <= bound if kind == "max" else ratio >= bound)
        checks.append({"metric": key, "ratio": ratio, "bound": bound, "kind": kind,
                       "met": met})
    return checks


def write_report(result_dir: str) -> dict:
    meta = load_json(os.path.join(result_dir, "meta.json"))
    labels = {s["name"]: s["label"] for s in meta["setups"]}
    results = main_results(result_dir, meta)
    summary = {"meta": meta, "setups": {}, "targets": target_checks(results), "goodput": {}}
    for name, result in results.items():
        summary["setups"][name] = {key: result.get(key) for key in (
            "completed", "failed", "duration", "request_throughput", "output_throughput",
            "total_token_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
            "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "median_itl_ms",
            "p99_itl_ms")}
    slo = meta["slo"]
    points = {name: sweep_points(by_rate, slo["ttft_ms"], slo["tpot_ms"])
              for name, by_rate in sweep_results(result_dir, meta).items()}
    for name, setup_points in points.items():
        summary["goodput"][name] = {"goodput_req_s": goodput(setup_points),
                                    "points": [p._asdict() for p in setup_points]}
    _write_plots(result_dir, results, points, labels, slo)
    with open(os.path.join(result_dir, "table.md"), "w", encoding="utf-8") as handle:
        handle.write(_markdown(meta, results, summary, labels))
    with open(os.path.join(result_dir, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary


def _write_plots(result_dir, results, points, labels, slo) -> None:
    by_label = {labels[name]: result for name, result in results.items()}
    for metric in METRICS:
        plot_cdfs(by_label, metric, os.path.join(result_dir, f"cdf_{metric}.png"))
    if points:
        plot_rate_sweep({labels[name]: p for name, p in points.items()},
                        os.path.join(result_dir, "throughput_vs_rate.png"),
                        f"TTFT ≤ {slo['ttft_ms']:g} ms and TPOT ≤ {slo['tpot_ms']:g} ms")


def _markdown(meta: dict, results: dict, summary: dict, labels: dict) -> str:
    rows = [(labels[name], result) for name, result in results.items()]
    differences = [(f"Percentage Difference (vs {labels[name]})", labels[PD], labels[name])
                   for name in results if name != PD and PD in results]
    workload = meta["workload"]
    parts = [f"# PD versus colocated, {meta['date']}\n",
             f"Machine: {meta['machine']}. Model: `{meta['model']}`.\n",
             f"Workload: random, {workload['input_len']} in / {workload['output_len']} out, "
             f"{workload['num_prompts']} prompts, max concurrency "
             f"{workload['max_concurrency']}, request rate {workload['request_rate']}, "
             f"range ratio {workload.get('random_range_ratio', 0.0):g}, "
             f"ignore-eos, seed {workload['seed']}.\n",
             f"Command: `{meta['command']}`\n",
             markdown_table(rows, differences)]
    parts.append(_targets_markdown(summary["targets"]))
    parts.append(_goodput_markdown(summary["goodput"], labels, meta["slo"]))
    return "\n".join(parts)


def _targets_markdown(checks: list[dict]) -> str:
    if not checks:
        return ""
    lines = ["| Target (PD / colocated) | Bound | Measured | Met |", "|---|---|---|---|"]
    for check in checks:
        sign = "≤" if check["kind"] == "max" else "≥"
        ratio = "n/a" if check["ratio"] is None else f"{check['ratio']:.2f}×"
        lines.append(f"| {check['metric']} | {sign} {check['bound']:.2f}× | {ratio} | "
                     f"{'yes' if check['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _goodput_markdown(goodputs: dict, labels: dict, slo: dict) -> str:
    if not goodputs:
        return ""
    lines = [f"Goodput (highest swept rate with ≥ 90% of requests meeting TTFT ≤ "
             f"{slo['ttft_ms']:g} ms and TPOT ≤ {slo['tpot_ms']:g} ms):\n",
             "| Setup | Rate (req/s): attainment | Goodput (req/s) |", "|---|---|---|"]
    for name, entry in goodputs.items():
        cells = ", ".join(f"{p['rate']:g}: {p['attainment'] * 100:.0f}%"
                          for p in entry["points"])
        value = entry["goodput_req_s"]
        lines.append(f"| {labels[name]} | {cells} | "
                     f"{'< lowest rate' if value is None else f'{value:g}'} |")
    return "\n".join(lines) + "\n"

