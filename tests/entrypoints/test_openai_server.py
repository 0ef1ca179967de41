"""End to end: `vllm serve` on the demo model (started once, with the seeds' accepted flags),
driven by the official openai client and by raw HTTP for what a client library hides."""
import asyncio
import json
import socket
import threading
import time

import openai
import pytest
import requests

from remote_server import read_metrics, running_server, wait_until_idle
from vllm.batch_invariant import BATCH_INVARIANT_ENV

pytestmark = pytest.mark.slow

API_KEY = "sk-test-key"
MODEL = "deepseek"
NUM_BLOCKS = 512
MAX_MODEL_LEN = 1024
SERVER_ARGS = [
    "--max-model-len", str(MAX_MODEL_LEN), "--served-model-name", MODEL, "demo",
    "--seed", "1024", "--max-num-seqs", "64", "--max-num-batched-tokens", "2048",
    "--trust-remote-code", "--enforce-eager", "--gpu-memory-utilization", "0.9",
    "--num-gpu-blocks-override", str(NUM_BLOCKS), "--tensor-parallel-size", "1",
    "--data-parallel-size", "1", "--additional-config", '{"chunked_prefill_for_mla": true}',
    "--api-key", API_KEY, "--uvicorn-log-level", "warning"]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
GREEDY = {"temperature": 0.0}


# Batch-invariant mode: several tests compare answers computed in different batches (the
# concurrent requests against an offline engine's), which must then be the same bits.
INVARIANT_ENV = {BATCH_INVARIANT_ENV: "1"}


@pytest.fixture(scope="module")
def server():
    with running_server(SERVER_ARGS, env=INVARIANT_ENV) as remote:
        yield remote


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url_for("/v1"), api_key=API_KEY, max_retries=0,
                         timeout=600)


def post(server, path: str, body=None, raw: bytes = None, headers=AUTH) -> requests.Response:
    if raw is not None:
        return requests.post(server.url_for(path), data=raw, headers=headers, timeout=600)
    return requests.post(server.url_for(path), json=body, headers=headers, timeout=600)


def complete_text(client, prompt, max_tokens=6, **extra) -> str:
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens,
                                         temperature=0, extra_body={"ignore_eos": True, **extra})
    return response.choices[0].text


# ---- information endpoints -----------------------------------------------------------------
def test_info_endpoints(server):
    assert requests.get(server.url_for("/health"), timeout=30).status_code == 200
    assert requests.get(server.url_for("/version"), headers=AUTH, timeout=30).json()["version"]
    models = requests.get(server.url_for("/v1/models"), headers=AUTH, timeout=30).json()
    assert [m["id"] for m in models["data"]] == [MODEL, "demo"]
    assert models["data"][0]["max_model_len"] == MAX_MODEL_LEN
    metrics = read_metrics(server)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_count",
                 "vllm:time_per_output_token_seconds_count",
                 "vllm:e2e_request_latency_seconds_count", "vllm:num_free_kv_blocks"):
        assert name in metrics, name
    assert metrics["vllm:num_free_kv_blocks"] == NUM_BLOCKS


