"""Disaggregated prefill/decode end to end: real instances of the demo model behind the proxy
return exactly the tokens of a colocated instance, leak no block, and survive faults."""
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pd_cluster import (Proxy, free_blocks, free_port, start_instance, start_plain,
                        wait_free_blocks)

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three prime numbers:",
    "Once upon a time, " * 12,
    "def fibonacci(n):",
    "Explain photosynthesis in one sentence.",
    "A" * 3,
    "The quick brown fox jumps over the lazy dog. " * 8,
]
CHATS = [
    "Hi! Who are you?",
    "What is 2 + 2?",
    "Name a color of the sky at sunset.",
    "Say something kind.",
]


@pytest.fixture(scope="module")
def cluster():
    servers = {
        "P0": start_instance("kv_producer", "p0", extra={"kv_lease_s": 4}),
        "P1": start_instance("kv_producer", "p1"),
        "D0": start_instance("kv_consumer", "d0"),
        "D1": start_instance("kv_consumer", "d1"),
        "Dfail": start_instance("kv_consumer", "dfail", policy="fail",
                                extra={"kv_wait_timeout_s": 2}),
        "Drecompute": start_instance("kv_consumer", "drecompute",
                                     extra={"kv_wait_timeout_s": 2}),
        "C": start_plain(),
    }
    try:
        for server in servers.values():
            server.wait_ready()
        servers["idle_blocks"] = {name: free_blocks(s) for name, s in servers.items()}
        yield servers
    finally:
        for name, server in servers.items():
            if name != "idle_blocks":
                server.close()


@pytest.fixture
def proxy_for(cluster):
    proxies = []

    def make(prefill_names, decode_names):
        proxy = Proxy([cluster[n] for n in prefill_names], [cluster[n] for n in decode_names])
        proxies.append(proxy)
        return proxy.wait_ready(len(prefill_names), len(decode_names))

    yield make
    for proxy in proxies:
        proxy.close()


# ---- requests ------------------------------------------------------------------------------
def _body(kind: str, text: str, seeded: bool, stream: bool) -> dict:
    body = {"model": "demo", "max_tokens": 24, "stream": stream}
    body.update({"temperature": 0.8, "seed": 1234} if seeded else {"temperature": 0})
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return body


def _path(kind: str) -> str:
    return "/v1/chat/completions" if kind == "chat" else "/v1/completions"


def _text(kind: str, response: requests.Response, stream: bool) -> str:
    assert response.status_code == 200, response.text
    if not stream:
        choice = response.json()["choices"][0]
        return choice["message"]["content"] if kind == "chat" else choice["text"]
    pieces = []
    for line in response.iter_lines():
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        choices = json.loads(line[6:])["choices"]
        if choices:
            delta = choices[0]
            pieces.append((delta.get("delta") or {}).get("content") or delta.get("text") or "")
    return "".join(pieces)


def _workload() -> list[tuple[str, str, bool, bool]]:
    cases = []
    for index, prompt in enumerate(PROMPTS):
        cases.append(("completion", prompt, index % 3 == 1, index % 2 == 0))
    for index, chat in enumerate(CHATS * 2):
        cases.append(("chat", chat + " " * (index // len(CHATS)), index % 2 == 1,
                      index % 3 == 0))
    return cases


def _ask(url: str, case) -> str:
    kind, text, seeded, stream = case
    response = requests.post(url + _path(kind), json=_body(kind, text, seeded, stream),
                             stream=stream, timeout=300)
    return _text(kind, response, stream)


def _ask_all(url: str, cases, workers: int = 4) -> list[str]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda case: _ask(url, case), cases))


def _assert_idle(cluster, names) -> None:
    for name in names:
        expected = cluster["idle_blocks"][name]
        assert wait_free_blocks(cluster[name], expected) == expected, f"{name} leaked blocks"


# ---- token identity ------------------------------------------------------------------------
def test_1p1d_returns_the_colocated_tokens(cluster, proxy_for):
    proxy = proxy_for(["P0"], ["D0"])
    cases = _workload()
    assert len(cases) >= 16
    expected = _ask_all(cluster["C"].url, cases)
    assert _ask_all(proxy.url, cases) == expected
    assert sum(bool(text) for text in expected) >= len(expected) - 4  # a few may stop at once
    _assert_idle(cluster, ["P0", "D0"])


def test_decode_reports_received_tokens_as_cached(cluster, proxy_for):
    proxy = proxy_for(["P0"], ["D0"])
    prompt = "Tell me about the history of tea. " * 6 + "Unique tail 41."
    response = requests.post(proxy.url + "/v1/completions", timeout=300, json={
        "model": "demo", "prompt": prompt, "max_tokens": 4, "temperature": 0}).json()
    usage = response["usage"]
    # Everything but the last prompt token came from the prefill instance.
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1


