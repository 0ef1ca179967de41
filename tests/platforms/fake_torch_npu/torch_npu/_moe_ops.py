"""Fake torch_npu MoE ops (vllm/platforms/npu_moe.py names their sources):
`npu_moe_gating_top_k`, `npu_moe_init_routing`, `npu_moe_compute_expert_tokens`,
`npu_grouped_matmul`, `npu_swiglu`, `npu_moe_finalize_routing`, in plain PyTorch on CPU
tensors, every argument checked; a deviation raises FakeNpuContractError."""
import torch

import torch_npu
from torch_npu import _checks as C

__all__ = ["npu_grouped_matmul", "npu_moe_compute_expert_tokens", "npu_moe_finalize_routing",
           "npu_moe_gating_top_k", "npu_moe_init_routing", "npu_swiglu"]
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_INT32 = (torch.int32,)
# npu_moe_gating_top_k on Atlas A2/A3: the only supported sizes
GATING_EXPERTS, GATING_GROUPS, GATING_KEPT = 256, 8, 4
_GMM_UNSUPPORTED = ("bias", "scale", "offset", "antiquant_scale", "antiquant_offset",
                    "per_token_scale", "activation_input", "activation_quant_scale",
                    "activation_quant_offset", "tuning_config", "output_dtype")


def npu_moe_gating_top_k(x, k, *, bias=None, k_group=1, group_count=1, group_select_mode=0,
                         renorm=0, norm_type=0, out_flag=False, routed_scaling_factor=1.0,
                         eps=1e-20):
    op = "npu_moe_gating_top_k"
    torch_npu.CALLS[op] += 1
    C.tensor(op, "x", x, 2, _FLOATS, contiguous=False)
    C.tensor(op, "bias", bias, 1, (x.dtype,), contiguous=False)
    for name, value, want in (("experts (x's last dim)", x.shape[1], GATING_EXPERTS),
                              ("group_count", group_count, GATING_GROUPS),
                              ("k_group", k_group, GATING_KEPT),
                              ("bias length", bias.shape[0], GATING_EXPERTS),
                              ("renorm", renorm, 0), ("out_flag", out_flag, False)):
        C.same(op, name, value, want)
    C.integer(op, "k", k)
    if not 1 <= k <= 32:
        C.fail(op, f"k must be in [1, 32], got {k}")
    if group_select_mode not in (0, 1) or norm_type not in (0, 1):
        C.fail(op, f"group_select_mode {group_select_mode} / norm_type {norm_type}")
    if group_select_mode == 0 and norm_type != 0:
        C.fail(op, "group_select_mode 0 takes norm_type 0 only")
    C.real(op, "routed_scaling_factor", routed_scaling_factor)
    C.real(op, "eps", eps)
    scores = x.float().sigmoid() if norm_type == 1 else x.float().softmax(-1)  # (T, E)
    biased = scores + bias.float()
    per_group = biased.view(x.shape[0], group_count, -1)  # (T, G, E / G)
    if group_select_mode == 1:
        group_score = per_group.topk(2, dim=-1).values.sum(-1)  # (T, G)
    else:
        group_score = per_group.amax(-1)
    kept = group_score.topk(k_group, dim=-1).indices  # (T, k_group)
    keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept, True)
    candidates = per_group.masked_fill(~keep.unsqueeze(-1), float("-inf")).flatten(1)
    idx = candidates.topk(k, dim=-1).indices  # (T, k)
    y = scores.gather(1, idx)
    y = y / (y.sum(-1, keepdim=True) + eps) * routed_scaling_factor
    return y.to(x.dtype), idx.to(torch.int32), scores


def npu_moe_init_routing(x, row_idx, expert_idx, active_num):
    op = "npu_moe_init_routing"
    torch_npu.CALLS[op] += 1
    C.tensor(op, "x", x, 2, _FLOATS)
    C.tensor(op, "expert_idx", expert_idx, 2, _INT32)
    C.tensor(op, "row_idx", row_idx, 2, _INT32)
    C.same(op, "row_idx vs expert_idx shape", tuple(row_idx.shape), tuple(expert_idx.shape))
    C.same(op, "expert_idx rows vs x rows", expert_idx.shape[0], x.shape[0])
    C.integer(op, "active_num", active_num)
    num_rows, k = expert_idx.shape
    flat_rows = row_idx.flatten().long()
    if sorted(flat_rows.tolist()) != list(range(num_rows * k)):
        C.fail(op, "row_idx must hold each of 0 .. NUM_ROWS * K - 1 once")
    # Sort (expert, row id) pairs: experts ascending, row ids ascending within one.
    order = torch.argsort(expert_idx.flatten().long() * (num_rows * k) + flat_rows)
    sorted_rows = flat_rows[order]  # (NUM_ROWS * K,)
    expanded_row_idx = torch.empty(num_rows * k, dtype=torch.int32)
    expanded_row_idx[sorted_rows] = torch.arange(num_rows * k, dtype=torch.int32)
    kept = min(num_rows, active_num) * k
    expanded_x = x[sorted_rows[:kept] % num_rows]  # (kept, H)
    return expanded_x, expanded_row_idx, expert_idx.flatten()[order].contiguous()


