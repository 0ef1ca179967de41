"""A short benchmarks/pd_chaos.py run: a PD instance SIGKILLed under streaming load through
the proxy; every request ends (no hang), promptly, and the survivors leak no KV block."""
import importlib.util
import os

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_benchmark():
    path = os.path.join(REPO_ROOT, "benchmarks", "pd_chaos.py")
    spec = importlib.util.spec_from_file_location("pd_chaos", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pd_chaos = _load_benchmark()


def _run(scenario: str, out_dir) -> dict:
    args = pd_chaos.parse_args(["--scenario", scenario, "--num-requests", "24",
                                "--concurrency", "8", "--input-len", "32",
                                "--output-len", "24", "--out-dir", str(out_dir)])
    result = pd_chaos.run_scenario(args)
    pd_chaos.print_report(result)
    return result


def _assert_no_leak(result: dict) -> None:
    for name, leak in result["survivors"].items():
        assert leak["leaked_blocks"] == 0, f"{name} leaked KV blocks: {leak}"


def test_decode_kill_ends_every_stream_with_an_error_promptly(tmp_path):
    result = _run("decode-kill", tmp_path)
    counts = result["counts"]
    assert counts["hung"] == 0 and counts["cut"] == 0, counts
    assert result["kill_happened"] and sum(counts.values()) == 24
    assert result["in_flight_at_kill"] > 0
    assert set(result["in_flight_endings"]) <= {"sse_error", "http_error"}
    assert set(result["sse_error_codes"]) <= {"upstream_broken"}
    assert result["in_flight_ended_within_5s"], result["max_end_after_kill_s"]
    _assert_no_leak(result)


def test_prefill_kill_completes_every_request(tmp_path):
    result = _run("prefill-kill", tmp_path)
    counts = result["counts"]
    assert result["kill_happened"] and counts["completed"] == 24, counts
    # The decoder recomputes at once when its producer dies (no kv_wait_timeout_s wait).
    assert (result["max_extra_latency_recomputed_s"] or 0) <= 10, result
    _assert_no_leak(result)
