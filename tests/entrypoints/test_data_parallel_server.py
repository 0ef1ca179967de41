"""`vllm serve --data-parallel-size 2` on one host: the tokens of one engine, requests
spread over both ranks, an abort on rank 1, and a killed rank failing the instance."""
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from dp_server import (DP_ENV, PROMPTS, completion_body, engine_core_pids, engine_metric,
                       reference_texts, tiny_server_args)
from remote_server import running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(wide_vocab_model, demo_model_dir):
    args = tiny_server_args(wide_vocab_model, demo_model_dir) + ["--data-parallel-size", "2"]
    with running_server(args, env=DP_ENV) as remote:
        yield remote


def complete(url: str, i: int) -> str:
    reply = requests.post(url + "/v1/completions", json=completion_body(i), timeout=300)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["text"]


def test_two_ranks_give_one_engine_tokens_and_share_the_requests(server, wide_vocab_model,
                                                                  demo_model_dir, monkeypatch):
    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(lambda i: complete(server.url, i), range(len(PROMPTS))))
    assert texts == reference_texts(wide_vocab_model, demo_model_dir, monkeypatch)
    served = engine_metric(server.url, "vllm:request_success_total")
    assert sum(served.values()) == 16 and set(served) == {"0", "1"}
    assert min(served.values()) >= 4, served


def stream(url: str, max_tokens: int):
    body = {"model": "tiny", "prompt": "Count:", "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "temperature": 0.0}
    reply = requests.post(url + "/v1/completions", json=body, stream=True, timeout=300)
    lines = (line for line in reply.iter_lines() if line)
    assert next(lines).startswith(b"data: ")
    return reply, lines


def wait_for(condition, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError("condition not met")


LONG_STREAM = 480  # tokens: a few seconds of the tiny model, so rank 0 outlasts the abort


def test_abort_of_a_request_on_rank_1(server):
    running = lambda: engine_metric(server.url, "vllm:num_requests_running")  # noqa: E731
    generated = lambda: engine_metric(server.url, "vllm:generation_tokens_total")  # noqa: E731
    wait_for(lambda: sum(running().values()) == 0)
    before = generated().get("1", 0.0)
    first, first_lines = stream(server.url, LONG_STREAM)  # rank 0 (both idle: the lowest)
    second, _ = stream(server.url, LONG_STREAM)  # rank 1
    wait_for(lambda: running() == {"0": 1.0, "1": 1.0})
    second.close()  # the client goes away: the request is aborted on rank 1
    wait_for(lambda: running() == {"0": 1.0, "1": 0.0})
    assert generated()["1"] - before < LONG_STREAM  # stopped early, not run to its end
    assert list(first_lines)[-1] == b"data: [DONE]"


def test_a_killed_rank_fails_the_instance(server):
    reply, lines = stream(server.url, 100)
    pids = engine_core_pids(server.read_log())
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGKILL)
    os.kill(pids[0], 0)  # rank 0 still runs; the instance fails all the same
    started = time.monotonic()
    health = requests.get(server.url_for("/health"), timeout=30)
    while health.status_code == 200 and time.monotonic() - started < 30:
        time.sleep(0.2)
        health = requests.get(server.url_for("/health"), timeout=30)
    assert health.status_code == 503
    assert "rank 1" in health.json()["error"]["message"]
    reply = requests.post(server.url_for("/v1/completions"), json=completion_body(0),
                          timeout=30)
    assert reply.status_code == 503 and "died" in reply.json()["error"]["message"]
    assert time.monotonic() - started < 30
    for line in lines:  # the stream, wherever it ran, ends (an error if it was on rank 1)
        last = line
    assert last == b"data: [DONE]"
