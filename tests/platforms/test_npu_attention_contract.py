"""The NPU backend, run through the fake torch_npu (strict about the documented call
contract), against the CPU backend layer by layer on random paged batches."""
import pytest
import torch

import fake_device
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
    """The TorchAir decode path (scatter_nd_update + TorchAir's fused attention), compiled
    through the fake TorchAir backend, gives the same step; its op refuses eager calls."""
    import torchair
    from vllm.attention.backends.npu import NpuAttentionBackend
    from vllm.forward_context import set_forward_context
    case = make_case(SCENARIOS["decode"], dtype=torch.bfloat16)
    impl = NpuAttentionBackend.impl_cls(4, 16, case.scale, 2)
    cache = case.kv_cache.clone()
    inputs = NpuAttentionBackend.build_graph_metadata(case.common).on(torch.device("cpu"))

    def step(q, k, v, inputs):
        return impl.forward(q, k, v, cache, NpuAttentionBackend.graph_metadata(inputs))

    with pytest.raises(NotImplementedError, match="eager"):
        step(case.q, case.k, case.v, inputs)
    torch._dynamo.reset()
    compiled = torch.compile(step, backend=torchair.get_npu_backend(), fullgraph=True)
    fake_calls().clear()
    with set_forward_context(None, {}):
        got = compiled(case.q, case.k, case.v, inputs)
    want, want_cache = run_backend(CPUAttentionBackend, case, dtype=torch.float32)
    assert set(fake_calls()) == {"npu_scatter_nd_update_",
                                 "torchair.ops.npu_fused_infer_attention_score"}
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)
    assert torch.equal(cache.float(), want_cache)


def test_metadata_reaches_the_ops_on_the_right_side(npu_platform):
    """Block tables and slots must come through `.on()` (device), context lengths must not:
    a backend that skipped the copy, or copied a host-only argument, fails here."""
    import torch_npu
    from vllm.attention.backends import npu as npu_backend
    from vllm.attention.backends.npu import NpuAttentionBackend
    case = make_case(SCENARIOS["mixed"], dtype=torch.bfloat16)
    npu_backend.to_device = lambda t, device: t  # no copy: every argument stays "host"
    with pytest.raises(torch_npu.FakeNpuContractError, match="must be a device tensor"):
        run_backend(NpuAttentionBackend, case)
    metadata = NpuAttentionBackend.build_metadata(case.common)
    metadata.decode_context_lens = fake_device.mark_device(metadata.decode_context_lens)
    impl = NpuAttentionBackend.impl_cls(4, 16, case.scale, 2)
    npu_backend.to_device = lambda t, device: fake_device.mark_device(t)
    with pytest.raises(torch_npu.FakeNpuContractError, match="context_lens must be a host"):
        impl.forward(case.q, case.k, case.v, case.kv_cache.clone(), metadata)


def test_prompt_mask_is_made_once_per_step_and_grows_by_doubling(npu_platform):
    from vllm.attention.backends import npu_masks
    from vllm.attention.backends.npu import build_prefill_plan
    npu_masks._prompt_masks.clear()
    plan = build_prefill_plan(make_case(SCENARIOS["prefill"]).common)  # longest prompt 130
    mask = plan.causal_mask(torch.float16, torch.device("cpu"))
    assert mask.shape == (130, 130) and mask.dtype == torch.float16 and mask.is_contiguous()
    assert plan.causal_mask(torch.float16, torch.device("cpu")) is mask  # every layer
    assert npu_masks._prompt_masks[(torch.float16, torch.device("cpu"))].shape == (256, 256)
    assert npu_masks.prompt_causal_mask(256, torch.float16, torch.device("cpu")).shape[0] == 256
    npu_masks.prompt_causal_mask(300, torch.float16, torch.device("cpu"))
    assert npu_masks._prompt_masks[(torch.float16, torch.device("cpu"))].shape == (512, 512)
