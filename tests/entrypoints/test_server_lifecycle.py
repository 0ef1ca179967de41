"""`vllm serve` when its engine-core process dies: clear 503s instead of hangs, then a clean
exit; and start-up failures that end with one line."""
import json
import os
import signal
import subprocess
import time

import pytest
import requests

from remote_server import REPO_ROOT, RemoteServer, free_port, occupied_port, serve_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    remote = RemoteServer(["--max-model-len", "256", "--num-gpu-blocks-override", "64",
                           "--served-model-name", "demo", "--uvicorn-log-level", "warning"])
    try:
        yield remote.wait_ready()
    finally:
        remote.close()


def test_engine_death_gives_503_and_failing_health(server):
    response = requests.post(server.url_for("/v1/completions"), stream=True, timeout=600,
                             json={"prompt": "Count: 1, 2,", "max_tokens": 200,
                                   "ignore_eos": True, "stream": True})
    lines = response.iter_lines()
    assert next(line for line in lines if line).startswith(b"data: ")
    os.kill(server.engine_pid(), signal.SIGKILL)
    rest = [line for line in lines if line]
    assert rest[-1] == b"data: [DONE]"
    assert json.loads(rest[-2][len(b"data: "):])["error"]["code"] == "engine_dead"

    health = requests.get(server.url_for("/health"), timeout=30)
    assert health.status_code == 503
    completion = requests.post(server.url_for("/v1/completions"), timeout=30,
                               json={"prompt": "Hi", "max_tokens": 2})
    assert completion.status_code == 503
    error = completion.json()["error"]
    assert "engine" in error["message"] and "died" in error["message"]
    chat = requests.post(server.url_for("/v1/chat/completions"), timeout=30,
                         json={"messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 503


def test_server_with_a_dead_engine_still_exits_cleanly(server):
    assert server.stop(signal.SIGINT) == 0, server.read_log()
    assert server.leftover_pids() == []


def test_taken_port_fails_fast_with_one_line():
    with occupied_port() as port:
        started = time.monotonic()
        result = subprocess.run(serve_command("--host", "127.0.0.1", "--port", str(port),
                                              "--max-model-len", "256"),
                                capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"vllm serve: error: cannot bind 127.0.0.1:{port}")
    assert time.monotonic() - started < 120


def test_engine_that_cannot_start_ends_start_up_with_one_line():
    result = subprocess.run(serve_command("--host", "127.0.0.1", "--port", str(free_port()),
                                          "--max-model-len", "1024",
                                          "--num-gpu-blocks-override", "4"),
                            capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("vllm serve: error: the engine core failed to start")
    assert "max_model_len=1024" in last


def test_dead_tensor_parallel_rank_fails_health_while_idle(demo_model_dir):
    import psutil
    remote = RemoteServer([demo_model_dir, "--tensor-parallel-size", "3", "--max-model-len",
                           "256", "--served-model-name", "demo",
                           "--uvicorn-log-level", "warning"])
    try:
        server = remote.wait_ready()
        ok = requests.post(server.url_for("/v1/completions"), timeout=120,
                           json={"prompt": "Hi", "max_tokens": 2})
        assert ok.status_code == 200, ok.text
        ranks = psutil.Process(server.engine_pid()).children()
        assert len(ranks) >= 3
        os.kill(ranks[-1].pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while requests.get(server.url_for("/health"), timeout=10).status_code == 200:
            assert time.monotonic() < deadline, "a dead rank went unnoticed"
            time.sleep(0.5)
        failed = requests.post(server.url_for("/v1/completions"), timeout=30,
                               json={"prompt": "Hi", "max_tokens": 2})
        assert failed.status_code == 503
        assert "rank" in failed.json()["error"]["message"]
        assert server.stop(signal.SIGTERM) == 0, server.read_log()
        assert server.leftover_pids() == []
    finally:
        remote.close()
