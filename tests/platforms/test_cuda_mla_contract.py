"""The CUDA MLA implementation (SDPA) on CPU tensors against the CPU MLA implementation,
layer by layer; on a GPU (marked cuda, skipped without one) the same against float32, and a
tiny DeepSeek-V3 through the engine against transformers."""
import pytest
import torch

from attn_cases import SCENARIOS
from mla_cases import make_mla_case, run_mla
from vllm.attention.backend import MLADims
from vllm.attention.backends.cpu import CPUAttentionBackend
from vllm.attention.backends.cuda import CudaAttentionBackend

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DIMS = MLADims(num_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
               v_head_dim=12)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("block_size", [16, 128])
def test_sdpa_mla_matches_cpu_mla(scenario, block_size):
    case = make_mla_case(SCENARIOS[scenario], DIMS, block_size=block_size)
    got, got_cache = run_mla(CudaAttentionBackend, case)
    want, want_cache = run_mla(CPUAttentionBackend, case)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_cache, want_cache)


@pytest.mark.parametrize("chunk_tokens", [5, 64])
def test_chunked_context_prefill_matches_cpu_mla(chunk_tokens):
    case = make_mla_case(SCENARIOS["mixed_cached"], DIMS, block_size=16, seed=2)
    got, _ = run_mla(CudaAttentionBackend, case, chunk_tokens)
    want, _ = run_mla(CPUAttentionBackend, case)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sdpa_mla_on_gpu(scenario):
    case = make_mla_case(SCENARIOS[scenario], DIMS)
    got, _ = run_mla(CudaAttentionBackend, case, device="cuda", dtype=torch.float16)
    want, _ = run_mla(CPUAttentionBackend, case)
    torch.testing.assert_close(got.float().cpu(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.cuda
@needs_gpu
def test_tiny_deepseek_v3_matches_transformers_on_gpu(tiny_deepseek):
    """Greedy tokens of a tiny DeepSeek-V3 (MLA, a MoE layer) in float32 on the GPU equal
    transformers' own model's up to a near tie of transformers' logits (eager: MLA decodes
    capture no graphs)."""
    from engine_checks import GREEDY, NEAR_TIE_NATS, random_prompts, run_prompts
    from kvt_harness import make_core
    model = tiny_deepseek("v3_moe")
    prompts = random_prompts([3, 20, 130], seed=5)
    core = make_core(model=model, dtype="float32")
    try:
        got, _ = run_prompts(core, prompts)
        assert core.executor.worker.model_runner.graph_runner is None
    finally:
        core.shutdown()
    for have, (want, gaps) in zip(got, hf_greedy_with_gaps(model, prompts, GREEDY.max_tokens)):
        split = next((i for i, (a, b) in enumerate(zip(have, want)) if a != b), None)
        assert split is None or gaps[split] < NEAR_TIE_NATS, (have, want, gaps)


def hf_greedy_with_gaps(model_dir: str, prompts, max_tokens: int):
    """transformers' greedy tokens of each prompt and, per step, its top-2 logprob gap."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
    results = []
    for prompt in prompts:
        out = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=max_tokens,
                             min_new_tokens=max_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
        top2 = [step[0].float().log_softmax(-1).topk(2).values for step in out.logits]
        results.append((out.sequences[0, len(prompt):].tolist(),
                        [float(v[0] - v[1]) for v in top2]))
    return results