def test_tokenize_and_detokenize(server):
    tokens = post(server, "/tokenize", {"prompt": "Hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    assert tokens["max_model_len"] == MAX_MODEL_LEN
    text = post(server, "/detokenize", {"tokens": tokens["tokens"]}).json()["prompt"]
    assert text == "Hello world"
    chat = post(server, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] > tokens["count"]


# ---- completions ---------------------------------------------------------------------------
def test_completion_usage_and_model_alias(server, client):
    prompt = "The capital of France is"
    num_prompt = post(server, "/tokenize", {"prompt": prompt}).json()["count"]
    for model in (MODEL, "demo"):
        response = client.completions.create(model=model, prompt=prompt, max_tokens=5,
                                             temperature=0, extra_body={"ignore_eos": True})
        assert response.model == model
        assert response.choices[0].finish_reason == "length"
        usage = response.usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (num_prompt, 5)
        assert usage.total_tokens == num_prompt + 5
        assert usage.prompt_tokens_details.cached_tokens >= 0


def test_streamed_completion_equals_non_streamed(client):
    prompt = "Once upon a time"
    expected = complete_text(client, prompt)
    chunks = list(client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) <= {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_prompt_forms(server, client):
    prompt = "My favourite colour is"
    token_ids = post(server, "/tokenize", {"prompt": prompt}).json()["tokens"]
    expected = complete_text(client, prompt, max_tokens=4)
    assert complete_text(client, token_ids, max_tokens=4) == expected
    response = client.completions.create(model=MODEL, prompt=[prompt, "Two plus two is"],
                                         max_tokens=3, temperature=0, n=2)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    response = client.completions.create(model=MODEL, prompt=[token_ids, token_ids[:2]],
                                         max_tokens=3, temperature=0)
    assert [c.index for c in response.choices] == [0, 1]


def test_n_choices_with_a_seed_are_reproducible(client):
    def sample():
        response = client.completions.create(model=MODEL, prompt="Write a word:", n=3,
                                             max_tokens=4, temperature=1.0, seed=7)
        return [(c.index, c.text) for c in response.choices]

    first = sample()
    assert [index for index, _ in first] == [0, 1, 2]
    assert sample() == first


def test_streamed_n_choices(server):
    response = post(server, "/v1/completions", {
        "model": MODEL, "prompt": "Hello", "n": 2, "max_tokens": 3, "stream": True,
        "temperature": 0.8, "seed": 3})
    lines = [line for line in response.text.splitlines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    finished = {c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]}
    assert finished == {0, 1}


def test_completion_logprobs(client):
    response = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4,
                                         temperature=0, logprobs=3,
                                         extra_body={"ignore_eos": True})
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 4
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(3 <= len(top) <= 4 for top in logprobs.top_logprobs)
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert "".join(logprobs.tokens) == response.choices[0].text


def test_tokens_as_token_ids(server, client):
    """vLLM's return_tokens_as_token_ids: logprobs name tokens "token_id:<id>", and those
    ids detokenize to the text the request returned (completions and chat)."""
    response = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=5,
                                         temperature=0, logprobs=2, extra_body={
                                             "ignore_eos": True,
                                             "return_tokens_as_token_ids": True})
    logprobs = response.choices[0].logprobs
    ids = [int(token.removeprefix("token_id:")) for token in logprobs.tokens]
    assert all(token.startswith("token_id:") for top in logprobs.top_logprobs for token in top)
    assert all(f"token_id:{i}" in top for i, top in zip(ids, logprobs.top_logprobs))
    assert detokenize(server, ids) == response.choices[0].text
    chat = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
        top_logprobs=1, extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True})
    entries = chat.choices[0].logprobs.content
    chat_ids = [int(entry.token.removeprefix("token_id:")) for entry in entries]
    assert detokenize(server, chat_ids) == chat.choices[0].message.content


def detokenize(server, ids: list[int]) -> str:
    response = post(server, "/detokenize", {"model": MODEL, "tokens": ids})
    assert response.status_code == 200, response.text
    return response.json()["prompt"]


def test_echo(client):
    response = client.completions.create(model=MODEL, prompt="Echo this:", max_tokens=2,
                                         temperature=0, echo=True)
    assert response.choices[0].text.startswith("Echo this:")


def test_stop_strings(server, client):
    prompt = "List the days of the week: Monday,"
    full = complete_text(client, prompt, max_tokens=12)
    stop = next(full[i:i + 2] for i in range(2, len(full) - 2) if full[i:i + 2].strip())
    cut = full.index(stop)
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12,
                                         temperature=0, stop=[stop],
                                         extra_body={"ignore_eos": True})
    choice = response.choices[0]
    assert (choice.text, choice.finish_reason) == (full[:cut], "stop")
    assert choice.model_extra["stop_reason"] == stop
    assert complete_text(client, prompt, max_tokens=12, stop=[stop],
                         include_stop_str_in_output=True) == full[:cut + len(stop)]
    chunks = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12,
                                       temperature=0, stop=stop, stream=True,
                                       extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in chunks) == full[:cut]


def test_cached_prompt_tokens_are_reported(client):
    prompt = " ".join(f"word{i}" for i in range(40))
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens >= 16


def test_kv_transfer_params_are_accepted(server):
    response = post(server, "/v1/completions", {
        "model": MODEL, "prompt": "Hi", "max_tokens": 1,
        "kv_transfer_params": {"do_remote_decode": False}})
    assert response.status_code == 200
    assert "kv_transfer_params" in response.json()


# ---- chat ----------------------------------------------------------------------------------
MESSAGES = [{"role": "system", "content": "You are brief."},
            {"role": "user", "content": "Say hello."}]


