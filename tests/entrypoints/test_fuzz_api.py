"""Hypothesis fuzzing of every `vllm serve` route: no 5xx, OpenAI error bodies, a live engine.

Bodies come from the server's own OpenAPI schemas (valid, and with one field replaced by
arbitrary JSON or edge values), from every documented sampling range, and from arbitrary
JSON and bytes."""
import collections
import json
import string

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from remote_server import running_server, wait_until_idle

pytestmark = [pytest.mark.slow, pytest.mark.fuzz]

API_KEY = "sk-fuzz"
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
NUM_BLOCKS = 128
# Small context and n keep the work one generated request can ask for bounded.
SERVER_ARGS = ["--max-model-len", "64", "--max-n", "4", "--num-gpu-blocks-override",
               str(NUM_BLOCKS), "--api-key", API_KEY, "--uvicorn-log-level", "error"]

def examples(count: int) -> settings:
    return settings(max_examples=count, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


OUTCOMES: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def server():
    with running_server(SERVER_ARGS) as remote:
        yield remote


@pytest.fixture(scope="module")
def session():
    with requests.Session() as http:
        yield http


@pytest.fixture(scope="module")
def openapi(server, session):
    response = session.get(server.url_for("/openapi.json"), headers=AUTH, timeout=30)
    assert response.status_code == 200
    return response.json()


def body_schema(openapi: dict, path: str) -> dict:
    """The route's body schema, with the document's components its references point at."""
    content = openapi["paths"][path]["post"]["requestBody"]["content"]
    return {**content["application/json"]["schema"], "components": openapi["components"]}


POST_ROUTES = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]
GET_ROUTES = ["/health", "/metrics", "/version", "/v1/models", "/openapi.json", "/docs",
              "/v1/kv_transfer/info"]
URL_CHARS = string.ascii_letters + string.digits + "/._-%~"
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates too
# Values that broke servers before: past 64 bits, lone surrogates, denormals, the vocab's edge.
EDGE_VALUES = st.sampled_from([2**64, 2**63, -(2**63) - 1, 10**30, -1, 0, 1, 49151, 49152,
                               10**9, "\ud800", "a\udfffb", "", 5e-324, 1e-300, 1e308,
                               -1e308, True, None, [], {}, [[]], {"": None}])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT | EDGE_VALUES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12)
VOCAB_SIZE = 49152
TOKEN_IDS = st.integers(0, VOCAB_SIZE - 1)
TINY_TO_HUGE = st.floats(5e-324, 1e300) | st.sampled_from([5e-324, 1e-45, 1e-300, 1e300])
# Every value the sampling fields' documented ranges admit, edges included.
VALID_SAMPLING = st.fixed_dictionaries({}, optional={
    "temperature": st.just(0.0) | TINY_TO_HUGE,
    "top_p": st.floats(5e-324, 1.0) | st.sampled_from([5e-324, 1e-300, 1.0]),
    "top_k": st.just(-1) | st.integers(1, VOCAB_SIZE + 100),
    "min_p": st.floats(0.0, 1.0) | st.sampled_from([0.0, 5e-324, 1.0]),
    "repetition_penalty": TINY_TO_HUGE,
    "presence_penalty": st.floats(-2.0, 2.0),
    "frequency_penalty": st.floats(-2.0, 2.0),
    "logit_bias": st.dictionaries(TOKEN_IDS.map(str), st.floats(-100.0, 100.0), max_size=8),
    "seed": st.integers(-(2**63), 2**63 - 4),
    "n": st.integers(1, 4),
    "min_tokens": st.integers(0, 2),
    "logprobs": st.integers(0, 20),
    "stop_token_ids": st.lists(TOKEN_IDS, max_size=3),
})
PROMPTS = st.text(min_size=1, max_size=40) | st.lists(TOKEN_IDS, min_size=1, max_size=20)


def check_answer(response: requests.Response) -> None:
    OUTCOMES[response.status_code] += 1
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


def check_alive(server, session) -> None:
    assert session.get(server.url_for("/health"), timeout=30).status_code == 200


def send(server, session, path: str, raw: bytes) -> None:
    check_answer(session.post(server.url_for(path), data=raw, headers=AUTH, timeout=300))
    check_alive(server, session)


@pytest.mark.parametrize("path", POST_ROUTES)
def test_schema_valid_bodies(server, session, openapi, path):
    @examples(60)
    @given(body=from_schema(body_schema(openapi, path)))
    def run(body):
        send(server, session, path, json.dumps(body).encode())
    run()


@pytest.mark.parametrize("path", POST_ROUTES)
def test_schema_bodies_with_one_field_replaced(server, session, openapi, path):
    @examples(100)
    @given(body=from_schema(body_schema(openapi, path)), index=st.integers(0, 63),
           value=JSON_VALUES)
    def run(body, index, value):
        if isinstance(body, dict) and body:
            body = {**body, sorted(body)[index % len(body)]: value}
        send(server, session, path, json.dumps(body).encode())
    run()


@examples(150)
@given(prompt=PROMPTS, fields=VALID_SAMPLING, max_tokens=st.integers(2, 4))
def test_every_valid_sampling_value_samples(server, session, prompt, fields, max_tokens):
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, **fields}
    response = session.post(server.url_for("/v1/completions"), json=body, headers=AUTH,
                            timeout=300)
    check_answer(response)
    if response.status_code == 400:  # only the prompt may be refused (it can tokenize long)
        assert "context length" in response.json()["error"]["message"], response.text
        return
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert len(choices) == fields.get("n", 1)
    for choice in choices:
        if "logprobs" in fields:  # stop_token_ids may end a choice early
            num_tokens = len(choice["logprobs"]["tokens"])
            assert num_tokens == max_tokens or choice["finish_reason"] == "stop"


@pytest.mark.parametrize("path", POST_ROUTES)
def test_arbitrary_json_and_bytes(server, session, path):
    @examples(100)
    @given(body=JSON_VALUES | st.binary(max_size=64).map(lambda raw: {"raw": raw}))
    def run(body):
        raw = body["raw"] if isinstance(body, dict) and "raw" in body else None
        send(server, session, path, raw if isinstance(raw, bytes) else json.dumps(body).encode())
    run()


@examples(100)
@given(path=st.sampled_from(GET_ROUTES) | st.text(URL_CHARS, max_size=30).map(lambda p: "/" + p),
       keyed=st.booleans(), method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_routes_and_methods(server, session, path, keyed, method):
    headers = AUTH if keyed else {}
    response = session.request(method, server.url_for(path), headers=headers, timeout=60)
    OUTCOMES[response.status_code] += 1
    assert response.status_code < 500, response.text[:500]
    check_alive(server, session)


def test_after_every_case_no_block_is_leaked(server):
    wait_until_idle(server, NUM_BLOCKS)
    total = sum(OUTCOMES.values())
    print(f"\nfuzz cases: {total}, by status: {dict(sorted(OUTCOMES.items()))}")
    assert total > 0 and not [s for s in OUTCOMES if s >= 500]
