"""FusedMoE on Ascend NPUs through torch_npu ops, as vllm-ascend's DeepSeek MoE runs them
(`vllm_ascend/ops/fused_moe.py`, 0.9.x line, tensor-parallel experts): routing by
`npu_moe_gating_top_k` where its documented limits allow (else the PyTorch router), tokens
sorted by expert with `npu_moe_init_routing`, each expert's rows in one
`npu_grouped_matmul` for gate+up and one for down with `npu_swiglu` between, and
`npu_moe_finalize_routing` summing each token's weighted expert outputs. One adaptor per op
below spells its arguments and names its schema.
"""
import torch
import torch_npu

from vllm.model_executor.layers.fused_moe.experts import MoEKernels
from vllm.model_executor.layers.fused_moe.routing import NORM_EPSILON, Routing, route

# npu_moe_gating_top_k on Atlas A2/A3 (torch_npu API reference): 256 experts in
# group_count 8 groups, k_group 4 kept, groups ranked by their top-2 sum
# (group_select_mode 1) of sigmoid scores (norm_type 1), bias required, renorm 0.
GATING_OP_EXPERTS, GATING_OP_GROUPS, GATING_OP_KEPT_GROUPS = 256, 8, 4


class NpuMoEKernels(MoEKernels):

    def route(self, routing: Routing, router_logits, correction_bias):
        if not gating_op_applies(routing):
            return route(routing, router_logits, correction_bias)
        logits = router_logits.float()  # (T, E)
        weights, ids = gating_top_k(logits, correction_bias.to(logits.dtype), routing)
        return weights, ids.long()  # (T, k) float32, (T, k) int64

    def experts(self, hidden, w13, w2, weights, ids):
        num_tokens, top_k = ids.shape
        expert_ids = ids.to(torch.int32).contiguous()  # (T, k)
        # Row ids j * T + t, the layout npu_moe_init_routing and finalize index by.
        row_idx = torch.arange(num_tokens * top_k, dtype=torch.int32, device=ids.device)
        row_idx = row_idx.view(top_k, num_tokens).t().contiguous()  # (T, k)
        sorted_rows, src_to_dst, sorted_experts = init_routing(hidden, row_idx, expert_ids)
        expert_ends = compute_expert_tokens(sorted_experts, w13.shape[0])  # (E,) int64
        gate_up = grouped_matmul(sorted_rows, w13.transpose(1, 2), expert_ends)  # (P, 2I)
        down = grouped_matmul(swiglu(gate_up), w2.transpose(1, 2), expert_ends)  # (P, H)
        out = finalize_routing(down, weights.to(down.dtype), src_to_dst, expert_ids)
        return out.float()  # (T, H)


def gating_op_applies(routing: Routing) -> bool:
    """DeepSeek-V3 routing (sigmoid, noaux_tc, normalised) in the op's supported shape."""
    return (routing.topk_method == "noaux_tc" and routing.scoring_func == "sigmoid"
            and routing.renormalize and routing.num_experts == GATING_OP_EXPERTS
            and routing.groups == GATING_OP_GROUPS
            and routing.kept_groups == GATING_OP_KEPT_GROUPS)


def gating_top_k(logits: torch.Tensor,  # (T, E) float32
                 bias: torch.Tensor,  # (E,) float32
                 routing: Routing) -> tuple[torch.Tensor, torch.Tensor]:
    # torch_npu.npu_moe_gating_top_k(Tensor x, int k, *, Tensor? bias=None, int k_group=1,
    #   int group_count=1, int group_select_mode=0, int renorm=0, int norm_type=0,
    #   bool out_flag=False, float routed_scaling_factor=1.0, float eps=1e-20)
    #   -> (Tensor y, Tensor expert_idx (int32), Tensor norm_out)  (torch_npu API reference)
    # y = the chosen experts' scores / (their sum + eps) * routed_scaling_factor.
    weights, ids, _ = torch_npu.npu_moe_gating_top_k(
        logits, routing.top_k, bias=bias, k_group=routing.kept_groups,
        group_count=routing.groups, group_select_mode=1, renorm=0, norm_type=1,
        out_flag=False, routed_scaling_factor=routing.routed_scaling_factor,
        eps=NORM_EPSILON)
    return weights, ids  # (T, k) float32, (T, k) int32