def test_chat_streamed_and_not(client):
    response = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=6, temperature=0,
        extra_body={"ignore_eos": True})
    content = response.choices[0].message.content
    assert response.choices[0].message.role == "assistant" and content
    assert response.usage.completion_tokens == 6
    assert response.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == response.usage.prompt_tokens


def test_chat_logprobs_and_n(client):
    response = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0.7, n=2, logprobs=True,
        top_logprobs=2, seed=11)
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        entries = choice.logprobs.content
        assert entries and all(len(e.top_logprobs) == 2 for e in entries)
        assert all(e.logprob <= 0 and e.bytes == list(e.token.encode()) for e in entries)


# ---- concurrency ---------------------------------------------------------------------------
PROMPTS = [f"Fact number {i}: the {word} is" for i, word in enumerate(
    ["sun", "moon", "sea", "sky", "tree", "river", "cat", "dog"] * 4)]


@pytest.fixture(scope="module")
def offline_outputs():
    from vllm import LLM, SamplingParams
    with pytest.MonkeyPatch.context() as env:
        env.setenv(BATCH_INVARIANT_ENV, "1")
        llm = LLM(max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=NUM_BLOCKS, seed=1024)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    del llm
    return [o.outputs[0].text for o in outputs]


def test_concurrent_greedy_outputs_equal_offline_engine(server, offline_outputs):
    async def run():
        client = openai.AsyncOpenAI(base_url=server.url_for("/v1"), api_key=API_KEY,
                                    max_retries=0, timeout=600)
        responses = await asyncio.gather(*[
            client.completions.create(model=MODEL, prompt=p, max_tokens=4, temperature=0)
            for p in PROMPTS])
        await client.close()
        return [r.choices[0].text for r in responses]

    assert asyncio.run(run()) == offline_outputs


# ---- disconnects ---------------------------------------------------------------------------
def test_disconnect_mid_stream_frees_the_blocks(server):
    wait_until_idle(server, NUM_BLOCKS)
    response = requests.post(server.url_for("/v1/completions"), headers=AUTH, stream=True,
                             timeout=600, json={"model": MODEL, "prompt": "Count: 1, 2,",
                                                "max_tokens": 900, "ignore_eos": True,
                                                "stream": True})
    lines = response.iter_lines()
    assert next(line for line in lines if line).startswith(b"data: ")
    assert read_metrics(server)["vllm:num_free_kv_blocks"] < NUM_BLOCKS
    response.close()
    wait_until_idle(server, NUM_BLOCKS)


def test_disconnect_while_waiting_for_a_full_response_frees_the_blocks(server):
    wait_until_idle(server, NUM_BLOCKS)
    body = json.dumps({"model": MODEL, "prompt": "Count: 1, 2,", "max_tokens": 900,
                       "ignore_eos": True}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: "
            f"application/json\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((server.host, server.port), timeout=60) as sock:
        sock.sendall(head + body)
        wait_for_running(server)
    wait_until_idle(server, NUM_BLOCKS)


def wait_for_running(server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while read_metrics(server)["vllm:num_requests_running"] < 1:
        if time.monotonic() > deadline:
            raise TimeoutError("the request never started running")
        time.sleep(0.2)


# ---- bad input -----------------------------------------------------------------------------
BAD_REQUESTS = [
    ("/v1/completions", b"{not json", 400, "malformed JSON", None),
    ("/v1/completions", b"[1, 2]", 400, "must be a JSON object", None),
    ("/v1/completions", {"model": MODEL}, 400, "'prompt' is a required field", "prompt"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "valid number",
     "temperature"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 1.5}, 400, "valid integer", "max_tokens"),
    ("/v1/completions", {"prompt": "x", "best_answer": True}, 400,
     "Unrecognized request argument supplied: best_answer", "best_answer"),
    ("/v1/completions", {"prompt": {"a": 1}}, 400, "'prompt' must be", "prompt"),
    ("/v1/completions", {"prompt": []}, 400, "must not be an empty list", "prompt"),
    ("/v1/completions", {"prompt": [10 ** 9]}, 400, "out of vocabulary", "prompt"),
    ("/v1/completions", {"prompt": [7] * 1100}, 400, "maximum context length", "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 5000}, 400, "maximum context length",
     "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature", "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p", "top_p"),
    ("/v1/completions", {"prompt": "x", "top_k": 0}, 400, "top_k", "top_k"),
    ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n must be at least 1", "n"),
    ("/v1/completions", {"prompt": "x", "logprobs": 50}, 400, "logprobs", "logprobs"),
    ("/v1/completions", {"prompt": "x", "presence_penalty": 5}, 400, "presence_penalty",
     "presence_penalty"),
    ("/v1/completions", {"prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty",
     "repetition_penalty"),
    ("/v1/completions", {"prompt": "x", "min_tokens": 9, "max_tokens": 2}, 400, "min_tokens",
     "min_tokens"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, 400, "stop", "stop"),
    ("/v1/completions", {"prompt": "x", "stop_token_ids": [-1]}, 400, "stop_token_ids",
     "stop_token_ids"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "`gpt-4` does not exist",
     "model"),
    ("/v1/chat/completions", {"messages": []}, 400, "must not be empty", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "content",
     "messages.0.content"),
    ("/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": 2}, 400,
     "top_logprobs needs logprobs", "top_logprobs"),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 0}, 400,
     "max_tokens", "max_tokens"),
    ("/tokenize", {"prompt": 5}, 400, "prompt", "prompt"),
    ("/detokenize", {"tokens": [-4]}, 400, "out of vocabulary", "tokens"),
]


