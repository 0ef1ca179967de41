"""The three pd_example scripts as a user runs them, on the demo model: start 1P1D + proxy,
check them, stop them; nothing they started is left running."""
import os
import subprocess
import sys

import psutil
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "entrypoints"))
from remote_server import REPO_ROOT as REPO, free_port_range, recorded_pids  # noqa: E402

pytestmark = pytest.mark.slow


def test_start_check_stop(tmp_path):
    base = free_port_range(40)
    env = {**os.environ, "HOST": "127.0.0.1", "PROXY_PORT": str(base),
           "PREFILL_BASE_PORT": str(base + 1), "DECODE_BASE_PORT": str(base + 2),
           "KV_BASE_PORT": str(base + 10), "LOG_DIR": str(tmp_path / "logs"),
           "PID_FILE": str(tmp_path / "pids"), "HEALTH_TIMEOUT": "600"}
    script = os.path.join(REPO, "pd_example")
    started = subprocess.run(["bash", f"{script}/disaggregated_prefill.sh"], env=env,
                             cwd=REPO, capture_output=True, text=True, timeout=900)
    pids = recorded_pids(env["PID_FILE"]) if os.path.exists(env["PID_FILE"]) else []
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://127.0.0.1:{base}" in started.stdout
        assert len(pids) == 3  # prefill, decode, proxy
        checked = subprocess.run(["bash", f"{script}/test_pd_online.sh"], env=env, cwd=REPO,
                                 capture_output=True, text=True, timeout=600)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "FAIL" not in checked.stdout
        pids += [child.pid for pid in pids for child in psutil.Process(pid).children(True)]
    finally:
        stopped = subprocess.run(["bash", f"{script}/kill_server.sh"], env=env, cwd=REPO,
                                 capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not os.path.exists(env["PID_FILE"])
    alive = [pid for pid in pids if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
