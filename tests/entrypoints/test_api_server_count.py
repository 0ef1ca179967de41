"""`vllm serve --api-server-count 2`: two API servers on one port, each a front end of the
engine core; /metrics counts every request whichever server took it, and the metrics
folder is gone after shutdown."""
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from dp_server import DP_ENV, tiny_server_args
from remote_server import RemoteServer, read_metrics

pytestmark = pytest.mark.slow


def test_two_api_servers_serve_and_count_every_request(wide_vocab_model, demo_model_dir,
                                                        tmp_path):
    args = tiny_server_args(wide_vocab_model, demo_model_dir) + ["--api-server-count", "2"]
    server = RemoteServer(args, env={**DP_ENV, "TMPDIR": str(tmp_path)})
    try:
        server.wait_ready()
        assert len([p for p in os.listdir(tmp_path) if p.startswith("vllm-metrics-")]) == 1

        def complete(i: int) -> int:
            body = {"model": "tiny", "prompt": f"Request {i}", "max_tokens": 3,
                    "ignore_eos": True, "temperature": 0.0}
            reply = requests.post(server.url_for("/v1/completions"), json=body, timeout=300)
            return reply.status_code

        with ThreadPoolExecutor(32) as pool:
            assert list(pool.map(complete, range(32))) == [200] * 32
        metrics = read_metrics(server)
        assert metrics["vllm:request_success_total"] == 32
        assert metrics["vllm:generation_tokens_total"] == 32 * 3
        assert server.stop() == 0, server.read_log()
        assert server.leftover_pids() == []
        assert not [p for p in os.listdir(tmp_path) if p.startswith("vllm-")]
    finally:
        server.close()
