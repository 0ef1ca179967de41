"""A head (`--data-parallel-size 2 --data-parallel-size-local 1`) and a headless node
(`--headless --data-parallel-start-rank 1`) on 127.0.0.1: mismatched nodes are refused at
the handshake with one line on both sides and the head stays unhealthy; the right one
joins, and the pair gives one engine's tokens."""
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from dp_server import (DP_ENV, PROMPTS, HeadlessNode, completion_body, engine_metric,
                       reference_texts, tiny_server_args)
from remote_server import REPO_ROOT, RemoteServer, free_port, serve_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def layout(wide_vocab_model, demo_model_dir):
    """(head arguments, headless arguments) on a free RPC port."""
    dp = ["--data-parallel-size", "2", "--data-parallel-size-local", "1",
          "--data-parallel-address", "127.0.0.1", "--data-parallel-rpc-port",
          str(free_port())]
    common = tiny_server_args(wide_vocab_model, demo_model_dir) + dp
    return common, common + ["--data-parallel-start-rank", "1"]


@pytest.fixture(scope="module")
def head(layout):
    remote = RemoteServer(layout[0], env=DP_ENV)
    try:
        yield remote
    finally:
        remote.close()


def is_healthy(server: RemoteServer) -> bool:
    try:
        return requests.get(server.url_for("/health"), timeout=5).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.parametrize("change, named", [
    (["--tensor-parallel-size", "2"], "tensor parallel size differs: the head has 1, the "
     "headless node 2"),
    (["--served-model-name", "other"], "model differs: the head has 'tiny', the headless "
     "node 'other'"),
], ids=["tp-size", "model"])
def test_a_mismatched_headless_node_is_refused_on_both_sides(head, layout, change, named):
    result = subprocess.run(serve_command(*layout[1], *change, "--headless"),
                            capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
                            env={**DP_ENV, **dict(__import__("os").environ)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("vllm serve: error: the head at tcp://127.0.0.1:")
    assert lines[-1].endswith(named)
    deadline = time.monotonic() + 60
    while named not in head.read_log() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert f"refused a headless node: {named}" in head.read_log()
    assert head.proc.poll() is None and not is_healthy(head)


def test_head_and_headless_serve_one_engines_tokens(head, layout, wide_vocab_model,
                                                    demo_model_dir, monkeypatch):
    node = HeadlessNode(layout[1], DP_ENV)
    try:
        head.wait_ready()
        with ThreadPoolExecutor(16) as pool:
            texts = list(pool.map(lambda i: complete(head.url, i), range(len(PROMPTS))))
        assert texts == reference_texts(wide_vocab_model, demo_model_dir, monkeypatch)
        served = engine_metric(head.url, "vllm:request_success_total")
        assert set(served) == {"0", "1"} and min(served.values()) >= 4, served
        assert head.stop() == 0
        assert node.proc.wait(60) == 0, node.read_log()  # the head stopped its ranks
    finally:
        node.close()


def complete(url: str, i: int) -> str:
    reply = requests.post(url + "/v1/completions", json=completion_body(i), timeout=300)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["text"]
