"""The NPU MLA implementation, run through the fake torch_npu (strict about the documented
call contract), against the CPU MLA implementation layer by layer: absorbed decodes over the
paged latent cache, prefills, and prefills over a cached prefix at once or in context
chunks."""
import pytest
import torch

from attn_cases import SCENARIOS
from fake_npu_platform import fake_calls
from mla_cases import make_mla_case, run_mla
from vllm.attention.backends.cpu import CPUAttentionBackend

MLA_OPS = {"_npu_paged_attention_mla", "atb.npu_ring_mla"}
EXPECTED_OPS = {
    "prefill": {"atb.npu_ring_mla"},
    "decode": {"_npu_paged_attention_mla"},
    "chunked_prefix": {"atb.npu_ring_mla"},
    "mixed": MLA_OPS,
    "mixed_cached": MLA_OPS,
}
# npu_ring_mla calls per step: one over the new tokens, then one per context chunk
RING_CALLS = {"prefill": 1, "decode": 0, "chunked_prefix": 2, "mixed": 1, "mixed_cached": 2}


def npu_backend():
    from vllm.attention.backends.npu import NpuAttentionBackend
    return NpuAttentionBackend


def assert_matches_cpu(case, dtype, chunk_tokens=None):
    got, got_cache = run_mla(npu_backend(), case, chunk_tokens, dtype=dtype)
    want, want_cache = run_mla(CPUAttentionBackend, case, dtype=torch.float32)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)
    assert torch.equal(got_cache.float(), want_cache)  # the same slots written, exactly


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_npu_mla_matches_cpu_mla(npu_platform, scenario, dtype):
    case = make_mla_case(SCENARIOS[scenario], dtype=dtype)
    fake_calls().clear()
    assert_matches_cpu(case, dtype)
    calls = fake_calls()
    assert {op for op in calls if op in MLA_OPS} == EXPECTED_OPS[scenario]
    assert calls["_npu_reshape_and_cache_siso"] == 1
    assert calls["atb.npu_ring_mla"] == RING_CALLS[scenario]


@pytest.mark.parametrize("chunk_tokens", [7, 100, 1024])
def test_chunked_context_prefill_matches_cpu_mla(npu_platform, chunk_tokens):
    """chunked_prefill_for_mla: each context chunk is one more npu_ring_mla call merged by
    its log-sum-exp; the longest context here is 256 tokens."""
    case = make_mla_case(SCENARIOS["chunked_prefix"], dtype=torch.bfloat16, seed=3)
    fake_calls().clear()
    assert_matches_cpu(case, torch.bfloat16, chunk_tokens)
    assert fake_calls()["atb.npu_ring_mla"] == 1 + -(-256 // chunk_tokens)


def test_ring_mla_refuses_a_causal_mask_over_unequal_lengths(npu_platform):
    """mask_type_triu needs as many keys as queries per request: the fake refuses the call a
    backend merging a cached context through the causal mask would make."""
    import torch_npu
    q = torch.zeros(4, 2, 32, dtype=torch.bfloat16)
    rope = torch.zeros(4, 2, 16, dtype=torch.bfloat16)
    mask = torch.ones(512, 512, dtype=torch.bfloat16).triu(1)
    lengths = torch.tensor([[4], [5]], dtype=torch.int32)
    with pytest.raises(torch_npu.FakeNpuContractError, match="mask_type_triu"):
        torch_npu.atb.npu_ring_mla(
            q_nope=q, q_rope=rope, k_nope=torch.zeros(5, 2, 32, dtype=torch.bfloat16),
            k_rope=torch.zeros(5, 2, 16, dtype=torch.bfloat16),
            value=torch.zeros(5, 2, 32, dtype=torch.bfloat16), mask=mask, seqlen=lengths,
            head_num=2, kv_head_num=2, qk_scale=0.1, kernel_type="kernel_type_high_precision",
            mask_type="mask_type_triu", input_layout="type_bsnd",
            calc_type="calc_type_first_ring", output=torch.empty_like(q),
            softmax_lse=torch.empty(2, 4))
