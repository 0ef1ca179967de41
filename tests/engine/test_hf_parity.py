"""Greedy tokens and top-5 logprobs against Hugging Face transformers."""
import os

import pytest
import torch

from vllm import LLM, SamplingParams

from hf_reference import check_close, hf_greedy

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "import numpy as np\nx = np.arange(10)\n",
    "The quick brown fox",
    "In 1969, the first humans to walk on the Moon were",
]
MAX_TOKENS = 32


def run_ours(llm: LLM, prompt_ids: list[list[int]]):
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=5)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params,
                           use_tqdm=False)
    result = []
    for output in outputs:
        completion = output.outputs[0]
        top = [{token: lp.logprob for token, lp in step.items()} for step in completion.logprobs]
        result.append((completion.token_ids, top))
    return result


def assert_parity(ours, hf_model, prompt_ids, min_identical, logprob_atol=2e-3):
    identical = []
    for index, ids in enumerate(prompt_ids):
        hf_tokens, hf_top = hf_greedy(hf_model, ids, MAX_TOKENS)
        our_tokens, our_top = ours[index]
        assert len(our_tokens) == MAX_TOKENS
        identical.append(check_close(our_tokens, our_top, hf_tokens, hf_top, f"prompt {index}"))
        for position in range(identical[-1]):
            token = our_tokens[position]
            assert our_top[position][token] == pytest.approx(hf_top[position][token],
                                                             abs=logprob_atol)
    assert sum(identical) >= min_identical * len(prompt_ids) * MAX_TOKENS, identical


@pytest.fixture(scope="module")
def demo_llm(demo_gguf):
    return LLM(demo_gguf, max_model_len=512)


@pytest.mark.slow
def test_demo_gguf_matches_transformers(demo_llm, demo_gguf):
    from transformers import AutoModelForCausalLM
    tokenizer = demo_llm.get_tokenizer()
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    ours = run_ours(demo_llm, prompt_ids)
    folder, name = os.path.split(demo_gguf)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                    dtype=torch.float32).eval()
    assert_parity(ours, hf_model, prompt_ids, min_identical=0.9)


def test_demo_text_is_the_detokenized_tokens(demo_llm):
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    (output,) = demo_llm.generate(PROMPTS[0], params, use_tqdm=False)
    tokenizer = demo_llm.get_tokenizer()
    completion = output.outputs[0]
    assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)
    assert output.prompt == PROMPTS[0]
    assert output.prompt_token_ids == tokenizer.encode(PROMPTS[0])
    assert completion.finish_reason == "length"


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_tiny_random_models_match_transformers(architecture, tiny_model_dirs, demo_gguf):
    from transformers import AutoModelForCausalLM
    folder = tiny_model_dirs[architecture]
    llm = LLM(folder, tokenizer=demo_gguf, max_model_len=256)
    generator = torch.Generator().manual_seed(1)
    prompt_ids = [torch.randint(3, 512, (length,), generator=generator).tolist()
                  for length in (3, 7, 12, 20, 33, 40, 55, 64)]
    ours = run_ours(llm, prompt_ids)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert_parity(ours, hf_model, prompt_ids, min_identical=0.9)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_tiny_random_models_match_transformers_in_bfloat16(architecture, tiny_model_dirs,
                                                           demo_gguf):
    """--dtype bfloat16 end to end (weights, activations, the paged KV cache) against
    transformers in bfloat16: both round differently, so the top-5 rule decides."""
    from transformers import AutoModelForCausalLM
    folder = tiny_model_dirs[architecture]
    llm = LLM(folder, tokenizer=demo_gguf, max_model_len=256, dtype="bfloat16")
    generator = torch.Generator().manual_seed(2)
    prompt_ids = [torch.randint(3, 512, (length,), generator=generator).tolist()
                  for length in (4, 9, 21, 40)]
    ours = run_ours(llm, prompt_ids)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    assert_parity(ours, hf_model, prompt_ids, min_identical=0.5, logprob_atol=0.1)
