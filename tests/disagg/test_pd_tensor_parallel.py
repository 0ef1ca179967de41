"""KV pushed between instances of different tensor-parallel sizes is resharded by KV head:
producer TP=2 into consumer TP=1 and the reverse return the colocated tokens (up to near
ties, since the TP sizes sum in different orders), for a tiny
random Llama with 2 KV heads (TP=2 holds one per rank), a tiny Qwen2 with 3 (TP=2
holds 2 + 1: an uneven split), and a tiny DeepSeek-V3 with a dense and a MoE layer, whose
MLA latent every rank holds whole and each consumer rank receives once."""
import random
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests

from near_tie import assert_equal_up_to_near_ties, from_openai_choice
from pd_cluster import Proxy, start_instance, start_plain, wait_free_blocks, free_blocks
from vllm.sampling_params import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["llama", "qwen2_3kv", "deepseek_v3_moe"])
def tiny_cluster(request, tiny_model_dirs, uneven_qwen2, tiny_deepseek, demo_model_dir):
    path = {"llama": lambda: tiny_model_dirs["llama"], "qwen2_3kv": lambda: uneven_qwen2,
            "deepseek_v3_moe": lambda: tiny_deepseek("v3_moe")}[request.param]()
    model = [path, "--tokenizer", demo_model_dir]
    short = ["--max-model-len", "512"]  # the tiny model's positions
    tp2 = [*short, "--tensor-parallel-size", "2"]
    servers = {
        "P_tp2": start_instance("kv_producer", "p-tp2", model, args=tp2),
        "D_tp1": start_instance("kv_consumer", "d-tp1", model, args=short),
        "P_tp1": start_instance("kv_producer", "p-tp1", model, args=short),
        "D_tp2": start_instance("kv_consumer", "d-tp2", model, args=tp2),
        "C": start_plain(model, args=short),
    }
    try:
        for server in servers.values():
            server.wait_ready()
        idle = {name: free_blocks(server) for name, server in servers.items()}
        yield servers, idle
    finally:
        for server in servers.values():
            server.close()


def _prompts() -> list[list[int]]:
    rng = random.Random(7)
    return [[rng.randrange(3, 500) for _ in range(length)]
            for length in (2, 9, 16, 17, 40, 75, 130, 200)]


SEEDED = SamplingParams(temperature=0.9, seed=11)
GREEDY = SamplingParams(temperature=0)


def _complete(url: str, prompt: list[int], params: SamplingParams) -> SimpleNamespace:
    body = {"model": "demo", "prompt": prompt, "max_tokens": 16, "ignore_eos": True,
            "temperature": params.temperature, "logprobs": 2,
            "return_tokens_as_token_ids": True}
    if params.seed is not None:
        body["seed"] = params.seed
    response = requests.post(url + "/v1/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return from_openai_choice(response.json()["choices"][0])


def _complete_all(url: str, params: SamplingParams) -> list[SimpleNamespace]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda prompt: _complete(url, prompt, params), _prompts()))


@pytest.mark.parametrize("producer,consumer", [("P_tp2", "D_tp1"), ("P_tp1", "D_tp2")])
def test_kv_is_resharded_across_tensor_parallel_sizes(tiny_cluster, producer, consumer):
    servers, idle = tiny_cluster
    proxy = Proxy([servers[producer]], [servers[consumer]])
    try:
        proxy.wait_ready(1, 1)
        # TP=2 splits every sum: tokens equal TP=1's up to a near tie (tests/near_tie.py).
        for params in (GREEDY, SEEDED):
            assert_equal_up_to_near_ties(_complete_all(proxy.url, params),
                                         _complete_all(servers["C"].url, params), params)
        usage = requests.post(proxy.url + "/v1/completions", timeout=300, json={
            "model": "demo", "prompt": _prompts()[-1][::-1], "max_tokens": 2,
            "temperature": 0}).json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
    finally:
        proxy.close()
    for name in (producer, consumer):
        assert wait_free_blocks(servers[name], idle[name]) == idle[name]
