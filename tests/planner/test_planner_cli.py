import json
import os
import subprocess
import sys

import pytest

from vllm.entrypoints.cli.main import build_parser, main
from vllm.planner.cost_model import Sample, StepCost, StepLoad
from vllm.planner.model_shape import ModelShape
from vllm.planner.profile import Profile, ThreadProfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = ModelShape(30, 576, 9, 3, 64, 1536, 8192)


@pytest.fixture
def profile_file(tmp_path) -> str:
    """A synthetic two-core profile: 2 threads twice as fast as 1 on prefills."""
    samples = [Sample(StepLoad(10 * k, 0.0, k, 0), 0.01 * k) for k in range(1, 6)]
    costs = {2: StepCost(0.01, 0.001, 0.0005, 0.003, 2e-6),
             1: StepCost(0.012, 0.002, 0.001, 0.004, 3e-6)}
    profile = Profile("demo.gguf", SHAPE, {t: ThreadProfile(t, samples, c)
                                           for t, c in costs.items()})
    path = tmp_path / "profile.json"
    profile.save(str(path))
    return str(path)


WORKLOAD = ["--input-len", "256", "--output-len", "16", "--num-prompts", "8",
            "--request-rate", "2", "--max-concurrency", "2", "--goodput-seeds", "1"]


def test_plan_subcommand_parses_the_flags():
    args = build_parser().parse_args(["plan", "--cpus", "2", "--input-len", "512",
                                      "--request-rate", "inf", "--ttft-slo-ms", "500"])
    assert args.num_cores == 2 and args.input_len == 512
    assert args.request_rate == float("inf") and args.ttft_slo_ms == 500.0
    assert args.max_num_batched_tokens == 2048 and args.profile_file is None


def test_plan_from_a_saved_profile_prints_a_table_and_writes_json(profile_file, tmp_path,
                                                                   capsys):
    output = tmp_path / "plan.json"
    assert main(["plan", "--profile-file", profile_file, "--num-cores", "2",
                 "--output-json", str(output), *WORKLOAD]) == 0
    printed = capsys.readouterr().out
    assert "| colocated TP=1 (2 thr/rank) |" in printed
    assert "| 1P1D TP=1 (1 thr/rank) |" in printed
    plan = json.loads(output.read_text())
    assert plan["recommended"] in {entry["layout"]["name"] for entry in plan["layouts"]}
    assert f"Recommended: {plan['recommended']}" in printed
    assert all(entry["prediction"]["mean_ttft_ms"] > 0 for entry in plan["layouts"])
    assert plan["transfer"]["kv_bytes_per_token"] == 46_080


@pytest.mark.parametrize("flags, message", [
    (["--input-len", "0"], "--input-len"),
    (["--request-rate", "-1"], "--request-rate"),
    (["--ttft-slo-ms", "0"], "SLOs"),
    (["--max-concurrency", "0"], "--max-concurrency"),
    (["--num-cores", "0"], "--num-cores"),
    (["--kv-bandwidth-gbps", "0"], "--kv-bandwidth-gbps"),
    (["--max-num-seqs", "0"], "--max-num-seqs"),
    (["--slo-attainment", "1.5"], "attainment"),
])
def test_bad_values_end_with_one_line_and_exit_code_2(profile_file, flags, message, capsys):
    assert main(["plan", "--profile-file", profile_file, *WORKLOAD, *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error


def test_missing_profile_file_exits_2(tmp_path, capsys):
    assert main(["plan", "--profile-file", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err


def test_profile_lacking_a_thread_count_exits_2(profile_file, capsys):
    assert main(["plan", "--profile-file", profile_file, "--num-cores", "4", *WORKLOAD]) == 2
    assert "no measurements" in capsys.readouterr().err


def test_benchmarks_wrapper_reports_bad_flags_with_exit_code_2():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "pd_planner.py"),
                             "--output-len", "0", "--profile-file", "x.json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pd_planner.py: error: --output-len must be at least 1, got 0"]
