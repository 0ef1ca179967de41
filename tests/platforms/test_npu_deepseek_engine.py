"""A tiny DeepSeek-V3 (MLA, a dense and a MoE layer) through the real engine on the NPU
platform over the fake torch_npu: greedy tokens equal the CPU backend's (near-tie rule),
through prefill, chunked prefill, prefix-cache hits and chunked context prefill
(chunked_prefill_for_mla). Its 16 experts route in PyTorch (npu_moe_gating_top_k takes 256
only; test_npu_moe_contract.py checks that op)."""
import pytest

from engine_checks import assert_same_greedy, random_prompts, run_prompts
from fake_npu_platform import fake_calls, fake_npu
from kvt_harness import make_core

# 16-aligned MLA sizes, as the Ascend MLA ops take them
NPU_SHAPED_V3 = dict(kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
                     n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4,
                     moe_intermediate_size=16, first_k_dense_replace=1)
LENGTHS = [1, 3, 20, 129]
CONTEXT_CHUNK = 48  # chunked_prefill_for_mla: cached latents expanded 48 at a time
NPU_MLA_OPS = {"_npu_reshape_and_cache_siso", "_npu_paged_attention_mla", "atb.npu_ring_mla"}
NPU_MOE_OPS = {"npu_moe_init_routing", "npu_grouped_matmul",
               "npu_swiglu", "npu_moe_finalize_routing"}


@pytest.fixture(scope="module")
def npu_shaped_deepseek(tmp_path_factory) -> str:
    from deepseek_models import make_deepseek
    folder = str(tmp_path_factory.mktemp("deepseek_npu_shaped"))
    make_deepseek(folder, "v3", seed=4, **NPU_SHAPED_V3)
    return folder


def run_core(model: str, prompts, waves: int = 1, **overrides):
    core = make_core(model=model, **overrides)
    try:
        return run_prompts(core, prompts, waves=waves)
    finally:
        core.shutdown()


@pytest.mark.slow  # the ops are covered cheaply by test_npu_mla_contract / test_npu_moe_contract
def test_npu_deepseek_matches_cpu_backend(npu_shaped_deepseek):
    model = npu_shaped_deepseek
    prompts = random_prompts(LENGTHS, seed=1)
    shared = random_prompts([140, 135], seed=2, shared_prefix=130)
    want, want_lp = run_core(model, prompts)
    want_shared, want_shared_lp = run_core(model, shared, waves=2)
    with fake_npu():
        from vllm.attention.backends.npu_mla import NpuMLAImpl
        NpuMLAImpl.context_chunk_tokens = CONTEXT_CHUNK  # the module goes with the fake
        fake_calls().clear()
        got, _ = run_core(model, prompts, dtype="bfloat16")
        got_chunked, _ = run_core(model, prompts, dtype="bfloat16", max_num_batched_tokens=64)
        got_shared, _ = run_core(model, shared, waves=2, dtype="bfloat16")
        got_ring_chunks, _ = run_core(model, shared, waves=2, dtype="bfloat16",
                                      max_num_batched_tokens=64,
                                      additional_config={"chunked_prefill_for_mla": True})
        calls = dict(fake_calls())
    assert NPU_MLA_OPS | NPU_MOE_OPS <= set(calls), calls
    assert_same_greedy(got, want, want_lp)
    assert_same_greedy(got_chunked, want, want_lp)
    assert_same_greedy(got_shared, want_shared, want_shared_lp)
    assert_same_greedy(got_ring_chunks, want_shared, want_shared_lp)


def test_torchair_graphs_are_refused_for_mla(npu_shaped_deepseek):
    from vllm.config import ConfigError
    with fake_npu(), pytest.raises(ConfigError, match="torchair_graph_config: MLA"):
        make_core(model=npu_shaped_deepseek, dtype="bfloat16",
                  additional_config={"torchair_graph_config": {"enabled": True}})
