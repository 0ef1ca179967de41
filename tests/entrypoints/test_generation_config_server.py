"""generation_config.json served: every eos id stops a completion, its defaults fill the
fields a request leaves unset, the request's own values win, `--generation-config vllm`
ignores the file."""
import pytest
import requests

from remote_server import running_server
from two_eos_model import (DEFAULT_MAX_TOKENS, FORCE_SECOND_EOS, PROMPT, SAMPLING_DEFAULTS,
                           SECOND_EOS)
from vllm.entrypoints.openai.serving_engine import TOKEN_ID_PREFIX

pytestmark = pytest.mark.slow

BIAS = {str(token): bias for token, bias in FORCE_SECOND_EOS.items()}


def server_args(model: str, tokenizer: str, setting: str) -> list[str]:
    return [model, "--tokenizer", tokenizer, "--max-model-len", "128",
            "--num-gpu-blocks-override", "64", "--generation-config", setting,
            "--uvicorn-log-level", "warning"]


@pytest.fixture(scope="module")
def with_file(two_eos_model, demo_model_dir):
    with running_server(server_args(two_eos_model, demo_model_dir, "auto")) as remote:
        yield remote


@pytest.fixture(scope="module")
def without_file(two_eos_model, demo_model_dir):
    with running_server(server_args(two_eos_model, demo_model_dir, "vllm")) as remote:
        yield remote


def complete(server, **fields) -> tuple[list[int], str]:
    """The completion's token ids and finish reason."""
    body = {"prompt": PROMPT, "logprobs": 0, "return_tokens_as_token_ids": True, **fields}
    response = requests.post(server.url_for("/v1/completions"), json=body, timeout=300)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    tokens = [int(t[len(TOKEN_ID_PREFIX):]) for t in choice["logprobs"]["tokens"]]
    assert response.json()["usage"]["completion_tokens"] == len(tokens)
    return tokens, choice["finish_reason"]


def test_second_eos_id_stops(with_file, without_file):
    forced = {"temperature": 0, "max_tokens": 6, "logit_bias": BIAS}
    assert complete(with_file, **forced) == ([SECOND_EOS], "stop")
    assert complete(without_file, **forced) == ([SECOND_EOS] * 6, "length")
    held = complete(with_file, **forced, min_tokens=3)[0]
    assert len(held) == 4 and held[-1] == SECOND_EOS
    assert not {2, SECOND_EOS} & set(held[:3])


def test_unset_fields_take_the_defaults(with_file, without_file):
    defaulted = complete(with_file)
    reference = complete(without_file, max_tokens=DEFAULT_MAX_TOKENS, **SAMPLING_DEFAULTS)
    assert SECOND_EOS not in reference[0][:-1], "pick a prompt not hitting eos"
    assert defaulted == reference


def test_request_values_override_the_defaults(with_file, without_file):
    sampled = {"temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0, "seed": 11,
               "max_tokens": 9, "ignore_eos": True}
    mine = complete(with_file, **sampled)
    assert len(mine[0]) == 9
    assert mine == complete(without_file, **sampled)
    assert complete(with_file, max_tokens=7, ignore_eos=True)[0] == \
        complete(without_file, max_tokens=7, ignore_eos=True, **SAMPLING_DEFAULTS)[0]
