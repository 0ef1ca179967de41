"""What a hostile or careless client sends gets a 4xx, and the engine serves the next one."""
import http.client
import json
import time

import pytest
import requests

from remote_server import read_metrics, running_server, wait_until_idle

pytestmark = pytest.mark.slow

API_KEY = "sk-hostile"
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
MAX_N = 8
MAX_BODY = 2_000_000
NUM_BLOCKS = 256
SERVER_ARGS = ["--max-model-len", "512", "--num-gpu-blocks-override", str(NUM_BLOCKS), "--api-key",
               API_KEY, "--max-n", str(MAX_N), "--max-request-body-bytes", str(MAX_BODY),
               "--uvicorn-log-level", "warning"]
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server():
    with running_server(SERVER_ARGS) as remote:
        yield remote


def post_raw(server, path: str, raw: bytes, headers=AUTH) -> requests.Response:
    return requests.post(server.url_for(path), data=raw, headers=headers, timeout=120)


def post(server, path: str, body) -> requests.Response:
    return post_raw(server, path, json.dumps(body).encode())


def assert_openai_error(response: requests.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"], error["message"]


def assert_engine_serves(server) -> None:
    response = post(server, "/v1/completions", {"prompt": "The sky is", "max_tokens": 3,
                                                "temperature": 0, "ignore_eos": True})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3
    assert requests.get(server.url_for("/health"), timeout=30).status_code == 200


DEEP = b'{"prompt": "x", "user": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HOSTILE = [
    ("/v1/completions", b'{"prompt": "x", "logit_bias": {"999999999": 5}}', 400,
     "outside the vocabulary"),
    ("/v1/chat/completions",
     json.dumps({"messages": MESSAGES, "logit_bias": {"49152": 1}}).encode(), 400,
     "outside the vocabulary"),
    ("/v1/completions", json.dumps({"prompt": "x", "logit_bias": {
        str(i): 1 for i in range(2000)}}).encode(), 400, "at most 1024"),
    ("/v1/completions", b'{"prompt": "\\ud800"}', 400, "invalid Unicode"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\udfff"}]}', 400,
     "invalid Unicode"),
    ("/tokenize", b'{"prompt": "\\ud800"}', 400, "invalid Unicode"),
    ("/v1/completions", DEEP, 400, "nested deeper"),
    ("/v1/completions", b'{"prompt": "x", "seed": 18446744073709551616}', 400, "64-bit"),
    ("/v1/completions", b'{"prompt": "x", "seed": 9223372036854775807, "n": 2}', 400,
     "seed + n - 1"),
    ("/v1/completions", b'{"prompt": "x", "top_k": 36893488147419103232}', 400, "64-bit"),
    ("/v1/completions", b'{"prompt": "x", "stop_token_ids": [-99999999999999999999]}', 400,
     "64-bit"),
    ("/v1/completions", b'{"prompt": "x", "n": 100000}', 400, "--max-n"),
    ("/v1/chat/completions", json.dumps({"messages": MESSAGES, "n": MAX_N + 1}).encode(), 400,
     "--max-n"),
    ("/v1/completions", json.dumps({"prompt": ["x"] * 1025}).encode(), 400, "at most 1024"),
    ("/v1/completions", json.dumps({"prompt": ["x"] * 200, "n": MAX_N}).encode(), 400,
     "prompts x n"),
    ("/v1/completions", json.dumps({"prompt": ["hello " * 600] * 500}).encode(), 400,
     "maximum context length"),
    ("/v1/completions", json.dumps({"prompt": "x", "stop_token_ids": list(range(
        100_000))}).encode(), 400, "stop_token_ids may hold at most"),
    ("/v1/completions", json.dumps({"prompt": "x", "stop": ["ab"] * 100_000}).encode(), 400,
     "stop may hold at most"),
    ("/v1/completions", json.dumps({"prompt": "hello " * 300_000}).encode(), 400,
     "cannot fit in the model's context"),
    ("/tokenize", json.dumps({"prompt": "hello " * 300_000}).encode(), 400,
     "cannot fit in the model's context"),
    ("/v1/chat/completions", json.dumps({"messages": [
        {"role": "user", "content": "hello " * 300_000}]}).encode(), 400,
     "cannot fit in the model's context"),
    ("/v1/completions", json.dumps({"prompt": "x" * (MAX_BODY + 10)}).encode(), 413,
     "--max-request-body-bytes"),
]