@pytest.mark.parametrize("prefills,decodes", [(["P0", "P1"], ["D0"]), (["P0"], ["D0", "D1"])])
def test_xpyd_returns_the_colocated_tokens(cluster, proxy_for, prefills, decodes):
    proxy = proxy_for(prefills, decodes)
    cases = _workload()[:10]
    assert _ask_all(proxy.url, cases) == _ask_all(cluster["C"].url, cases)
    _assert_idle(cluster, prefills + decodes)


# ---- faults --------------------------------------------------------------------------------
def _withheld(server, policy_text: str):
    """A decode request naming a prefill instance that does not exist: the KV never comes."""
    body = _body("completion", "The capital of Italy is" + policy_text, False, False)
    body["kv_transfer_params"] = {"do_remote_prefill": True, "remote_host": "127.0.0.1",
                                  "remote_port": free_port(), "remote_engine_id": "ghost"}
    return requests.post(server.url + "/v1/completions", json=body, timeout=120)


def test_withheld_kv_is_recomputed(cluster):
    started = time.monotonic()
    response = _withheld(cluster["Drecompute"], "")
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 30
    expected = _ask(cluster["C"].url, ("completion", "The capital of Italy is", False, False))
    assert response.json()["choices"][0]["text"] == expected
    assert response.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    _assert_idle(cluster, ["Drecompute"])


def test_withheld_kv_fails_clearly_under_fail_policy(cluster):
    response = _withheld(cluster["Dfail"], " (fail)")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "kv_transfer_failed"
    assert "KV transfer failed" in error["message"]
    _assert_idle(cluster, ["Dfail"])
    assert _ask(cluster["Dfail"].url, ("completion", "Still alive?", False, False)) is not None


def test_producer_frees_held_blocks_when_its_lease_runs_out(cluster):
    idle = cluster["idle_blocks"]["P0"]
    body = _body("completion", "Nobody will ever fetch this KV. " * 10, False, False)
    body.update(max_tokens=1, kv_transfer_params={"do_remote_decode": True})
    response = requests.post(cluster["P0"].url + "/v1/completions", json=body, timeout=120)
    assert response.status_code == 200
    assert response.json()["kv_transfer_params"]["do_remote_prefill"] is True
    assert free_blocks(cluster["P0"]) < idle  # held for a consumer that never comes
    assert wait_free_blocks(cluster["P0"], idle, timeout=15) == idle  # lease is 4 s


def test_proxy_without_a_healthy_decoder_answers_503(cluster):
    ghost = type("Ghost", (), {"port": free_port()})()
    proxy = Proxy([cluster["P0"]], [ghost])
    try:
        proxy.wait_listening()
        response = requests.post(proxy.url + "/v1/completions", timeout=30,
                                 json=_body("completion", "hello", False, False))
        assert response.status_code == 503
        assert "decode" in response.json()["error"]["message"]
    finally:
        proxy.close()


def test_killed_decode_instance_fails_the_stream_promptly(cluster, proxy_for):
    proxy = proxy_for(["P0"], ["Dfail"])
    body = _body("completion", "Count slowly from one to one thousand:", False, True)
    body.update(max_tokens=400, ignore_eos=True)
    response = requests.post(proxy.url + "/v1/completions", json=body, stream=True, timeout=60)
    lines = response.iter_lines()
    assert next(line for line in lines if line.startswith(b"data: "))
    killed = time.monotonic()
    cluster["Dfail"]._kill_all()
    with pytest.raises((requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ConnectionError)):
        rest = list(lines)
        if not rest or rest[-1] != b"data: [DONE]":
            raise requests.exceptions.ConnectionError("stream cut")
    assert time.monotonic() - killed < 15
    _assert_idle(cluster, ["P0"])


def test_proxy_routes_around_a_killed_prefill_instance(cluster, proxy_for):
    proxy = proxy_for(["P0", "P1"], ["D0"])
    cluster["P1"]._kill_all()
    deadline = time.monotonic() + 20
    while requests.get(proxy.url + "/health", timeout=5).json().get("prefill") != 1:
        assert time.monotonic() < deadline, "the proxy never noticed the dead prefill instance"
        time.sleep(0.5)
    cases = _workload()[:6]
    started = time.monotonic()
    assert _ask_all(proxy.url, cases) == _ask_all(cluster["C"].url, cases)
    assert time.monotonic() - started < 120
    _assert_idle(cluster, ["P0", "D0"])
