"""The engine boundary: a prompt is parsed once, a request crosses as one EngineCoreRequest
and the engine core builds one Request from it, on the offline and the served path."""
import asyncio
import collections
import types

import msgspec
import pytest

from vllm import LLM, SamplingParams
from vllm.core.messages import EngineCoreRequest
from vllm.core.request import Request
from vllm.engine.async_llm import AsyncLLM
from vllm.engine.processor import Processor
from vllm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from vllm.entrypoints.openai.serving_chat import OpenAIServingChat
from vllm.entrypoints.openai.serving_completion import OpenAIServingCompletion


@pytest.fixture(scope="module")
def llm(wide_vocab_model, demo_model_dir):
    return LLM(wide_vocab_model, tokenizer=demo_model_dir, max_model_len=256,
               num_gpu_blocks_override=64)


@pytest.fixture
def counts(monkeypatch) -> collections.Counter:
    """Calls of Processor.parse_prompt and constructions of Request, from now on."""
    counter = collections.Counter()
    for owner, name in ((Processor, "parse_prompt"), (Request, "__init__")):
        monkeypatch.setattr(owner, name, _counted(getattr(owner, name), name, counter))
    return counter


def _counted(function, name: str, counter: collections.Counter):
    def wrapper(*args, **kwargs):
        counter[name] += 1
        return function(*args, **kwargs)
    return wrapper


class RecordingClient:
    """An engine-core client that keeps what it would send, encoded as on the wire."""

    def __init__(self):
        self.sent: list[bytes] = []
        self.dead_error = None
        self.process = types.SimpleNamespace(is_alive=lambda: True)
        self.encoder = msgspec.msgpack.Encoder()

    def add_request(self, request: EngineCoreRequest) -> None:
        self.sent.append(self.encoder.encode(request))

    def abort_requests(self, request_ids) -> None:
        pass

    def check_health(self) -> None:  # alive: nothing is ever sent on
        pass


def test_offline_parses_once_and_builds_one_request_per_child(llm, counts):
    llm.generate(["Hello there", [5, 6, 7]], SamplingParams(max_tokens=2), use_tqdm=False)
    assert counts == {"parse_prompt": 2, "__init__": 2}
    counts.clear()
    output = llm.generate("Hello", SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=2),
                          use_tqdm=False)[0]
    assert len(output.outputs) == 3
    assert counts == {"parse_prompt": 1, "__init__": 3}


def serve_one(llm, endpoint: str) -> tuple[RecordingClient, object]:
    client = RecordingClient()
    engine = AsyncLLM(llm.llm_engine.vllm_config, llm.get_tokenizer(), client)
    if endpoint == "completions":
        serving = OpenAIServingCompletion(engine, ["m"])
        call = serving.create_completion(CompletionRequest(
            prompt="Hello there", max_tokens=3, n=2, seed=4, stream=True), None)
    else:
        serving = OpenAIServingChat(engine, ["m"])
        call = serving.create_chat_completion(ChatCompletionRequest(
            messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True), None)
    return client, asyncio.run(call)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_served_path_parses_once_and_the_engine_builds_one_request(llm, counts, endpoint):
    client, _ = serve_one(llm, endpoint)
    num_children = 2 if endpoint == "completions" else 1
    assert counts == {"parse_prompt": 1}  # the API process builds no Request
    assert len(client.sent) == num_children
    decoder = msgspec.msgpack.Decoder(EngineCoreRequest)  # as the engine process decodes
    messages = [decoder.decode(body) for body in client.sent]
    assert all(isinstance(m.sampling_params, SamplingParams) for m in messages)
    assert all(m.sampling_params.max_tokens == 3 for m in messages)
    if endpoint == "completions":
        tokens = llm.get_tokenizer().encode("Hello there")
        assert [m.prompt_token_ids for m in messages] == [tokens, tokens]
        assert [m.sampling_params.seed for m in messages] == [4, 5]
    core = llm.llm_engine.engine_core
    for message in messages:
        core.add_engine_request(message)
    assert counts == {"parse_prompt": 1, "__init__": num_children}
    core.abort_requests([m.request_id for m in messages])
    assert not core.has_unfinished_requests()
