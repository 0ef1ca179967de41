"""The all-reduce micro-benchmark runs end to end and validates its flags."""
import json

import pytest

from benchmarks import benchmark_allreduce


def test_small_run_writes_json(tmp_path, capsys):
    out = tmp_path / "result.json"
    result = benchmark_allreduce.main(["--num-tokens", "4", "--hidden-size", "8", "--iters",
                                       "5", "--warmup", "1", "--output-json", str(out)])
    assert result["shape"] == [4, 8] and result["bytes"] == 4 * 8 * 4
    assert 0 < result["p10_us"] <= result["median_us"] <= result["p90_us"]
    assert json.loads(out.read_text())["iters"] == 5
    assert "all-reduce of (4, 8) float32" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--world-size", "--iters", "--hidden-size"])
def test_non_positive_sizes_are_rejected(flag):
    with pytest.raises(SystemExit):
        benchmark_allreduce.parse_args([flag, "0"])
