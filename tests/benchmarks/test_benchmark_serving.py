"""Tests of the serving benchmark client against a fake streaming OpenAI server."""
import asyncio
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from vllm.benchmarks.serving.arrivals import arrival_offsets
from vllm.benchmarks.serving.cli_args import make_parser
from vllm.benchmarks.serving.goodput import parse_goodput
from vllm.benchmarks.serving.main import resolve_model, run_benchmark
from vllm.benchmarks.serving.random_dataset import sample_random_requests
from vllm.benchmarks.serving.sse import iter_sse_data
from vllm.benchmarks.serving.tokenizer import count_tokens, load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
FAKE_SERVER = os.path.join(HERE, "fake_openai_server.py")
SCRIPT = os.path.join(REPO_ROOT, "benchmarks", "benchmark_serving.py")

SAVED_FIELDS = [
    "date", "backend", "model_id", "tokenizer_id", "num_prompts", "request_rate",
    "burstiness", "max_concurrency", "duration", "completed", "total_input_tokens",
    "total_output_tokens", "request_throughput", "request_goodput", "output_throughput",
    "total_token_throughput", "input_lens", "output_lens", "ttfts", "itls",
    "generated_texts", "errors"]


@pytest.fixture(scope="module")
def demo_gguf() -> str:
    from vllm.demo_model import demo_model_path
    try:
        return demo_model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tokenizer(demo_gguf):
    return load_tokenizer(demo_gguf)


@pytest.fixture
def fake_server():
    """Factory: start the fake server with extra flags; returns its base URL."""
    processes = []

    def start(*flags: str) -> str:
        process = subprocess.Popen([sys.executable, FAKE_SERVER, "--port", "0", *flags],
                                   stdout=subprocess.PIPE, text=True)
        processes.append(process)
        first_line = process.stdout.readline().split()
        assert first_line[:1] == ["PORT"], f"fake server did not start: {first_line}"
        return f"http://127.0.0.1:{first_line[1]}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def server_stats(base_url: str) -> dict:
    with urllib.request.urlopen(f"{base_url}/stats", timeout=10) as response:
        return json.load(response)


def bench(tokenizer, base_url: str, *flags: str) -> dict:
    """Run the benchmark in-process with small defaults and the shared tokenizer."""
    argv = ["--base-url", base_url, "--tokenizer", "demo-gguf", "--disable-tqdm",
            "--random-input-len", "32", "--random-output-len", "8", "--num-prompts", "8",
            *flags]
    args = make_parser().parse_args(argv)
    resolve_model(args)
    return run_benchmark(args, tokenizer)


# ---- pure pieces ----

def test_random_prompts_have_target_lengths(tokenizer):
    requests = sample_random_requests(tokenizer, 50, input_len=40, output_len=10,
                                      range_ratio=0.5, prefix_len=8, seed=1)
    for request in requests:
        assert request.prompt_len == count_tokens(tokenizer, request.prompt)
        assert 8 + 20 - 2 <= request.prompt_len <= 8 + 60 + 2
        assert 5 <= request.expected_output_len <= 15
    assert len({r.expected_output_len for r in requests}) > 3
    fixed = sample_random_requests(tokenizer, 20, input_len=64, output_len=4, seed=2)
    assert all(abs(r.prompt_len - 64) <= 2 for r in fixed)
    assert {r.expected_output_len for r in fixed} == {4}


def test_random_prompts_share_prefix_and_are_reproducible(tokenizer):
    first = sample_random_requests(tokenizer, 5, 20, 4, prefix_len=16, seed=3)
    again = sample_random_requests(tokenizer, 5, 20, 4, prefix_len=16, seed=3)
    assert [r.prompt for r in first] == [r.prompt for r in again]
    prefix = os.path.commonprefix([r.prompt for r in first])
    assert count_tokens(tokenizer, prefix) >= 12


def test_range_ratio_must_be_below_one(tokenizer):
    with pytest.raises(ValueError):
        sample_random_requests(tokenizer, 1, 10, 10, range_ratio=1.0)


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 3.0])
def test_arrival_gaps_have_mean_one_over_rate(burstiness):
    offsets = arrival_offsets(20001, request_rate=4.0, burstiness=burstiness, seed=0)
    gaps = np.diff(offsets)
    assert offsets[0] == 0.0
    assert np.mean(gaps) == pytest.approx(0.25, rel=0.03)
    coefficient_of_variation_sq = np.var(gaps) / np.mean(gaps) ** 2
    assert coefficient_of_variation_sq == pytest.approx(1 / burstiness, rel=0.1)
    assert np.array_equal(offsets, arrival_offsets(20001, 4.0, burstiness, seed=0))


def test_infinite_rate_sends_everything_at_once():
    assert not arrival_offsets(5, float("inf")).any()


def test_sse_events_split_across_chunks():
    async def chunks():
        for piece in [b"data: {\"a\"", b": 1}\n\n: keep-alive\n\ndata: x\r\n", b"\r\ndata: [DONE]"]:
            yield piece

    async def collect():
        return [data async for data in iter_sse_data(chunks())]

    assert asyncio.run(collect()) == ['{"a": 1}', "x", "[DONE]"]


def test_goodput_flag_parsing():
    assert parse_goodput(["ttft:500", "e2el:2000"]) == {"ttft": 500.0, "e2el": 2000.0}
    for bad in (["itl:5"], ["ttft"], ["ttft:-1"], ["tpot:fast"]):
        with pytest.raises(ValueError):
            parse_goodput(bad)


# ---- against the fake server ----