def npu_moe_compute_expert_tokens(sorted_expert_for_source_row, num_expert):
    op = "npu_moe_compute_expert_tokens"
    torch_npu.CALLS[op] += 1
    experts = C.tensor(op, "sorted_expert_for_source_row", sorted_expert_for_source_row, 1,
                       _INT32)
    C.integer(op, "num_expert", num_expert)
    if experts.numel() and bool((experts[1:] < experts[:-1]).any()):
        C.fail(op, "sorted_expert_for_source_row must be ascending")
    ends = torch.searchsorted(experts, torch.arange(num_expert, dtype=torch.int32),
                              right=True)
    return ends.to(torch.int32)  # (E,): rows of experts 0..e end here


def npu_grouped_matmul(x, weight, *, bias=None, scale=None, offset=None, antiquant_scale=None,
                       antiquant_offset=None, per_token_scale=None, group_list=None,
                       activation_input=None, activation_quant_scale=None,
                       activation_quant_offset=None, split_item=0, group_type=None,
                       group_list_type=0, act_type=0, tuning_config=None, output_dtype=None):
    op = "npu_grouped_matmul"
    torch_npu.CALLS[op] += 1
    given = locals()
    for name in _GMM_UNSUPPORTED:
        if given[name] is not None:
            C.fail(op, f"the fake implements no {name}")
    if group_type is None:
        C.fail(op, "group_type must be passed (-1 or 0)")
    if (split_item, group_type, act_type) not in ((2, 0, 0), (3, 0, 0)):
        C.fail(op, "the fake implements one x split by rows (split_item 2/3, group_type 0, "
                   f"act_type 0), got {split_item}, {group_type}, {act_type}")
    if not isinstance(x, list) or not isinstance(weight, list) or len(x) != 1 \
            or len(weight) != 1:
        C.fail(op, "x and weight must be lists of one Tensor each")
    rows = C.tensor(op, "x[0]", x[0], 2, _FLOATS)
    # A transposed (E, N, K) weight is read in place (aclnn takes its strides).
    w = C.tensor(op, "weight[0]", weight[0], 3, (rows.dtype,), contiguous=False)
    C.same(op, "x K vs weight K", rows.shape[1], w.shape[1])
    ends = _group_ends(op, group_list, group_list_type, w.shape[0], rows.shape[0])
    out = torch.full((rows.shape[0], w.shape[2]), float("nan"), dtype=rows.dtype)
    start = 0
    for expert, end in enumerate(ends):
        if end > start:
            out[start:end] = (rows[start:end].float() @ w[expert].float()).to(rows.dtype)
        start = end
    return [out]


def _group_ends(op, group_list, group_list_type, groups, num_rows) -> list[int]:
    C.tensor(op, "group_list", group_list, 1, (torch.int64,))
    C.same(op, "group_list length vs weight groups", group_list.shape[0], groups)
    if group_list_type not in (0, 1):
        C.fail(op, f"group_list_type must be 0 (cumulative) or 1 (counts), got "
                   f"{group_list_type}")
    values = group_list.tolist()
    ends = values if group_list_type == 0 else torch.tensor(values).cumsum(0).tolist()
    if any(b < a for a, b in zip([0] + ends, ends)) or (ends and ends[-1] > num_rows):
        C.fail(op, f"group_list must give non-decreasing row ends <= {num_rows}: {values}")
    return ends


def npu_swiglu(input, dim=-1):  # noqa: A002  (the documented name)
    op = "npu_swiglu"
    torch_npu.CALLS[op] += 1
    C.tensor(op, "input", input, input.dim() if isinstance(input, torch.Tensor) else 2,
             _FLOATS)
    C.integer(op, "dim", dim)
    if input.shape[dim] % 2:
        C.fail(op, f"input dim {dim} must be even, got {input.shape[dim]}")
    gate, up = input.float().chunk(2, dim=dim)
    return (gate * torch.sigmoid(gate) * up).to(input.dtype)


def npu_moe_finalize_routing(expanded_permuted_rows, skip1, skip2, bias, scales,
                             expanded_src_to_dst_row, export_for_source_row,
                             drop_pad_mode=0):
    op = "npu_moe_finalize_routing"
    torch_npu.CALLS[op] += 1
    rows = C.tensor(op, "expanded_permuted_rows", expanded_permuted_rows, 2, _FLOATS)
    if skip1 is not None or skip2 is not None or bias is not None:
        C.fail(op, "the fake implements no skip1 / skip2 / bias")
    C.same(op, "drop_pad_mode", drop_pad_mode, 0)
    C.tensor(op, "scales", scales, 2, (rows.dtype, torch.float32))
    C.tensor(op, "export_for_source_row", export_for_source_row, 2, _INT32)
    C.same(op, "export_for_source_row vs scales shape", tuple(export_for_source_row.shape),
           tuple(scales.shape))
    num_rows, k = scales.shape
    dst = C.tensor(op, "expanded_src_to_dst_row", expanded_src_to_dst_row, 1, _INT32)
    C.same(op, "expanded_src_to_dst_row length", dst.shape[0], num_rows * k)
    if bool(((dst < 0) | (dst >= rows.shape[0])).any()):
        C.fail(op, f"expanded_src_to_dst_row outside [0, {rows.shape[0]})")
    out = torch.zeros(num_rows, rows.shape[1])
    for j in range(k):
        picked = rows[dst[j * num_rows:(j + 1) * num_rows].long()].float()  # (NUM_ROWS, H)
        out += scales[:, j:j + 1].float() * picked
    return out.to(rows.dtype)