def init_routing(hidden: torch.Tensor,  # (T, H)
                 row_idx: torch.Tensor,  # (T, k) int32
                 expert_ids: torch.Tensor  # (T, k) int32
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # torch_npu.npu_moe_init_routing(Tensor x, Tensor row_idx, Tensor expert_idx,
    #   int active_num) -> (Tensor expanded_x, Tensor expanded_row_idx,
    #   Tensor expanded_expert_idx)  (torch_npu API reference): the (T * k) rows sorted by
    # expert; expanded_row_idx[r] is where source row r = row_idx[t, j] went.
    return torch_npu.npu_moe_init_routing(hidden, row_idx=row_idx, expert_idx=expert_ids,
                                          active_num=hidden.shape[0])


def compute_expert_tokens(sorted_experts: torch.Tensor,  # (P,) int32, ascending
                          num_experts: int) -> torch.Tensor:
    # torch_npu.npu_moe_compute_expert_tokens(Tensor sorted_expert_for_source_row,
    #   int num_expert) -> Tensor  (torch_npu API reference): per expert, the end of its rows
    # (int32); npu_grouped_matmul's group_list wants them as int64.
    ends = torch_npu.npu_moe_compute_expert_tokens(sorted_experts, num_experts)
    return ends.to(torch.int64)  # (E,)


def grouped_matmul(rows: torch.Tensor,  # (P, K), grouped by expert
                   weight: torch.Tensor,  # (E, K, N), a transposed view of (E, N, K)
                   expert_ends: torch.Tensor) -> torch.Tensor:  # (E,) int64, cumulative
    # torch_npu.npu_grouped_matmul(Tensor[] x, Tensor[] weight, *, Tensor[]? bias=None, ...,
    #   Tensor? group_list=None, ..., int? split_item=0, int? group_type=None,
    #   int? group_list_type=0, int? act_type=0, ScalarType? output_dtype=None) -> Tensor[]
    # (op-plugin): split_item 2 = one x split by rows into one output; group_type 0 splits
    # the M axis; group_list_type 0 = cumulative row ends.
    return torch_npu.npu_grouped_matmul(x=[rows], weight=[weight], split_item=2,
                                        group_list_type=0, group_type=0,
                                        group_list=expert_ends)[0]  # (P, N)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:  # (P, 2I): gate columns, then up
    # torch_npu.npu_swiglu(Tensor input, int dim=-1) -> Tensor (torch_npu API reference):
    # silu(first half) * second half along dim.
    return torch_npu.npu_swiglu(gate_up, dim=-1)  # (P, I)


def finalize_routing(down: torch.Tensor,  # (P, H), rows in expert order
                     scales: torch.Tensor,  # (T, k)
                     src_to_dst: torch.Tensor,  # (P,) int32, from init_routing
                     expert_ids: torch.Tensor) -> torch.Tensor:  # (T, k) int32
    # torch_npu.npu_moe_finalize_routing(Tensor expanded_permuted_rows, Tensor? skip1,
    #   Tensor? skip2, Tensor? bias, Tensor? scales, Tensor expanded_src_to_dst_row,
    #   Tensor? export_for_source_row, int? drop_pad_mode=0) -> Tensor  (op-plugin):
    # out[t] = sum_j scales[t, j] * down[src_to_dst[j * T + t]].
    return torch_npu.npu_moe_finalize_routing(down, skip1=None, skip2=None, bias=None,
                                              scales=scales,
                                              expanded_src_to_dst_row=src_to_dst,
                                              export_for_source_row=expert_ids)  # (T, H)
