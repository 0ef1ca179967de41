"""Tiny Llama, Qwen2 and DeepSeek-V3 (MoE) quantized by `vllm quantize`, served from the
W8A8 folder: greedy tokens and top-5 logprobs against transformers on the dequantized
weights with fake-quantized activations (tests/w8a8_reference.py), top-5 rule."""
import pytest
import torch

from vllm import LLM, SamplingParams

from hf_reference import check_close, hf_greedy
from w8a8_reference import fake_quantized_hf_model, quantize_with_cli

MAX_TOKENS = 12
CASES = [("llama", "W8A8_DYNAMIC"), ("qwen2", "W8A8_DYNAMIC"), ("llama", "W8A8"),
         ("qwen2", "W8A8"), ("deepseek_v3_moe", "W8A8_DYNAMIC"),
         pytest.param("deepseek_v3_moe", "W8A8", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def source_of(tiny_model_dirs, tiny_deepseek):
    return lambda arch: tiny_deepseek("v3_moe") if arch.startswith("deepseek") \
        else tiny_model_dirs[arch]


@pytest.mark.parametrize("arch, method", CASES)
def test_quantized_model_matches_fake_quantized_transformers(arch, method, source_of,
                                                             demo_model_dir, tmp_path):
    source = source_of(arch)
    folder = quantize_with_cli(source, str(tmp_path / "w8a8"), method, demo_model_dir)
    llm = LLM(folder, tokenizer=demo_model_dir, max_model_len=256,
              num_gpu_blocks_override=64)
    assert llm.llm_engine.vllm_config.model_config.quantization == "ascend"  # auto-detected
    generator = torch.Generator().manual_seed(1)
    prompt_ids = [torch.randint(3, 512, (length,), generator=generator).tolist()
                  for length in (5, 23)]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=5)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params,
                           use_tqdm=False)
    reference = fake_quantized_hf_model(source, folder)
    # a static input step is coarse: an input rounded the other way moves a logprob by more
    atol = 0.05 if method == "W8A8_DYNAMIC" else 0.3
    identical = 0
    for ids, output in zip(prompt_ids, outputs):
        ours = output.outputs[0]
        top = [{t: lp.logprob for t, lp in step.items()} for step in ours.logprobs]
        want_tokens, want_top = hf_greedy(reference, ids, MAX_TOKENS)
        same = check_close(ours.token_ids, top, want_tokens, want_top)
        for position in range(same):
            token = ours.token_ids[position]
            assert top[position][token] == pytest.approx(want_top[position][token], abs=atol)
        identical += same
    assert identical >= 0.6 * len(prompt_ids) * MAX_TOKENS