def test_latencies_match_injected_delays(tokenizer, fake_server):
    url = fake_server("--ttft-ms", "100", "--itl-ms", "20", "--num-tokens", "10")
    result = bench(tokenizer, url, "--max-concurrency", "4",
                   "--percentile-metrics", "ttft,tpot,itl,e2el")
    assert result["completed"] == 8
    assert result["output_lens"] == [10] * 8
    assert result["total_output_tokens"] == 80
    assert result["total_input_tokens"] == sum(result["input_lens"])
    assert 95 <= result["mean_ttft_ms"] <= 150
    assert 19 <= result["median_itl_ms"] <= 40
    assert 19 <= result["mean_tpot_ms"] <= 40
    assert 275 <= result["mean_e2el_ms"] <= 500
    assert all(len(itl) == 9 for itl in result["itls"])
    assert result["generated_texts"][0] == " the" * 10


def test_max_concurrency_is_never_exceeded(tokenizer, fake_server):
    url = fake_server("--ttft-ms", "30", "--itl-ms", "5")
    result = bench(tokenizer, url, "--num-prompts", "20", "--max-concurrency", "3")
    assert result["completed"] == 20
    assert result["max_concurrency"] == 3
    assert server_stats(url)["peak_concurrency"] == 3


def test_unlimited_concurrency_sends_all_at_once(tokenizer, fake_server):
    url = fake_server("--ttft-ms", "200", "--itl-ms", "5")
    bench(tokenizer, url, "--num-prompts", "12")
    assert server_stats(url)["peak_concurrency"] == 12


def test_goodput_counts_requests_within_slos(tokenizer, fake_server, capsys):
    url = fake_server("--ttft-ms", "20", "--itl-ms", "5", "--slow-every", "2",
                      "--slow-ttft-ms", "300")
    result = bench(tokenizer, url, "--goodput", "ttft:150", "tpot:100")
    good = result["request_goodput"] * result["duration"]
    assert good == pytest.approx(4)
    assert result["request_throughput"] * result["duration"] == pytest.approx(8)
    assert "Request goodput (req/s):" in capsys.readouterr().out


def test_request_rate_spaces_arrivals(tokenizer, fake_server):
    url = fake_server("--ttft-ms", "5", "--itl-ms", "1")
    result = bench(tokenizer, url, "--num-prompts", "30", "--request-rate", "20",
                   "--seed", "7")
    arrivals = np.array(server_stats(url)["arrival_times"])
    expected = arrival_offsets(30, 20.0, 1.0, seed=7)
    assert np.abs((arrivals - arrivals[0]) - expected).max() < 0.05
    assert result["duration"] >= expected[-1]
    assert result["request_rate"] == 20.0


def test_failed_requests_are_counted_and_reported(tokenizer, fake_server, capsys):
    url = fake_server("--ttft-ms", "10", "--itl-ms", "2", "--fail-every", "3")
    result = bench(tokenizer, url, "--num-prompts", "9", "--max-concurrency", "1")
    assert result["completed"] == 6
    errors = [error for error in result["errors"] if error]
    assert len(errors) == 3
    assert all("500" in error and "injected failure" in error for error in errors)
    assert result["output_lens"].count(0) == 3
    out = capsys.readouterr().out
    assert "Failed requests:                         3" in out
    assert "injected failure" in out


def test_chat_backend_counts_tokens_without_usage(tokenizer, fake_server):
    url = fake_server("--ttft-ms", "80", "--itl-ms", "5", "--num-tokens", "6",
                      "--no-usage")
    result = bench(tokenizer, url, "--backend", "openai-chat")
    assert result["completed"] == 8
    assert result["output_lens"] == [6] * 8
    assert result["mean_ttft_ms"] >= 75, "the empty role chunk must not count as TTFT"
    assert server_stats(url)["bodies"][0]["messages"][0]["role"] == "user"


def test_request_body_and_model_discovery(tokenizer, fake_server):
    url = fake_server("--ttft-ms", "5", "--itl-ms", "1")
    result = bench(tokenizer, url, "--num-prompts", "2", "--ignore-eos",
                   "--temperature", "0.5")
    body = server_stats(url)["bodies"][0]
    assert result["model_id"] == "fake-model" and body["model"] == "fake-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 8
    assert body["ignore_eos"] is True
    assert body["temperature"] == 0.5


def test_saved_json_and_printed_table(tokenizer, fake_server, tmp_path, capsys):
    url = fake_server("--ttft-ms", "10", "--itl-ms", "2")
    bench(tokenizer, url, "--save-result", "--result-dir", str(tmp_path),
          "--max-concurrency", "2", "--goodput", "e2el:5000",
          "--metric-percentiles", "50,99.9")
    [saved] = list(tmp_path.iterdir())
    assert saved.name.startswith("vllm-infqps-concurrency2-fake-model-")
    result = json.loads(saved.read_text())
    for name in SAVED_FIELDS:
        assert name in result, name
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p50", "p99.9"):
            assert f"{stat}_{metric}_ms" in result
    assert result["request_rate"] == "inf"
    out = capsys.readouterr().out
    for line in ("============ Serving Benchmark Result ============",
                 "Benchmark duration (s):", "Total Token throughput (tok/s):",
                 "P99.9 TTFT (ms):", "Median ITL (ms):"):
        assert line in out
    assert "E2EL" not in out


@pytest.mark.slow
def test_script_end_to_end_with_gguf_tokenizer(demo_gguf, fake_server, tmp_path):
    url = fake_server("--ttft-ms", "10", "--itl-ms", "2")
    completed = subprocess.run(
        [sys.executable, SCRIPT, "--base-url", url, "--tokenizer", demo_gguf,
         "--num-prompts", "4", "--random-input-len", "16", "--random-output-len", "4",
         "--save-result", "--result-filename", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "Successful requests:                     4" in completed.stdout
    assert json.loads((tmp_path / "out.json").read_text())["tokenizer_id"] == demo_gguf
