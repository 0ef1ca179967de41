"""benchmarks/pd_vs_colocated.sh end to end on the demo model with a tiny workload."""
import json
import os
import subprocess

import psutil
import pytest

from free_ports import free_port_range, is_free as port_is_free  # noqa: F401

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORT_OFFSETS = (0, 1, 2, 10, 30, 100, 101)  # colocated, TP, proxy, P, D, kv ports


def free_base_port() -> int:
    return free_port_range(max(PORT_OFFSETS) + 1)


@pytest.mark.slow
def test_comparison_produces_every_file_and_serves_every_request(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    done = subprocess.run(
        ["bash", os.path.join(REPO_ROOT, "benchmarks", "pd_vs_colocated.sh"),
         "--input-len", "24", "--output-len", "4", "--num-prompts", "3",
         "--sweep-rates", "2", "--sweep-num-prompts", "2", "--cores", "0-1",
         "--base-port", str(free_base_port()), "--result-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in ("meta.json", "table.md", "summary.json", "cdf_ttft.png", "cdf_tpot.png",
                 "cdf_itl.png", "throughput_vs_rate.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["setups"]) == {"colocated", "colocated_tp", "pd"}
    for name, figures in summary["setups"].items():
        assert (figures["completed"], figures["failed"]) == (3, 0), name
    for name in ("colocated", "pd"):
        sweep = json.loads((tmp_path / "raw" / "sweep" / f"{name}_rate2.json").read_text())
        assert (sweep["completed"], sweep["failed"]) == (2, 0)
    assert "| PD 1P1D (2 cores) |" in (tmp_path / "table.md").read_text()
    rows = [line.split() for line in
            (tmp_path / "logs" / "pd" / "pids.started").read_text().splitlines()]
    pids = [int(row[1]) for row in rows if len(row) > 1 and row[1].isdigit()]  # ROLE PID ...
    assert pids and not any(psutil.pid_exists(pid) and
                            psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                            for pid in pids)
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left
