"""The PD-versus-colocated report from saved JSON: table, targets, goodput, plots."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vllm.benchmarks.pd_compare import samples
from vllm.benchmarks.pd_compare.goodput import SweepPoint, goodput, sweep_points
from vllm.benchmarks.pd_compare.report import write_report
from vllm.benchmarks.pd_compare.table import COLUMNS, markdown_table

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_result(ttfts_s, itls_s, scale=1.0, errors=None):
    """A saved benchmark_serving result whose summary fields follow from its samples."""
    ttfts_ms = np.array(ttfts_s) * 1000
    tpots_ms = np.array([sum(g) / len(g) for g in itls_s]) * 1000
    gaps_ms = np.array([x for g in itls_s for x in g]) * 1000
    result = {"ttfts": list(ttfts_s), "itls": [list(g) for g in itls_s],
              "output_lens": [len(g) + 1 for g in itls_s], "errors": errors or [""] * len(ttfts_s),
              "completed": len(ttfts_s), "failed": 0, "duration": 10.0 * scale,
              "request_throughput": 2.0 / scale, "output_throughput": 40.0 / scale,
              "total_token_throughput": 100.0 / scale}
    for name, values in (("ttft", ttfts_ms), ("tpot", tpots_ms), ("itl", gaps_ms)):
        result[f"mean_{name}_ms"] = float(values.mean())
        result[f"median_{name}_ms"] = float(np.median(values))
        result[f"p99_{name}_ms"] = float(np.percentile(values, 99))
    return result


def test_table_has_the_seed_columns_and_percentages():
    base = fake_result([0.2, 0.4], [[0.1, 0.1], [0.2, 0.2]])
    better = fake_result([0.2, 0.4], [[0.05, 0.05], [0.1, 0.1]], scale=0.5)
    text = markdown_table([("PD", better), ("Colocated", base)],
                          [("Percentage Difference", "PD", "Colocated")])
    lines = text.strip().splitlines()
    assert lines[0].split(" | ")[1:4] == ["Benchmark Duration (s)", "Mean TTFT (ms)",
                                          "Median TTFT (ms)"]
    assert lines[0].rstrip(" |").endswith("Total Token Throughput (tok/s)")
    assert len(lines) == 5 and len(COLUMNS) == 13
    cells = [c.strip() for c in lines[4].strip("|").split("|")]
    assert cells[0] == "Percentage Difference"
    by_title = dict(zip([t for t, _ in COLUMNS], cells[1:]))
    assert by_title["Benchmark Duration (s)"] == "-50.00%"
    assert by_title["Mean TTFT (ms)"] == "+0.00%"
    assert by_title["Mean TPOT (ms)"] == "-50.00%"
    assert by_title["Request Throughput (req/s)"] == "+100.00%"
    pd_cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert pd_cells[0] == "PD" and pd_cells[1] == "5.00"


def test_samples_match_the_summary_fields():
    result = fake_result([0.5, 0.1, 0.3], [[0.1, 0.3], [0.2], [0.05, 0.05, 0.05]])
    assert np.mean(samples.ttfts_ms(result)) == pytest.approx(result["mean_ttft_ms"])
    assert np.mean(samples.tpots_ms(result)) == pytest.approx(result["mean_tpot_ms"])
    assert np.mean(samples.itls_ms(result)) == pytest.approx(result["mean_itl_ms"])


def test_failed_requests_are_left_out_and_count_as_slo_misses():
    result = fake_result([0.1, 0.1, 0.1, 9.0], [[0.01], [0.01], [0.5], [0.01]],
                         errors=["", "timeout", "", ""])
    assert samples.succeeded(result) == [0, 2, 3]
    assert len(samples.ttfts_ms(result)) == 3
    # request 0 meets both; 1 failed; 2 misses TPOT; 3 misses TTFT
    assert samples.slo_attainment(result, ttft_slo_ms=1000, tpot_slo_ms=100) == 0.25


def test_goodput_is_the_last_rate_before_attainment_drops():
    points = [SweepPoint(r, a, 0, 0) for r, a in [(0.5, 1.0), (1, 0.95), (2, 0.6), (4, 0.95)]]
    assert goodput(points) == 1
    assert goodput([SweepPoint(1, 0.5, 0, 0)]) is None
    ok = fake_result([0.1] * 10, [[0.01]] * 10)
    slow = fake_result([0.1] * 8 + [5.0] * 2, [[0.01]] * 10)
    points = sweep_points({1.0: ok, 2.0: slow}, ttft_slo_ms=1000, tpot_slo_ms=100)
    assert [p.attainment for p in points] == [1.0, 0.8]
    assert goodput(points) == 1.0


def write_saved_run(folder, results: dict, sweeps: dict):
    raw = folder / "raw"
    (raw / "sweep").mkdir(parents=True)
    for name, result in results.items():
        (raw / f"{name}.json").write_text(json.dumps(result))
    for (name, rate), result in sweeps.items():
        (raw / "sweep" / f"{name}_rate{rate:g}.json").write_text(json.dumps(result))
    meta = {"date": "2026-11-21", "machine": "test", "model": "m", "command": "c",
            "workload": {"input_len": 8, "output_len": 4, "num_prompts": 2,
                         "max_concurrency": 1, "request_rate": 1, "seed": 0},
            "setups": [{"name": "colocated", "label": "Colocated"},
                       {"name": "colocated_tp", "label": "Colocated TP=2"},
                       {"name": "pd", "label": "PD 1P1D"}],
            "sweep_setups": ["colocated", "pd"], "sweep_rates": [1.0, 2.0],
            "sweep_num_prompts": 2, "slo": {"ttft_ms": 1000, "tpot_ms": 100}}
    (folder / "meta.json").write_text(json.dumps(meta))


def test_report_files_targets_and_goodput(tmp_path):
    colocated = fake_result([0.2, 0.3], [[0.1, 0.3], [0.1, 0.3]])
    pd = fake_result([0.25, 0.3], [[0.06, 0.06], [0.06, 0.06]], scale=0.9)
    tp = fake_result([0.4, 0.5], [[0.2, 0.2], [0.2, 0.2]])
    good, bad = fake_result([0.1] * 4, [[0.01]] * 4), fake_result([5.0] * 4, [[0.01]] * 4)
    write_saved_run(tmp_path, {"colocated": colocated, "colocated_tp": tp, "pd": pd},
                    {("colocated", 1.0): good, ("colocated", 2.0): bad,
                     ("pd", 1.0): good, ("pd", 2.0): good})
    summary = write_report(str(tmp_path))
    for name in ("table.md", "summary.json", "cdf_ttft.png", "cdf_tpot.png", "cdf_itl.png",
                 "throughput_vs_rate.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    checks = {c["metric"]: c for c in summary["targets"]}
    assert checks["mean_tpot_ms"]["ratio"] == pytest.approx(60 / 200)
    assert checks["mean_tpot_ms"]["met"]
    assert checks["mean_ttft_ms"]["ratio"] == pytest.approx(275 / 250)
    assert checks["mean_ttft_ms"]["met"]  # 1.1x is within 1.2x
    assert checks["request_throughput"]["met"]
    assert summary["goodput"]["colocated"]["goodput_req_s"] == 1.0
    assert summary["goodput"]["pd"]["goodput_req_s"] == 2.0
    table = (tmp_path / "table.md").read_text()
    assert "Percentage Difference (vs Colocated TP=2)" in table
    assert json.loads((tmp_path / "summary.json").read_text())["setups"]["pd"]["failed"] == 0


def test_report_only_command_rebuilds_from_raw(tmp_path):
    result = fake_result([0.2, 0.3], [[0.1], [0.1]])
    write_saved_run(tmp_path, {"colocated": result, "pd": result}, {})
    done = subprocess.run(["bash", os.path.join(REPO_ROOT, "benchmarks", "pd_vs_colocated.sh"),
                           "--report-only", "--result-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| Percentage Difference (vs Colocated) | +0.00% |" in done.stdout
    assert not (tmp_path / "throughput_vs_rate.png").exists()  # no sweep was saved


@pytest.mark.parametrize("flags, message", [
    (["--num-prompts", "0"], "--num-prompts must be at least 1"),
    (["--sweep-rates", "1,x"], "--sweep-rates must be comma-separated numbers"),
    (["--cores", "a-b"], "--cores must look like"),
    (["--report-only"], "--report-only needs --result-dir")])
def test_bad_flags_exit_2_with_one_line(flags, message):
    done = subprocess.run([sys.executable, "-m", "vllm.benchmarks.pd_compare", *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]


def test_environment_variables_become_flags(tmp_path):
    env = dict(os.environ, NUM_PROMPTS="0")
    done = subprocess.run(["bash", os.path.join(REPO_ROOT, "benchmarks", "pd_vs_colocated.sh")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "--num-prompts must be at least 1" in done.stderr


SAVED_RUN = os.path.join(REPO_ROOT, "benchmarks", "results", "2026-11-21")


@pytest.mark.skipif(not os.path.exists(os.path.join(SAVED_RUN, "meta.json")),
                    reason="no saved run in the tree")
def test_saved_run_table_is_rebuilt_exactly_from_its_raw_json(tmp_path):
    """The committed table.md follows from the committed raw JSON (nothing edited by hand),
    and its means agree with the per-request samples benchmark_serving saved."""
    import shutil
    shutil.copytree(os.path.join(SAVED_RUN, "raw"), tmp_path / "raw")
    shutil.copy(os.path.join(SAVED_RUN, "meta.json"), tmp_path / "meta.json")
    summary = write_report(str(tmp_path))
    with open(os.path.join(SAVED_RUN, "table.md"), encoding="utf-8") as handle:
        assert (tmp_path / "table.md").read_text() == handle.read()
    for name in ("colocated", "colocated_tp", "pd"):
        with open(os.path.join(SAVED_RUN, "raw", f"{name}.json"), encoding="utf-8") as handle:
            result = json.load(handle)
        assert result["failed"] == 0 and summary["setups"][name]["failed"] == 0
        assert np.mean(samples.ttfts_ms(result)) == pytest.approx(result["mean_ttft_ms"])
        # the client's TPOT ends at the response's end, the samples' at the last token
        assert np.mean(samples.tpots_ms(result)) == pytest.approx(result["mean_tpot_ms"],
                                                                  rel=1e-2)
        assert np.mean(samples.itls_ms(result)) == pytest.approx(result["mean_itl_ms"])
