"""generation_config.json offline: every eos id stops, its defaults fill what a request leaves
unset, `--generation-config vllm` ignores it, a bad setting is a ConfigError."""
import json

import pytest

from two_eos_model import (DEFAULT_MAX_TOKENS, FORCE_SECOND_EOS, PROMPT, SAMPLING_DEFAULTS,
                           SECOND_EOS)
from vllm import LLM, SamplingParams
from vllm.config import ConfigError
from vllm.engine.arg_utils import EngineArgs
from vllm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from vllm.entrypoints.openai.serving_engine import build_sampling_params

FILE_DEFAULTS = SAMPLING_DEFAULTS


def make_llm(model: str, tokenizer: str, setting: str) -> LLM:
    return LLM(model, tokenizer=tokenizer, max_model_len=128, num_gpu_blocks_override=64,
               generation_config=setting)


@pytest.fixture(scope="module")
def with_file(two_eos_model, demo_model_dir):
    return make_llm(two_eos_model, demo_model_dir, "auto")


@pytest.fixture(scope="module")
def without_file(two_eos_model, demo_model_dir):
    return make_llm(two_eos_model, demo_model_dir, "vllm")


def completion(llm: LLM, params) -> object:
    return llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]


def test_model_config_records_eos_ids_and_defaults(with_file, without_file):
    config = with_file.llm_engine.vllm_config.model_config
    assert config.eos_token_ids == (2, SECOND_EOS)
    assert config.sampling_defaults == FILE_DEFAULTS
    assert config.default_max_tokens == DEFAULT_MAX_TOKENS
    ignored = without_file.llm_engine.vllm_config.model_config
    assert (ignored.eos_token_ids, ignored.sampling_defaults, ignored.default_max_tokens) == \
        ((2,), {}, None)


def test_second_eos_id_stops(with_file, without_file):
    params = SamplingParams(temperature=0, max_tokens=6, logit_bias=FORCE_SECOND_EOS)
    stopped = completion(with_file, params)
    assert stopped.token_ids == [SECOND_EOS]
    assert (stopped.finish_reason, stopped.stop_reason) == ("stop", None)
    running = completion(without_file, params)  # the same model emits it every step
    assert running.token_ids == [SECOND_EOS] * 6 and running.finish_reason == "length"


def test_min_tokens_holds_back_every_eos_id(with_file):
    params = SamplingParams(temperature=0, max_tokens=8, min_tokens=3,
                            logit_bias=FORCE_SECOND_EOS)
    tokens = completion(with_file, params).token_ids
    assert len(tokens) == 4 and tokens[-1] == SECOND_EOS
    assert not {2, SECOND_EOS} & set(tokens[:3])
    ignoring = completion(with_file, SamplingParams(temperature=0, max_tokens=5,
                                                    ignore_eos=True,
                                                    logit_bias=FORCE_SECOND_EOS))
    assert ignoring.token_ids == [SECOND_EOS] * 5


def test_defaults_apply_when_no_params_are_given(with_file, without_file):
    defaulted = completion(with_file, None)
    reference = completion(without_file, SamplingParams(max_tokens=DEFAULT_MAX_TOKENS,
                                                            **FILE_DEFAULTS))
    assert SECOND_EOS not in reference.token_ids[:-1], "pick a prompt not hitting eos"
    assert defaulted.token_ids == reference.token_ids
    assert len(defaulted.token_ids) == DEFAULT_MAX_TOKENS or defaulted.finish_reason == "stop"


def test_explicit_params_are_used_as_given(with_file, without_file):
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=9, ignore_eos=True)
    mine = completion(with_file, params)
    assert len(mine.token_ids) == 9
    assert mine.token_ids == completion(without_file, params).token_ids


def test_server_fields_left_unset_take_the_defaults():
    unset = build_sampling_params(CompletionRequest(prompt="x"), None, None,
                                  defaults=FILE_DEFAULTS)
    assert (unset.temperature, unset.top_p, unset.repetition_penalty) == (0.0, 1.0, 1.05)
    assert unset.max_tokens is None  # the engine fills in max_new_tokens
    sampled = build_sampling_params(CompletionRequest(prompt="x"), None, None,
                                    defaults={**FILE_DEFAULTS, "temperature": 0.5})
    assert (sampled.temperature, sampled.top_p) == (0.5, 0.9)
    mine = build_sampling_params(CompletionRequest(prompt="x", temperature=0.7, top_p=0.5,
                                                   repetition_penalty=1.0), 4, None,
                                 defaults=FILE_DEFAULTS)
    assert (mine.temperature, mine.top_p, mine.repetition_penalty, mine.max_tokens) == \
        (0.7, 0.5, 1.0, 4)


def test_chat_fields_left_unset_take_the_defaults():
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], top_p=0.5)
    params = build_sampling_params(chat, chat.max_tokens, None,
                                   defaults={"temperature": 0.5, "top_p": 0.9, "top_k": 4})
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == \
        (0.5, 0.5, 4, None)


def test_a_generation_config_folder_replaces_the_models(two_eos_model, tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": 9, "top_k": 4}))
    config = EngineArgs(model=two_eos_model, generation_config=str(tmp_path)) \
        .create_engine_config().model_config
    assert (config.eos_token_ids, config.sampling_defaults) == ((2, 9), {"top_k": 4})


@pytest.mark.parametrize("setting, message", [
    ("greedy", "generation_config must be 'auto', 'vllm' or a folder"),
    ("{folder}", "has no generation_config.json"),
])
def test_bad_settings_are_refused(two_eos_model, tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        EngineArgs(model=two_eos_model, generation_config=setting.format(folder=tmp_path)) \
            .create_engine_config()


@pytest.mark.parametrize("content, message", [
    ("{oops", "cannot read"),
    ("[1, 2]", "must hold a JSON object"),
    (json.dumps({"temperature": -1}), "temperature must be non-negative"),
    (json.dumps({"max_new_tokens": 0}), "max_new_tokens must be at least 1"),
    (json.dumps({"eos_token_id": ["2"]}), "eos_token_id must be a token id"),
])
def test_bad_files_are_refused(two_eos_model, tmp_path, content, message):
    (tmp_path / "generation_config.json").write_text(content)
    with pytest.raises(ConfigError, match=message):
        EngineArgs(model=two_eos_model, generation_config=str(tmp_path)).create_engine_config()
