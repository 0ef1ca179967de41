"""`vllm serve --kv-events-config`: the engine-core process publishes, the hashes it
publishes are the ones this process computes from the prompt's token ids, /metrics counts
prefix-cache queries and hits in tokens, and a bad config stops start-up with one line."""
import json
import os
import subprocess
import sys

import pytest
import requests

from kv_event_subscriber import Subscriber, all_events, apply, free_endpoints
from vllm.core.block_hash import chained_block_hashes

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "entrypoints"))
from remote_server import (REPO_ROOT, free_port, read_metrics,  # noqa: E402
                           running_server, serve_command, wait_until_idle)

pytestmark = pytest.mark.slow

BLOCK_SIZE = 16
NUM_BLOCKS = 64
TOPIC = "kv"
PROMPT = list(range(1000, 1070))  # 70 tokens: its 4 full blocks (64 tokens) hit the 2nd time


@pytest.fixture(scope="module")
def served():
    endpoint, replay = free_endpoints(2)
    config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint,
              "replay_endpoint": replay, "topic": TOPIC}
    args = ["--served-model-name", "demo", "--max-model-len", "256",
            "--block-size", str(BLOCK_SIZE), "--num-gpu-blocks-override", str(NUM_BLOCKS),
            "--enforce-eager", "--kv-events-config", json.dumps(config),
            "--uvicorn-log-level", "warning"]
    with running_server(args, env={"OMP_NUM_THREADS": "1"}) as server:
        subscriber = Subscriber(endpoint, replay, TOPIC)
        yield server, subscriber
        subscriber.close()


def complete(server, prompt):
    reply = requests.post(server.url_for("/v1/completions"), timeout=300, json={
        "model": "demo", "prompt": prompt, "max_tokens": 4, "temperature": 0,
        "ignore_eos": True})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_served_events_and_prefix_cache_metrics(served):
    server, subscriber = served
    before = read_metrics(server)
    complete(server, PROMPT)
    second = complete(server, PROMPT)
    after = wait_until_idle(server, NUM_BLOCKS)
    assert after["vllm:prefix_cache_queries_total"] - before[
        "vllm:prefix_cache_queries_total"] == 2 * len(PROMPT)
    assert after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"] == 64
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 64
    subscriber.drain()
    events = all_events(subscriber.batches())
    stored = {h for e in events if e["type"] == "BlockStored" for h in e["block_hashes"]}
    assert set(chained_block_hashes(PROMPT, BLOCK_SIZE)) <= apply(events, set()) <= stored


def test_a_bad_kv_events_config_stops_start_up_with_one_line():
    command = serve_command("--host", "127.0.0.1", "--port", str(free_port()),
                            "--kv-events-config", '{"enable_kv_cache_events": true, '
                            '"publisher": "kafka"}')
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            cwd=REPO_ROOT)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "--kv-events-config: publisher must be one of null, zmq, got 'kafka'"), result.stderr