@pytest.mark.parametrize("path, raw, status, fragment", HOSTILE,
                         ids=[f"{path}-{i}" for i, (path, *_) in enumerate(HOSTILE)])
def test_hostile_body_gets_4xx_and_the_engine_lives(server, path, raw, status, fragment):
    start = time.monotonic()
    assert_openai_error(post_raw(server, path, raw), status, fragment)
    assert time.monotonic() - start < 5, "refused only after doing the work"
    assert_engine_serves(server)


EXTREME_BUT_VALID = [
    {"temperature": 3, "top_k": 1, "top_p": 5e-324, "repetition_penalty": 5e-324, "seed": 0},
    {"temperature": 1e-300, "top_p": 1, "repetition_penalty": 1e300},
    {"temperature": 1e300, "min_p": 1, "seed": -9223372036854775808},
    {"temperature": 2, "min_p": 5e-324, "top_p": 1e-300, "presence_penalty": -2,
     "frequency_penalty": 2},
    {"temperature": 1, "logit_bias": {"0": 100, "1": -100}, "seed": 9223372036854775807},
    {"temperature": 0.5, "top_k": 49151, "top_p": 0.999999, "min_tokens": 4, "n": MAX_N},
]


@pytest.mark.parametrize("fields", EXTREME_BUT_VALID)
def test_extreme_valid_sampling_values_sample_in_the_vocabulary(server, fields):
    body = {"prompt": "0", "max_tokens": 4, "ignore_eos": True, **fields}
    response = post(server, "/v1/completions", {**body, "logprobs": 1})
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:
        assert len(choice["logprobs"]["tokens"]) == 4
    assert_engine_serves(server)


def test_every_route_but_health_and_metrics_needs_the_key(server):
    routes = [("GET", "/v1/models"), ("GET", "/version"), ("GET", "/docs"),
              ("GET", "/openapi.json"), ("GET", "/v1/kv_transfer/info"),
              ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/v1/completions"),
              ("GET", "/no/such/route")]
    for method, path in routes:
        response = requests.request(method, server.url_for(path), json={"prompt": "x"},
                                    timeout=30)
        assert_openai_error(response, 401, "API key")
    for path in ("/health", "/metrics"):
        assert requests.get(server.url_for(path), timeout=30).status_code == 200
    keyed = requests.post(server.url_for("/tokenize"), json={"prompt": "hi"}, headers=AUTH,
                          timeout=30)
    assert keyed.status_code == 200 and keyed.json()["count"] >= 1


def _exchange(connection: http.client.HTTPConnection, body: bytes):
    connection.request("POST", "/v1/completions", body=body, headers=AUTH)
    response = connection.getresponse()
    return response, response.read()


@pytest.mark.parametrize("bad", [b"{not json", b'{"prompt": "\\ud800"}', DEEP,
                                 b'{"prompt": "x", "seed": 18446744073709551616}'])
def test_an_error_keeps_the_connection_or_says_it_closes(server, bad):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        response, _ = _exchange(connection, bad)
        assert 400 <= response.status < 500
        closes = response.getheader("connection", "").lower() == "close"
        if closes:
            connection.close()
        good = json.dumps({"prompt": "hi", "max_tokens": 1}).encode()
        response, payload = _exchange(connection, good)
        assert response.status == 200, payload
    finally:
        connection.close()


def test_no_block_is_lost_to_refused_requests(server):
    metrics = wait_until_idle(server, NUM_BLOCKS)
    assert read_metrics(server)["vllm:num_free_kv_blocks"] == metrics["vllm:num_free_kv_blocks"]