@pytest.mark.parametrize("path, payload, status, fragment, param", BAD_REQUESTS)
def test_bad_input_gets_an_openai_error(server, path, payload, status, fragment, param):
    if isinstance(payload, bytes):
        response = post(server, path, raw=payload)
    else:
        response = post(server, path, payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]
    assert error["param"] == param


def test_api_key_is_required_on_v1_routes(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = post(server, "/v1/completions", {"prompt": "x"}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(server.url_for("/v1/models"), timeout=30).status_code == 401
    bad_client = openai.OpenAI(base_url=server.url_for("/v1"), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_client.models.list()
    assert requests.get(server.url_for("/metrics"), timeout=30).status_code == 200


def test_bad_requests_do_not_disturb_a_request_in_flight(server, client):
    prompt = "In the beginning"
    expected = complete_text(client, prompt, max_tokens=8)
    result = {}

    def stream_good_request():
        chunks = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8,
                                           temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        result["text"] = "".join(c.choices[0].text for c in chunks)

    worker = threading.Thread(target=stream_good_request)
    worker.start()
    for path, payload, status, _, _ in BAD_REQUESTS:
        response = post(server, path, raw=payload) if isinstance(payload, bytes) \
            else post(server, path, payload)
        assert response.status_code == status
    worker.join(600)
    assert result["text"] == expected
    assert complete_text(client, prompt, max_tokens=8) == expected


def test_metrics_count_a_request(server, client):
    wait_until_idle(server, NUM_BLOCKS)
    before = read_metrics(server)
    response = client.completions.create(model=MODEL, prompt="Metrics test", max_tokens=5,
                                         temperature=0, extra_body={"ignore_eos": True})
    after = wait_until_idle(server, NUM_BLOCKS)

    def delta(name):
        return after[name] - before[name]

    assert delta("vllm:prompt_tokens_total") == response.usage.prompt_tokens
    assert delta("vllm:generation_tokens_total") == 5
    assert delta("vllm:time_to_first_token_seconds_count") == 1
    assert delta("vllm:time_per_output_token_seconds_count") == 1
    assert delta("vllm:e2e_request_latency_seconds_count") == 1
    assert after["vllm:kv_cache_usage_perc"] == 0


# ---- shutdown (keep last: it stops the module's server) ---------------------------------
def test_sigterm_with_a_request_in_flight_stops_every_process(server):
    engine_pid = server.engine_pid()
    response = requests.post(server.url_for("/v1/completions"), headers=AUTH, stream=True,
                             timeout=600, json={"model": MODEL, "prompt": "Count: 1, 2,",
                                                "max_tokens": 900, "ignore_eos": True,
                                                "stream": True})
    lines = response.iter_lines()
    assert next(line for line in lines if line).startswith(b"data: ")
    assert server.stop() == 0, server.read_log()
    rest = [line for line in lines if line]  # the stream ends cleanly instead of hanging
    assert rest[-1] == b"data: [DONE]"
    assert b"shutting down" in rest[-2]
    assert server.leftover_pids() == [], f"engine pid {engine_pid} survived"
