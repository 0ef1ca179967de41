"""The NPU MoE kernels (vllm/platforms/npu_moe.py), run through the fake torch_npu (strict
about the documented call contract), against the CPU FusedMoE path: routing ids and weights,
and the routed experts' output."""
import pytest
import torch

from fake_npu_platform import fake_calls
from vllm.model_executor.layers.fused_moe import FusedMoE
from vllm.model_executor.layers.fused_moe.routing import Routing, route

HIDDEN, INTERMEDIATE = 32, 16
# DeepSeek-V3's routing shape, the one npu_moe_gating_top_k supports: 256 experts in 8 groups
V3 = dict(num_experts=256, top_k=8, scoring_func="sigmoid", renormalize=True,
          topk_method="noaux_tc", num_expert_group=8, topk_group=4, routed_scaling_factor=2.5)
EXPERT_OPS = {"npu_moe_init_routing", "npu_moe_compute_expert_tokens", "npu_grouped_matmul",
              "npu_swiglu", "npu_moe_finalize_routing"}


def npu_kernels():
    from vllm.platforms.npu_moe import NpuMoEKernels
    return NpuMoEKernels()


def router_inputs(num_tokens: int, num_experts: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(num_tokens, num_experts, generator=gen),
            0.1 * torch.randn(num_experts, generator=gen))


def by_expert(weights, ids):
    order = ids.argsort(dim=-1)
    return weights.gather(1, order), ids.gather(1, order)


def test_gating_op_routes_as_the_cpu_router(npu_platform):
    routing = Routing(**V3)
    logits, bias = router_inputs(9, 256)
    fake_calls().clear()
    got_weights, got_ids = npu_kernels().route(routing, logits, bias)
    want_weights, want_ids = route(routing, logits, bias)
    assert fake_calls()["npu_moe_gating_top_k"] == 1
    assert got_ids.dtype == torch.int64 and got_weights.dtype == torch.float32
    got_weights, got_ids = by_expert(got_weights, got_ids)
    want_weights, want_ids = by_expert(want_weights, want_ids)
    assert torch.equal(got_ids, want_ids)
    torch.testing.assert_close(got_weights, want_weights, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("overrides", [dict(num_experts=8, num_expert_group=4, topk_group=2,
                                            top_k=2),
                                       dict(renormalize=False)],
                         ids=["8_experts", "no_norm"])
def test_routing_outside_the_gating_op_limits_stays_in_pytorch(npu_platform, overrides):
    routing = Routing(**{**V3, **overrides})
    logits, bias = router_inputs(9, routing.num_experts)
    fake_calls().clear()
    got = npu_kernels().route(routing, logits, bias)
    assert "npu_moe_gating_top_k" not in fake_calls()
    for have, want in zip(got, route(routing, logits, bias)):
        assert torch.equal(have, want)


def make_moe(num_experts: int, dtype, seed: int = 0) -> FusedMoE:
    routing = {**V3, "num_experts": num_experts}
    if num_experts != 256:
        routing.update(num_expert_group=4, topk_group=2, top_k=3)
    moe = FusedMoE(routing.pop("num_experts"), routing.pop("top_k"), HIDDEN, INTERMEDIATE,
                   has_score_correction_bias=True, **routing)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (moe.w13_weight, moe.w2_weight):
            param.data = (0.3 * torch.randn(param.shape, generator=gen)).to(dtype)
        moe.e_score_correction_bias.copy_(0.1 * torch.randn(num_experts, generator=gen))
    return moe


@pytest.mark.parametrize("num_experts", [256, 16])
@pytest.mark.parametrize("num_tokens", [1, 7])
def test_npu_experts_match_cpu_fused_moe(num_experts, num_tokens):
    """The same FusedMoE weights through the CPU path (float32) and the NPU kernels
    (bfloat16, over the fake torch_npu)."""
    from fake_npu_platform import fake_npu
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(num_tokens, HIDDEN, generator=gen).bfloat16()
    logits = torch.randn(num_tokens, num_experts, generator=gen)
    cpu_moe = make_moe(num_experts, torch.bfloat16)
    for param in (cpu_moe.w13_weight, cpu_moe.w2_weight):
        param.data = param.data.float()
    assert cpu_moe.platform_kernels is None
    want = cpu_moe(hidden.float(), logits)
    with fake_npu():
        npu_moe = make_moe(num_experts, torch.bfloat16)
        fake_calls().clear()
        got = npu_moe(hidden, logits)
        calls = dict(fake_calls())
    assert EXPERT_OPS <= set(calls) and calls["npu_grouped_matmul"] == 2
    assert ("npu_moe_gating_top_k" in calls) == (num_experts == 256)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)


def test_grouped_matmul_refuses_row_ends_past_the_rows(npu_platform):
    import torch_npu
    rows = torch.zeros(4, 8, dtype=torch.bfloat16)
    weight = torch.zeros(2, 8, 6, dtype=torch.bfloat16)
    with pytest.raises(torch_npu.FakeNpuContractError, match="group_list"):
        torch_npu.npu_grouped_matmul(x=[rows], weight=[weight], split_item=2, group_type=0,
                                     group_list_type=0, group_list=torch.tensor([3, 5]))
