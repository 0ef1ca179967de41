"""The NPU backend, run through the fake torch_npu (strict about the documented call
contract), against the CPU backend layer by layer on random paged batches."""
import pytest
import torch

from attn_cases import SCENARIOS, make_case, run_backend
from fake_npu_platform import fake_calls
from vllm.attention.backends.cpu import CPUAttentionBackend

EXPECTED_OPS = {
    "prefill": {"_npu_flash_attention"},
    "decode": {"_npu_paged_attention"},
    "chunked_prefix": {"npu_fused_infer_attention_score"},
    "mixed": {"_npu_paged_attention", "_npu_flash_attention"},
    "mixed_cached": {"_npu_paged_attention", "npu_fused_infer_attention_score"},
}
ATTENTION_OPS = {"_npu_flash_attention", "_npu_paged_attention",
                 "npu_fused_infer_attention_score"}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads", [(4, 2, 16), (8, 8, 32), (6, 1, 64)])
def test_npu_backend_matches_cpu_backend(npu_platform, scenario, dtype, heads):
    from vllm.attention.backends.npu import NpuAttentionBackend
    num_heads, num_kv_heads, head_size = heads
    case = make_case(SCENARIOS[scenario], num_heads, num_kv_heads, head_size, dtype=dtype)
    fake_calls().clear()
    got, got_cache = run_backend(NpuAttentionBackend, case)
    want, want_cache = run_backend(CPUAttentionBackend, case, dtype=torch.float32)
    assert {op for op in fake_calls() if op in ATTENTION_OPS} == EXPECTED_OPS[scenario]
    assert fake_calls()["_npu_reshape_and_cache"] == 1
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)
    assert torch.equal(got_cache.float(), want_cache)  # the same slots written, exactly


def test_graph_decode_path_matches_cpu_backend(npu_platform):
    """The TorchAir decode path (scatter_nd_update + fused attention) gives the same step."""
    from vllm.attention.backends.npu import NpuAttentionBackend
    case = make_case(SCENARIOS["decode"], dtype=torch.bfloat16)
    impl = NpuAttentionBackend.impl_cls(4, 16, case.scale, 2)
    cache = case.kv_cache.clone()
    fake_calls().clear()
    got = impl.forward(case.q, case.k, case.v, cache,
                       NpuAttentionBackend.build_graph_metadata(case.common))
    want, want_cache = run_backend(CPUAttentionBackend, case, dtype=torch.float32)
    assert set(fake_calls()) == {"npu_scatter_nd_update_", "npu_fused_infer_attention_score"}
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)
    assert torch.equal(cache.float(), want_cache)
