"""The offline LLM API: outputs, n > 1, stop conditions, chat, and bad input."""
import pytest

from vllm import LLM, SamplingParams
from vllm.engine.processor import InvalidRequestError

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def llm(demo_model_dir):
    return LLM(demo_model_dir, max_model_len=256)


def generate_one(llm, prompt, **params):
    return llm.generate(prompt, SamplingParams(**params), use_tqdm=False)[0]


def test_request_output_fields(llm):
    output = generate_one(llm, PROMPT, temperature=0, max_tokens=8, logprobs=3)
    assert output.finished and output.prompt == PROMPT
    completion = output.outputs[0]
    assert completion.index == 0 and len(completion.token_ids) <= 8
    assert len(completion.logprobs) == len(completion.token_ids)
    for token, step in zip(completion.token_ids, completion.logprobs):
        assert token in step and step[token].rank == 1  # greedy takes the top token
        assert 3 <= len(step) <= 4
    assert completion.cumulative_logprob == pytest.approx(
        sum(step[t].logprob for t, step in zip(completion.token_ids, completion.logprobs)))


def test_n_greater_than_one_with_seed(llm):
    output = generate_one(llm, PROMPT, n=3, temperature=1.0, seed=7, max_tokens=12,
                          ignore_eos=True)
    assert [c.index for c in output.outputs] == [0, 1, 2]
    texts = {c.text for c in output.outputs}
    assert len(texts) > 1
    again = generate_one(llm, PROMPT, n=3, temperature=1.0, seed=7, max_tokens=12,
                         ignore_eos=True)
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in output.outputs]


def test_stop_string_is_cut_from_text(llm):
    full = generate_one(llm, PROMPT, temperature=0, max_tokens=20, ignore_eos=True)
    text = full.outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), "need a visible stop string"
    cut = generate_one(llm, PROMPT, temperature=0, max_tokens=20, ignore_eos=True, stop=[stop])
    assert cut.outputs[0].text == text[:text.index(stop)]
    assert cut.outputs[0].finish_reason == "stop"
    assert cut.outputs[0].stop_reason == stop
    kept = generate_one(llm, PROMPT, temperature=0, max_tokens=20, ignore_eos=True,
                        stop=[stop], include_stop_str_in_output=True)
    assert kept.outputs[0].text == text[:text.index(stop) + len(stop)]


def test_stop_token_ids_and_min_tokens(llm):
    full = generate_one(llm, PROMPT, temperature=0, max_tokens=12, ignore_eos=True)
    tokens = full.outputs[0].token_ids
    stop_token = tokens[3]
    first = tokens.index(stop_token)
    stopped = generate_one(llm, PROMPT, temperature=0, max_tokens=12, ignore_eos=True,
                           stop_token_ids=[stop_token])
    assert stopped.outputs[0].token_ids == tokens[:first + 1]
    assert stopped.outputs[0].stop_reason == stop_token


def test_max_tokens_and_eos(llm):
    capped = generate_one(llm, PROMPT, temperature=0, max_tokens=5, ignore_eos=True)
    assert len(capped.outputs[0].token_ids) == 5
    assert capped.outputs[0].finish_reason == "length"
    chat = llm.chat([{"role": "user", "content": "Say hi."}],
                    SamplingParams(temperature=0, max_tokens=64), use_tqdm=False)[0]
    completion = chat.outputs[0]
    if completion.finish_reason == "stop":
        assert completion.token_ids[-1] == llm.get_tokenizer().eos_token_id
        assert "<|im_end|>" not in completion.text


def test_repetition_penalty_changes_output(llm):
    plain = generate_one(llm, "one one one one one", temperature=0, max_tokens=8,
                         ignore_eos=True)
    penalised = generate_one(llm, "one one one one one", temperature=0, max_tokens=8,
                             ignore_eos=True, repetition_penalty=2.0)
    def repeats(output):
        seen, count = set(output.prompt_token_ids), 0
        for token in output.outputs[0].token_ids:
            count += token in seen
            seen.add(token)
        return count

    assert repeats(plain) > repeats(penalised)


@pytest.mark.parametrize("params, message", [
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-2), "top_k"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(n=0), "n"),
    (dict(foo=1), "foo"),
])
def test_invalid_sampling_params(params, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**params)


def test_bad_prompts_rejected_before_any_work(llm):
    engine = llm.llm_engine
    too_long = {"prompt_token_ids": [5] * 300}
    with pytest.raises(InvalidRequestError, match="300 tokens"):
        llm.generate([PROMPT, too_long], SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="out of vocabulary"):
        llm.generate({"prompt_token_ids": [1, 10**9]}, use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate({"prompt_token_ids": []}, use_tqdm=False)
    assert not engine.has_unfinished_requests()
    assert not engine.engine_core.has_unfinished_requests()
    # the engine still serves
    assert generate_one(llm, PROMPT, temperature=0, max_tokens=3).outputs[0].token_ids


def test_unknown_engine_argument():
    with pytest.raises(TypeError, match="max_num_seq"):
        LLM("x", max_num_seq=3)


def test_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"architectures": ["NoSuchForCausalLM"], "model_type": "llama", "vocab_size": 8,'
        ' "hidden_size": 8, "num_attention_heads": 1, "num_hidden_layers": 1,'
        ' "intermediate_size": 8, "max_position_embeddings": 16}')
    with pytest.raises(ValueError, match="NoSuchForCausalLM"):
        LLM(str(tmp_path))


def test_missing_and_corrupt_weights(tmp_path, demo_model_dir):
    import shutil
    with pytest.raises((FileNotFoundError, ValueError), match="does-not-exist"):
        LLM(str(tmp_path / "does-not-exist"))
    broken = tmp_path / "broken"
    shutil.copytree(demo_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="model.safetensors"):
        LLM(str(broken))
    bad_gguf = tmp_path / "bad.gguf"
    bad_gguf.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ValueError, match="bad.gguf"):
        LLM(str(bad_gguf))


def test_kv_cache_too_small_for_max_model_len(demo_model_dir):
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(demo_model_dir, max_model_len=256, num_gpu_blocks_override=4)
