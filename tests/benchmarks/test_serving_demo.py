"""benchmarks/serving_demo.sh on the demo model with a tiny workload."""
import glob
import json
import os
import subprocess

import psutil
import pytest
from test_pd_vs_colocated_e2e import REPO_ROOT, free_base_port, port_is_free


@pytest.mark.slow
def test_serving_demo_serves_every_request_and_stops_its_server(tmp_path):
    port = free_base_port()
    env = dict(os.environ, PORT=str(port), NUM_PROMPTS="3", INPUT_LEN="16", OUTPUT_LEN="4",
               MAX_CONCURRENCY="2", OUT_DIR=str(tmp_path))
    done = subprocess.run(
        ["bash", os.path.join(REPO_ROOT, "benchmarks", "serving_demo.sh"),
         "--max-num-batched-tokens", "512"],
        capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Total Token throughput (tok/s)" in done.stdout
    [result_file] = glob.glob(str(tmp_path / "*.json"))
    result = json.loads(open(result_file).read())
    assert (result["completed"], result["num_prompts"]) == (3, 3)
    server_pid = int((tmp_path / "server.pid").read_text())
    assert not psutil.pid_exists(server_pid) or \
        psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE
    assert port_is_free(port)
