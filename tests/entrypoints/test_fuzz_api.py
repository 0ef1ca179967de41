"""Property-based fuzzing of `vllm serve`: bodies generated from the server's own OpenAPI
schemas (valid and not), arbitrary JSON and raw bytes, against every route. No case may get a
5xx, every error must be an OpenAI error body, and the engine must serve after each case."""
import collections
import json
import string

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from remote_server import RemoteServer, wait_until_idle

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
    remote = RemoteServer(SERVER_ARGS)
    try:
        yield remote.wait_ready()
    finally:
        remote.close()


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
    content = openapi["paths"][path]["post"]["requestBody"]["content"]
    return content["application/json"]["schema"]


POST_ROUTES = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]
GET_ROUTES = ["/health", "/metrics", "/version", "/v1/models", "/openapi.json", "/docs",
              "/v1/kv_transfer/info"]
URL_CHARS = string.ascii_letters + string.digits + "/._-%~"
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates too
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12)


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
    @given(body=from_schema(body_schema(openapi, path)), key=st.text(max_size=20),
           value=JSON_VALUES)
    def run(body, key, value):
        if isinstance(body, dict) and body:
            key = sorted(body)[len(key) % len(body)] if key else key
            body = {**body, key: value}
        send(server, session, path, json.dumps(body).encode())
    run()


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
