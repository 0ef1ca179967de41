import inspect

import numpy as np
import pytest

from vllm.sampling_params import SamplingParams, SamplingType

VLLM_DEFAULTS = dict(
    n=1, best_of=None, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0,
    temperature=1.0, top_p=1.0, top_k=-1, min_p=0.0, seed=None, ignore_eos=False,
    max_tokens=16, min_tokens=0, logprobs=None, prompt_logprobs=None, detokenize=True,
    skip_special_tokens=True, spaces_between_special_tokens=True,
    include_stop_str_in_output=False, logit_bias=None, extra_args=None,
)


def test_defaults():
    params = SamplingParams()
    for name, value in VLLM_DEFAULTS.items():
        assert getattr(params, name) == value, name
    assert params.stop == [] and params.stop_token_ids == []
    assert params.sampling_type == SamplingType.RANDOM


def test_signature_lists_every_field_as_keyword_only():
    signature = inspect.signature(SamplingParams)
    assert signature.parameters["top_k"].default == -1
    assert all(p.kind == p.KEYWORD_ONLY for p in signature.parameters.values())


INVALID = [
    (dict(n=0), "n must be at least 1, got 0"),
    (dict(n=1.5), "n must be an integer, got 1.5"),
    (dict(n=2, best_of=3), "best_of must be None or equal to n (2), got 3"),
    (dict(temperature=-1.0), "temperature must be non-negative, got -1.0."),
    (dict(temperature=float("nan")), "temperature must be a finite number, got nan"),
    (dict(temperature="hot"), "temperature must be a finite number, got 'hot'"),
    (dict(top_p=0), "top_p must be in (0, 1], got 0."),
    (dict(top_p=1.5), "top_p must be in (0, 1], got 1.5"),
    (dict(top_k=0), "top_k must be -1 (disable) or at least 1, got 0"),
    (dict(top_k=-2), "top_k must be -1 (disable) or at least 1, got -2"),
    (dict(top_k=2.0), "top_k must be an integer, got 2.0"),
    (dict(min_p=-0.1), "min_p must be in [0, 1], got -0.1"),
    (dict(min_p=1.1), "min_p must be in [0, 1], got 1.1"),
    (dict(presence_penalty=2.5), "presence_penalty must be in [-2, 2], got 2.5"),
    (dict(frequency_penalty=-3), "frequency_penalty must be in [-2, 2], got -3"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be greater than zero, got 0.0"),
    (dict(seed=1.5), "seed must be an integer, got 1.5"),
    (dict(seed="1"), "seed must be an integer, got '1'"),
    (dict(max_tokens=0), "max_tokens must be at least 1, got 0"),
    (dict(min_tokens=-1), "min_tokens must be non-negative, got -1"),
    (dict(min_tokens=5, max_tokens=4), "max_tokens=4, got 5"),
    (dict(logprobs=-1), "logprobs must be in [0, 20] (max_logprobs), got -1"),
    (dict(logprobs=21), "logprobs must be in [0, 20] (max_logprobs), got 21"),
    (dict(prompt_logprobs=1), "prompt_logprobs is not supported yet, got 1"),
    (dict(stop=5), "stop must be a string or a list of strings, got 5"),
    (dict(stop=["ok", ""]), "stop must contain non-empty strings, got ''"),
    (dict(stop="x", detokenize=False), "stop strings need detokenize=True, got stop='x'"),
    (dict(stop_token_ids=[1, "2"]), "stop_token_ids must be an integer, got '2'"),
    (dict(stop_token_ids=[-1]), "stop_token_ids must be non-negative, got -1"),
    (dict(stop_token_ids=3), "stop_token_ids must be a list of ints, got 3"),
    (dict(ignore_eos=1), "ignore_eos must be a bool, got 1"),
    (dict(skip_special_tokens="no"), "skip_special_tokens must be a bool, got 'no'"),
    (dict(logit_bias=[1]), "logit_bias must be a dict of token id to bias, got [1]"),
    (dict(logit_bias={"a": 1}), "logit_bias token id must be an integer, got 'a'"),
    (dict(logit_bias={3: 101}), "logit_bias values must be in [-100, 100], got 101"),
    (dict(extra_args=[1]), "extra_args must be a dict, got [1]"),
    (dict(foo=1), "unknown sampling parameter 'foo'"),
]


@pytest.mark.parametrize("kwargs, message", INVALID, ids=lambda x: str(x)[:40])
def test_invalid_values_raise_value_error_naming_the_value(kwargs, message):
    with pytest.raises(ValueError) as error:
        SamplingParams(**kwargs)
    assert message in str(error.value)


def test_valid_edge_values_are_accepted():
    SamplingParams(top_k=1, top_p=1.0, min_p=1.0, presence_penalty=-2, frequency_penalty=2,
                   logprobs=20, min_tokens=16, seed=0, n=3, best_of=3, temperature=0.0)
    SamplingParams(max_tokens=None, min_tokens=1000)


def test_greedy_disables_the_filters():
    params = SamplingParams(temperature=0.0, top_p=0.5, top_k=3, min_p=0.2, seed=4)
    assert (params.top_p, params.top_k, params.min_p) == (1.0, -1, 0.0)
    assert params.sampling_type == SamplingType.GREEDY


def test_sampling_type():
    assert SamplingParams(temperature=1e-6).sampling_type == SamplingType.GREEDY
    assert SamplingParams(temperature=0.5, seed=1).sampling_type == SamplingType.RANDOM_SEED
    assert SamplingParams(temperature=0.5).sampling_type == SamplingType.RANDOM


def test_normalization_of_inputs():
    params = SamplingParams(stop="###", stop_token_ids=(np.int64(3), 5), logit_bias={"7": 2},
                            top_k=np.int64(4), temperature=1)
    assert params.stop == ["###"]
    assert params.stop_token_ids == [3, 5] and type(params.stop_token_ids[0]) is int
    assert params.logit_bias == {7: 2.0}
    assert type(params.top_k) is int and type(params.temperature) is float
    assert params.all_stop_token_ids == {3, 5}


def test_from_optional_drops_none_values():
    params = SamplingParams.from_optional(temperature=None, top_p=0.5, max_tokens=None, seed=None)
    assert params.temperature == 1.0 and params.top_p == 0.5 and params.max_tokens == 16
    with pytest.raises(ValueError, match="unknown sampling parameter 'bar'"):
        SamplingParams.from_optional(bar=2)


def test_clone_is_deep_and_equal():
    params = SamplingParams(stop=["a"], logit_bias={1: 1.0}, extra_args={"k": [1]})
    copy = params.clone()
    assert copy == params
    copy.stop.append("b")
    copy.extra_args["k"].append(2)
    assert params.stop == ["a"] and params.extra_args == {"k": [1]}


def test_output_text_buffer_length():
    assert SamplingParams().output_text_buffer_length == 0
    assert SamplingParams(stop=["ab", "abcd"]).output_text_buffer_length == 3
    params = SamplingParams(stop=["abcd"], include_stop_str_in_output=True)
    assert params.output_text_buffer_length == 0
